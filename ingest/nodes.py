"""Who runs on a ledger: an SQLite ledger takes one node at a time.

SQLite serializes writes but knows nothing of whose they are: two daemons on one file
would both scan the same folders and both archive the same drops. So ``ingest run`` on
an SQLite ledger holds an exclusive OS lock on a sidecar file (``ingest.db.lock``) for
its whole life, and writes there who it is. A second daemon cannot take the lock and is
refused, naming the first. The kernel drops the lock when its process dies however it
dies (SIGKILL included), so a crashed daemon never blocks its own restart; what the file
says of a dead holder is only read while someone holds the lock, i.e. never stale.

Several nodes share a PostgreSQL ledger instead, each leasing its watch folders
(:mod:`ingest.leases`).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LedgerError

__all__ = ["NodeLock", "SingleNodeRefused", "lock_path"]


class SingleNodeRefused(LedgerError):
    """Another daemon runs on this SQLite ledger."""


def lock_path(ledger: Path) -> Path:
    """The sidecar lock file of an SQLite ledger file."""
    return ledger.with_name(ledger.name + ".lock")


@dataclass
class NodeLock:
    """The exclusive hold of one daemon on an SQLite ledger; release with :meth:`release`."""

    path: Path
    fd: int

    @classmethod
    def acquire(cls, ledger: Path, node: str) -> NodeLock:
        """Take the ledger for ``node`` (this process), or raise :class:`SingleNodeRefused`
        naming the daemon that holds it."""
        path = lock_path(ledger)
        try:
            # The lock is taken before the ledger opens: on a first start, its folder is
            # made here, private, as the ledger would make it.
            path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LedgerError(f"cannot open the ledger's lock file {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            raise SingleNodeRefused(
                f"ledger {ledger} is in use by {holder}: an SQLite ledger takes one node "
                f"(stop that one first, or share a PostgreSQL ledger between nodes)"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise LedgerError(f"cannot lock the ledger's lock file {path}: {exc.strerror}") from exc
        me = {"node": node, "pid": os.getpid(), "host": socket.gethostname()}
        me["started_at"] = time.time()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Let the ledger go (closing the file drops the lock)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _read(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        found = json.loads(raw.decode("utf-8", "replace"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    """'node "a" (pid 12 on host h, since 2026-11-28 23:14:37 UTC)', as far as known."""
    if not holder:
        return "another ingest run (it has not said who yet)"
    since = holder.get("started_at")
    when = ""
    if isinstance(since, int | float):
        when = ", since " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
    return (
        f'node "{holder.get("node", "?")}" (pid {holder.get("pid", "?")} '
        f"on host {holder.get('host', '?')}{when})"
    )
