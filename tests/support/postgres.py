"""A throwaway PostgreSQL server for the tests: ``initdb`` into a temporary folder, then
``pg_ctl`` on a free loopback port (127.0.0.1 only; its unix socket in that folder too).

The server refuses to run as root, so under root it runs as the ``postgres`` system user
(``runuser -u postgres --``), the folder owned by that user. The superuser ``ingest`` has
a password (TCP connections must give it, as in production); each test gets a database
of its own from :func:`pg_url`. In CI (``CI=true``) a machine without the server binaries
fails the tests that need one; elsewhere they are skipped, saying why.

Register the fixtures in a test module with ``from tests.support.postgres import
postgres, pg_url  # noqa: F401``.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

#: the superuser's password, given to ingest through this environment variable
PASSWORD_ENV = "INGEST_TEST_PG_PASSWORD"
PASSWORD = "pg-test-secret-7f3a"
USER = "ingest"


def server_bin() -> Path | None:
    """The newest PostgreSQL server binaries on this machine (Debian's layout), if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    return Path(found[-1]).parent if found else None


def _version(initdb: str) -> int:
    try:
        return int(Path(initdb).parent.parent.name)
    except ValueError:
        return 0


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """A running server: where it listens and how to reach it."""

    bin: Path
    root: Path
    port: int
    _as_postgres: bool
    #: fsync on, as a production server runs (the benchmarks); tests run without it
    durable: bool = False
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        return subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, check=check, timeout=120
        )

    def url(self, dbname: str = "postgres") -> str:
        """The ``[ledger] url`` of database ``dbname`` (no password: see PASSWORD_ENV)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A superuser's connection (autocommit) to ``dbname``."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=USER,
            password=PASSWORD,
            dbname=dbname,
            autocommit=True,
        )

    def create_database(self) -> str:
        """A fresh, empty database; returns its ``[ledger] url``."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with self.connect() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def start(self) -> None:
        log = self.root / "server.log"
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
        options += "-c max_connections=100"
        if not self.durable:
            # A throwaway server: durability buys nothing here, and the machine is shared.
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        done = self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", options,
            "-w", "-t", "90", "start", check=False,
        )  # fmt: skip
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}\n{tail}")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "stop", check=False)


def start_server(*, durable: bool = False) -> PostgresServer:
    """initdb and start a server in a new temporary folder; the caller stops it."""
    bin_dir = server_bin()
    as_postgres = os.geteuid() == 0
    message = None
    if bin_dir is None:
        message = "no PostgreSQL server (/usr/lib/postgresql/*/bin): apt-get install postgresql"
    elif as_postgres and not _has_user("postgres"):
        message = "running as root, and no postgres user to run the PostgreSQL server as"
    if message is not None or bin_dir is None:
        message = message or "no PostgreSQL server"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="ingest-pg-"))
    if as_postgres:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    server = PostgresServer(bin_dir, root, _free_port(), as_postgres, durable=durable)
    pwfile = root / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    if as_postgres:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    server._run(
        str(bin_dir / "initdb"), "-D", str(server.data), "-U", USER, f"--pwfile={pwfile}",
        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
    )  # fmt: skip
    pwfile.unlink()
    for _attempt in range(3):  # the free port may be taken between finding and binding it
        try:
            server.start()
            return server
        except RuntimeError:
            server.port = _free_port()
    server.start()
    return server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session."""
    server = start_server()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database's ``[ledger] url``, its password in the env var PASSWORD_ENV."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    return postgres.create_database()
