"""Shared fixtures.

Emulator: one ``ingest emulator`` subprocess per test session on a free loopback port
(``emulator_session``), wiped through ``POST /_emulator/reset`` before each test that asks
for ``emulator``. Its servers are folders under the session's temporary directory,
emptied before each test too.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import pytest

from ingest.emulator.server import EmulatorProcess

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
        finished = {"DIVA_COMPLETED", "DIVA_ABORTED", "DIVA_CANCELLED", "DIVA_PARTIALLY_ABORTED"}
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
