"""A deployment of ingest against an emulator: service config, rule files, a watch folder,
the engine in a thread or ``ingest run`` as a subprocess, and plain-SQLite reads of its
ledger (what an operator's tool would see).

``deployed()`` is what the ``deployment`` fixtures yield; ``rule_toml`` and
``config_toml`` also write the benchmarks' files. Nothing here imports pytest.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.pgread import PostgresLedger

from .emulator import DivaApi, RunningEmulator
from .intents import IntentChecker, intent_commits_delayed
from .wait import wait_for

#: the environment variable the test configs read the DIVA password from
DIVA_PASSWORD_ENV = "INGEST_TEST_DIVA_PASSWORD"


def rule_toml(values: Mapping[str, Any]) -> str:
    """One ``[[rule]]`` table with ``values`` (TOML strings, numbers and lists are JSON's)."""
    return "\n".join(["[[rule]]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]) + "\n"


def config_toml(
    diva: Mapping[str, Any], ledger: Path, rules: Path, engine: Mapping[str, Any]
) -> str:
    """A service config: ``[diva]`` and ``[engine]`` as given, a SQLite ledger at ``ledger``,
    rule files in ``rules``."""

    def table(values: Mapping[str, Any]) -> str:
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())

    return (
        f"[diva]\n{table(diva)}"
        f"[ledger]\nurl = {json.dumps(f'sqlite:///{ledger}')}\n"
        f"[rules]\npaths = [{json.dumps(str(rules))}]\n"
        f"[engine]\n{table(engine)}"
    )


def stored_checksums(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """object name -> {component file name: md5}, from DIVA's object list."""
    return {
        o["objectName"]: {c["fileName"]: c["checksum"] for c in o["components"]} for o in objects
    }


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
    #: a PostgreSQL ledger the config names instead of ``ledger_path`` (for the intent check)
    ledger_at: PostgresLedger | None = None

    def rule(self, name: str = "news", **keys: Any) -> Path:
        """Write (or rewrite) ``rules/<name>.toml`` with one rule; keys override defaults."""
        values: dict[str, Any] = {
            "name": name, "watch": str(self.watch), "match": ["**/*.mxf"],
            "settle_seconds": 0.5, "object_name": "{stem}", "collection": "NEWS",
            "media": "DISK1", "source_server": "NAS", "file_path_root": "/news",
        }  # fmt: skip
        values.update(keys)
        path = self.rules_dir / f"{name}.toml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(rule_toml(values))
        tmp.replace(path)
        return path

    def write_config(self, **diva: Any) -> None:
        values = {
            "username": "operator", "password_env": DIVA_PASSWORD_ENV,
            "url": self.emulator.url, "poll_seconds": 1, "max_attempts": 3, **diva,
        }  # fmt: skip
        engine = {"rescan_seconds": 2, "reload_seconds": 0.3, "watch_poll_seconds": 0.3}
        self.config_path.write_text(config_toml(values, self.ledger_path, self.rules_dir, engine))

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

    def ingest(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``ingest ARGS --config`` this deployment's config, as an operator runs it
        (``env``: variables added to this process's)."""
        return subprocess.run(
            [sys.executable, "-m", "ingest", *args, "--config", str(self.config_path)],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, **(env or {})},
        )  # fmt: skip

    # -- reading the ledger (plain sqlite3: what an operator's tool would see) --

    def rows(self, path: str | None = None) -> list[dict[str, Any]]:
        """The ``drops`` rows (of ``path`` only, if given), oldest first.

        ``[]`` only while the daemon has not created the ledger yet (no file, or no table
        in a file never read before). Any other error is raised, so that a failed read
        can never pass for "no drops"; a lock is waited out briefly first.
        """
        args: tuple[str, ...] = ()
        query = "SELECT * FROM drops ORDER BY id"
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

    def wait_scan(self, timeout: float = 15.0) -> None:
        """Wait for a scan of the watch folder recorded after the last one recorded now."""
        before = self.watcher()
        assert before is not None, "no scan of the watch folder recorded yet"

        def scanned_since() -> bool:
            row = self.watcher()
            return row is not None and row["last_scan_at"] > before["last_scan_at"]

        wait_for(scanned_since, timeout)

    # -- the emulator's side --

    def objects(self) -> list[dict[str, Any]]:
        return self.objects_at(self.emulator.url, "admin")

    def objects_at(self, url: str, user: str = "operator") -> list[dict[str, Any]]:
        with DivaApi(url, user, user) as api:
            response = api.get("/manager/objects/list")
            response.raise_for_status()
            doc = response.json()
        return list(doc["objects"] if isinstance(doc, dict) else doc)

    def stored(self) -> dict[str, dict[str, str]]:
        """object name -> {component: md5} of everything DIVA holds."""
        return stored_checksums(self.objects())

    def archive_requests(self) -> list[dict[str, Any]]:
        with DivaApi(self.emulator.url, "admin", "admin") as api:
            response = api.get("/manager/requests", params={"type": "Archive"})
            response.raise_for_status()
            return list(response.json()["requests"])

    def knobs(self, **changes: float) -> None:
        self.emulator.knobs(**changes)


@contextlib.contextmanager
def checked_intents(dep: Deployment) -> Iterator[IntentChecker]:
    """Rule 1 as an invariant of the test: ``dep.emulator`` calls ``dep.intents`` on each
    archive call, before it takes it (an emulator of the test's own passes ``dep.intents``
    too); at the end, no archive call reached DIVA before its intent was committed, and
    the hook heard of every archive request DIVA took (``tests/support/intents.py``)."""
    checker = IntentChecker(lambda: dep.ledger_at or dep.ledger_path).start()
    dep.intents = checker
    try:
        checker.install(dep.emulator.url)
        checker.observe(dep.emulator.state / "emulator.db")
        with intent_commits_delayed():
            yield checker
    finally:
        checker.close()
    checker.assert_clean()


@contextlib.contextmanager
def deployed(emulator: RunningEmulator, root: Path) -> Iterator[Deployment]:
    """A deployment in ``root`` watching ``NAS/news`` of ``emulator`` (reset, so the folder
    is new), under the intent check; its engine is stopped on the way out. The caller sets
    ``DIVA_PASSWORD_ENV`` for in-thread engines (``daemon()`` sets its own)."""
    watch = emulator.servers["NAS"] / "news"
    watch.mkdir()
    rules_dir = root / "rules"
    rules_dir.mkdir()
    dep = Deployment(root, emulator, watch, rules_dir, root / "ingest.toml", root / "ledger.db")
    dep.write_config()
    with checked_intents(dep):
        try:
            yield dep
        finally:
            dep.stop()
