"""The DIVA emulator as tests and benchmarks run it: a subprocess on a free loopback port,
its servers and users, a thin logged-in API client, and the calls tests make through it.

Used by ``tests/conftest.py`` (one emulator per test process: under pytest-xdist, one per
worker) and by ``bench/``. Nothing here imports pytest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ingest.emulator.server import EmulatorProcess

from .wait import wait_for

#: Users of the test emulator: one per DIVA role, password = name.
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
#: The guide emulator's seed: its fault draws are the same in every run (reset re-seeds).
GUIDE_SEED = 7
#: The vendor guide's sample bodies, as the guide prints them.
EXAMPLES = Path(__file__).resolve().parent.parent / "fixtures" / "diva-examples"


@dataclass
class RunningEmulator:
    """A running emulator: its URL, state folder and each server's root folder."""

    url: str
    state: Path
    servers: dict[str, Path]
    process: EmulatorProcess | None = field(default=None, repr=False)

    def reset(self) -> None:
        """No objects, no requests, default knobs and users, and empty server folders."""
        self.reset_state()
        for root in self.servers.values():
            shutil.rmtree(root)
            root.mkdir()

    def reset_state(self) -> None:
        """``POST /_emulator/reset``: the emulator's state only; server folders stay."""
        with httpx.Client(base_url=self.url, timeout=60) as client:
            client.post("/_emulator/reset").raise_for_status()

    def knobs(self, **changes: float) -> None:
        """Set fault and pacing knobs (``PUT /_emulator/faults``)."""
        httpx.put(f"{self.url}/_emulator/faults", json=changes, timeout=30).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_emulator/stats", timeout=30)
        response.raise_for_status()
        doc: dict[str, Any] = response.json()
        return doc

    def submitted(self) -> dict[str, float]:
        """Each archive request's object name -> the epoch time the emulator recorded it.

        Read from the emulator's own database: ``submitted`` is ``time.time()`` taken when
        the archive call is accepted, at full resolution (the API shows whole seconds).
        """
        with contextlib.closing(sqlite3.connect(self.state / "emulator.db", timeout=30)) as db:
            rows = db.execute("SELECT object_name, submitted FROM requests WHERE type='archive'")
            return {name: when for name, when in rows}

    def arrivals(self) -> dict[str, float]:
        """Each archive request's object name -> the epoch time its call reached the app.

        Taken before the emulator does anything with the call (token, parsing, checks,
        its database), so it times the sender alone; :meth:`submitted` includes that work.
        """
        with contextlib.closing(sqlite3.connect(self.state / "emulator.db", timeout=30)) as db:
            rows = db.execute("SELECT object_name, arrived FROM requests WHERE type='archive'")
            return {name: when for name, when in rows}

    def count_requests(self) -> int:
        with contextlib.closing(sqlite3.connect(self.state / "emulator.db", timeout=30)) as db:
            return int(db.execute("SELECT count(*) FROM requests").fetchone()[0])


def emulator_args(
    servers: Mapping[str, Path],
    media: Sequence[str] = EMULATOR_MEDIA,
    users: Mapping[str, str] = EMULATOR_USERS,
) -> list[str]:
    """Command-line flags for the emulator's servers, media and users (password = name)."""
    args: list[str] = []
    for name, root in servers.items():
        args += ["--server", f"{name}={root}"]
    for one in media:
        args += ["--media", one]
    for name, role in users.items():
        args += ["--user", f"{name}:{name}:{role}"]
    return args


def make_servers(root: Path, names: Sequence[str] = EMULATOR_SERVERS) -> dict[str, Path]:
    """One folder per server under ``root`` (``server0``, ``server1``, ...), created."""
    servers = {name: root / f"server{i}" for i, name in enumerate(names)}
    for path in servers.values():
        path.mkdir(parents=True, exist_ok=True)
    return servers


@contextlib.contextmanager
def running_emulator(
    state: Path, servers: dict[str, Path], args: Sequence[str], profile: str = "lenient"
) -> Iterator[RunningEmulator]:
    """An emulator subprocess keeping its state in ``state``; stopped on the way out."""
    process = EmulatorProcess(state, list(args), profile=profile).start()
    try:
        yield RunningEmulator(process.url, state, servers, process)
    finally:
        process.stop()


@contextlib.contextmanager
def suite_emulator(root: Path, profile: str = "lenient") -> Iterator[RunningEmulator]:
    """The suite's emulator under ``root``: every test server, medium and user; the guide
    profile with a fixed seed."""
    servers = make_servers(root)
    args = emulator_args(servers)
    if profile == "guide":
        args += ["--seed", str(GUIDE_SEED)]
    with running_emulator(root / "state", servers, args, profile) as emulator:
        yield emulator


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


#: ``login("operator")``: a logged-in client of that test user (password = name).
Login = Callable[[str], DivaApi]


@contextlib.contextmanager
def logins(url: str) -> Iterator[Login]:
    """A ``login(username)`` for the emulator at ``url``; every client it opened is closed
    on the way out."""
    opened: list[DivaApi] = []

    def login(username: str = "admin") -> DivaApi:
        api = DivaApi(url, username, username)
        opened.append(api)
        return api

    try:
        yield login
    finally:
        for api in opened:
            api.close()


# --- the calls tests make through the API ---------------------------------------------------


def example(name: str) -> dict[str, Any]:
    """One of the vendor guide's sample bodies (``tests/fixtures/diva-examples``)."""
    doc: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return doc


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def put_file(root: Path, rel: str, size: int = 1000, seed: int = 0) -> Path:
    """A file of ``size`` bytes (a pattern ``seed`` shifts) at ``root/rel``."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes((i * 7 + seed) % 251 for i in range(size)))
    return path


def faults(emulator: RunningEmulator, **knobs: float) -> None:
    emulator.knobs(**knobs)


def archive_body(name: str, components: list[str], **extra: Any) -> dict[str, Any]:
    """An archive body for collection ``TEST`` on ``DISK1`` from server ``NAS``."""
    return {
        "objectName": name,
        "collectionName": "TEST",
        "components": components,
        "media": "DISK1",
        "sourceServer": "NAS",
        "qos": 0,
        **extra,
    }


def submit(api: DivaApi, path: str, body: dict[str, Any]) -> int:
    """``POST /manager/requests/<path>``, asserted accepted: the request id."""
    response = api.post(f"/manager/requests/{path}", body)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["statusCode"] == 1000 and doc["statusDescription"] == "success"
    return int(doc["requestId"])


def refused(response: httpx.Response, code: int, http_status: int) -> None:
    """``response`` is DIVA's refusal ``code`` with HTTP status ``http_status``."""
    assert response.status_code == http_status, response.text
    body = response.json()
    assert body["statusCode"] == code, body
    assert body["statusName"].startswith("DIVA_ERR_") and body["statusDescription"]


def stored(api: DivaApi, name: str, collection: str = "TEST") -> dict[str, Any] | None:
    """The object's info, or None when DIVA answers 1009 (no such object)."""
    response = api.get(
        "/manager/objects/info", params={"objectName": name, "collectionName": collection}
    )
    if response.status_code == 404:
        refused(response, 1009, 404)
        return None
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def throwaway_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA (in no system store) and a certificate for 127.0.0.1 it signed:
    (certificate chain, private key, CA certificate) files in ``folder``."""
    import trustme  # a dev dependency; only HTTPS tests need it

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, cafile = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    return certfile, keyfile, cafile
