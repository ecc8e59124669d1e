"""Shared fixtures.

Emulator: one ``ingest emulator`` subprocess per test session on a free loopback port
(``emulator_session``), wiped through ``POST /_emulator/reset`` before each test that asks
for ``emulator``. Its servers are folders under the session's temporary directory,
emptied before each test too. ``emulator_guide_session`` / ``emulator_guide`` are the same
with ``--profile guide`` (and a fixed ``--seed``), started only if a test asks for them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import pytest

from ingest.emulator.server import EmulatorProcess

from .support.intents import IntentChecker, intent_commits_delayed

#: leakcheck fails any test whose captured output or log holds a test secret;
#: unprivileged runs checks as a user that file modes stop (the suite runs as root).
pytest_plugins = ("tests.leakcheck", "tests.unprivileged")

T = TypeVar("T")

#: Users of the session emulator: one per DIVA role, password = name.
EMULATOR_USERS = {
    "user": "user",
    "operator": "operator",
    "advop": "advoperator",
    "admin": "admin",
    "sysadmin": "sysadmin",
}
#: Server names: ours, and those the vendor guide's examples use.
EMULATOR_SERVERS = (
    "NAS",
    "OUT",
    "sourcedest",
    "wfm_ftp_sd_for_diva_test",
    "A Valid Source Server Name, ex: ftproot",
)
EMULATOR_MEDIA = ("DISK1", "default", "A Valid Media, ex: array_002_xxf", "TAPE1:tape")


@dataclass
class RunningEmulator:
    """A running emulator: its URL, state folder and each server's root folder."""

    url: str
    state: Path
    servers: dict[str, Path]
    process: EmulatorProcess | None = field(default=None, repr=False)

    def reset(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            client.post("/_emulator/reset").raise_for_status()
        for root in self.servers.values():
            shutil.rmtree(root)
            root.mkdir()


def emulator_args(servers: dict[str, Path]) -> list[str]:
    """Command-line flags for the test emulator's servers, media and users."""
    args: list[str] = []
    for name, root in servers.items():
        args += ["--server", f"{name}={root}"]
    for media in EMULATOR_MEDIA:
        args += ["--media", media]
    for name, role in EMULATOR_USERS.items():
        args += ["--user", f"{name}:{name}:{role}"]
    return args


def make_servers(root: Path) -> dict[str, Path]:
    servers = {name: root / f"server{i}" for i, name in enumerate(EMULATOR_SERVERS)}
    for path in servers.values():
        path.mkdir(parents=True, exist_ok=True)
    return servers


@pytest.fixture(scope="session")
def emulator_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    root = tmp_path_factory.mktemp("emulator")
    servers = make_servers(root)
    process = EmulatorProcess(root / "state", emulator_args(servers)).start()
    try:
        yield RunningEmulator(process.url, root / "state", servers, process)
    finally:
        process.stop()


@pytest.fixture
def emulator(emulator_session: RunningEmulator) -> RunningEmulator:
    """The session's emulator, wiped: no objects, no requests, default knobs and users."""
    emulator_session.reset()
    return emulator_session


#: The guide emulator's seed: its fault draws are the same in every run (reset re-seeds).
GUIDE_SEED = 7


@pytest.fixture(scope="session")
def emulator_guide_session(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningEmulator]:
    """An emulator that does only what the vendor guide documents (``--profile guide``)."""
    root = tmp_path_factory.mktemp("emulator-guide")
    servers = make_servers(root)
    args = [*emulator_args(servers), "--seed", str(GUIDE_SEED)]
    process = EmulatorProcess(root / "state", args, profile="guide").start()
    try:
        yield RunningEmulator(process.url, root / "state", servers, process)
    finally:
        process.stop()


@pytest.fixture
def emulator_guide(emulator_guide_session: RunningEmulator) -> RunningEmulator:
    """The session's guide-profile emulator, wiped as ``emulator`` is."""
    emulator_guide_session.reset()
    return emulator_guide_session


class DivaApi:
    """A thin test client: one login, then JSON calls with the raw token."""

    def __init__(self, url: str, username: str, password: str, **client_args: object) -> None:
        self.client = httpx.Client(base_url=url, timeout=30, **client_args)  # type: ignore[arg-type]
        response = self.client.post(
            "/dataservice/users/login", json={"username": username, "password": password}
        )
        response.raise_for_status()
        self.token: str = response.json()["token"]

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> DivaApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return self.client.get(path, headers={"Authorization": self.token}, **kwargs)  # type: ignore[arg-type]

    def post(self, path: str, body: object = None, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": self.token}
        return self.client.post(path, json=body, headers=headers, **kwargs)  # type: ignore[arg-type]

    def request(self, rid: int) -> dict[str, Any]:
        response = self.get(f"/manager/requests/{rid}")
        response.raise_for_status()
        doc: dict[str, Any] = response.json()
        return doc

    def wait(self, rid: int, timeout: float = 15.0) -> dict[str, Any]:
        """The request once it is finished (COMPLETED, ABORTED, CANCELLED, ...)."""
        finished = {
            "DIVA_COMPLETED",
            "DIVA_ABORTED",
            "DIVA_CANCELLED",
            "DIVA_PARTIALLY_ABORTED",
            "DIVA_PARTIALLY_COMPLETED",
        }
        return wait_for(lambda: (r := self.request(rid))["stateName"] in finished and r, timeout)


def wait_for(
    condition: Callable[[], T | Literal[False] | None],
    timeout: float = 15.0,
    interval: float = 0.02,
) -> T:
    """Poll ``condition`` until it returns something truthy (returned), or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture
def diva(emulator: RunningEmulator) -> Iterator[Callable[[str], DivaApi]]:
    """``diva("operator")`` logs in as that test user of the (freshly reset) emulator."""
    opened: list[DivaApi] = []

    def login(username: str = "admin") -> DivaApi:
        api = DivaApi(emulator.url, username, username)
        opened.append(api)
        return api

    yield login
    for api in opened:
        api.close()


# --- the engine: a deployment of ingest against the session emulator --------------------

DIVA_PASSWORD_ENV = "INGEST_TEST_DIVA_PASSWORD"


@dataclass
class Deployment:
    """A service config, rules and a watch folder on the emulator's NAS server.

    The watch folder is ``NAS/news``, which DIVA sees as ``/news`` on server ``NAS``.
    ``start()`` runs the real engine in a thread; ``daemon()`` runs ``ingest run`` as a
    subprocess (for SIGKILL tests).
    """

    root: Path
    emulator: RunningEmulator
    watch: Path
    rules_dir: Path
    config_path: Path
    ledger_path: Path
    engine: Any = None
    thread: threading.Thread | None = None
    #: The archive hook checking rule 1 (intent before call); see ``checked_intents``.
    intents: IntentChecker | None = field(default=None, repr=False)
    #: Ledger files whose ``drops`` table has been read once (see ``rows``).
    ledgers_seen: set[Path] = field(default_factory=set, repr=False)

    def rule(self, name: str = "news", **keys: Any) -> Path:
        """Write (or rewrite) ``rules/<name>.toml`` with one rule; keys override defaults."""
        values: dict[str, Any] = {
            "name": name, "watch": str(self.watch), "match": ["**/*.mxf"],
            "settle_seconds": 0.5, "object_name": "{stem}", "collection": "NEWS",
            "media": "DISK1", "source_server": "NAS", "file_path_root": "/news",
        }  # fmt: skip
        values.update(keys)
        lines = ["[[rule]]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        path = self.rules_dir / f"{name}.toml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)
        return path

    def write_config(self, **diva: Any) -> None:
        values = {"url": self.emulator.url, "poll_seconds": 1, "max_attempts": 3, **diva}
        extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
        self.config_path.write_text(
            "[diva]\n"
            'username = "operator"\n'
            f'password_env = "{DIVA_PASSWORD_ENV}"\n{extra}'
            f'[ledger]\nurl = "sqlite:///{self.ledger_path}"\n'
            f'[rules]\npaths = ["{self.rules_dir}"]\n'
            "[engine]\nrescan_seconds = 2\nreload_seconds = 0.3\nwatch_poll_seconds = 0.3\n"
        )

    def start(self, until_idle: bool = False) -> Any:
        from ingest.config import load_config
        from ingest.engine import Engine

        self.engine = Engine(load_config(self.config_path), seed=7)
        self.thread = threading.Thread(
            target=self.engine.run, kwargs={"until_idle": until_idle}, daemon=True
        )
        self.thread.start()
        return self.engine

    def stop(self) -> None:
        if self.engine is not None and self.thread is not None:
            self.engine.stop()
            self.thread.join(timeout=30)
            assert not self.thread.is_alive(), "the engine did not stop"
        self.engine = self.thread = None

    def daemon(self, *args: str, log_name: str = "daemon.log") -> subprocess.Popen[bytes]:
        env = {**os.environ, DIVA_PASSWORD_ENV: "operator"}
        log = open(self.root / log_name, "ab")  # noqa: SIM115 - owned by the process
        cmd = [sys.executable, "-m", "ingest", *args, "run", "--config", str(self.config_path)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        return proc

    # -- reading the ledger (plain sqlite3: what an operator's tool would see) --

    def rows(self, path: str | None = None) -> list[dict[str, Any]]:
        """The ``drops`` rows (of ``path`` only, if given), oldest first.

        ``[]`` only while the daemon has not created the ledger yet (no file, or no table
        in a file never read before). Any other error is raised, so that a failed read
        can never pass for "no drops"; a lock is waited out briefly first.
        """
        query, args = "SELECT * FROM drops ORDER BY id", ()
        if path is not None:
            query, args = "SELECT * FROM drops WHERE path = ? ORDER BY id", (path,)
        ledger = self.ledger_path
        deadline = time.monotonic() + 10
        while True:
            if not ledger.exists():
                assert ledger not in self.ledgers_seen, f"the ledger {ledger} vanished"
                return []
            try:
                with contextlib.closing(sqlite3.connect(ledger, timeout=30)) as conn:
                    conn.row_factory = sqlite3.Row
                    found = [dict(r) for r in conn.execute(query, args)]
            except sqlite3.OperationalError as exc:
                message = str(exc)
                if message.startswith("no such table") and ledger not in self.ledgers_seen:
                    return []
                # SQLite answers "locked"/"busy" at once, without its busy timeout, in
                # a few cases (WAL recovery, say): those pass; a lasting one is an error.
                if ("locked" in message or "busy" in message) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise
            self.ledgers_seen.add(ledger)
            return found

    def history(self, drop_id: int) -> list[dict[str, Any]]:
        with contextlib.closing(sqlite3.connect(self.ledger_path, timeout=30)) as conn:
            conn.row_factory = sqlite3.Row
            query = "SELECT * FROM transitions WHERE drop_id = ? ORDER BY id"
            return [dict(r) for r in conn.execute(query, (drop_id,))]

    def wait_state(self, path: str, *states: str, timeout: float = 30.0) -> dict[str, Any]:
        """The newest row of ``path`` once it is in one of ``states``."""

        def check() -> dict[str, Any] | None:
            rows = self.rows(path)
            return rows[-1] if rows and rows[-1]["state"] in states else None

        return wait_for(check, timeout)

    def watcher(self) -> dict[str, Any] | None:
        with contextlib.closing(sqlite3.connect(self.ledger_path, timeout=30)) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM watchers WHERE watch = ?", (str(self.watch),))
            found = row.fetchone()
            return dict(found) if found else None

    # -- the emulator's side --

    def objects(self) -> list[dict[str, Any]]:
        return self.objects_at(self.emulator.url, "admin")

    def objects_at(self, url: str, user: str = "operator") -> list[dict[str, Any]]:
        with DivaApi(url, user, user) as api:
            response = api.get("/manager/objects/list")
            response.raise_for_status()
            doc = response.json()
        return list(doc["objects"] if isinstance(doc, dict) else doc)

    def archive_requests(self) -> list[dict[str, Any]]:
        with DivaApi(self.emulator.url, "admin", "admin") as api:
            response = api.get("/manager/requests", params={"type": "Archive"})
            response.raise_for_status()
            return list(response.json()["requests"])

    def knobs(self, **changes: float) -> None:
        url = f"{self.emulator.url}/_emulator/faults"
        httpx.put(url, json=changes, timeout=10).raise_for_status()


@pytest.fixture
def deployment(
    emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    monkeypatch.setenv(DIVA_PASSWORD_ENV, "operator")
    watch = emulator.servers["NAS"] / "news"
    watch.mkdir()
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    dep = Deployment(
        tmp_path, emulator, watch, rules_dir, tmp_path / "ingest.toml", tmp_path / "ledger.db"
    )
    dep.write_config()
    with checked_intents(dep):
        try:
            yield dep
        finally:
            dep.stop()


@contextlib.contextmanager
def checked_intents(dep: Deployment) -> Iterator[IntentChecker]:
    """Rule 1 as an invariant of the test: ``dep.emulator`` calls ``dep.intents`` on each
    archive call, before it takes it (an emulator of the test's own passes ``dep.intents``
    too); at the end, no archive call reached DIVA before its intent was committed, and
    the hook heard of every archive request DIVA took (``tests/support/intents.py``)."""
    checker = IntentChecker(lambda: dep.ledger_path).start()
    dep.intents = checker
    try:
        checker.install(dep.emulator.url)
        checker.observe(dep.emulator.state / "emulator.db")
        with intent_commits_delayed():
            yield checker
    finally:
        checker.close()
    checker.assert_clean()
