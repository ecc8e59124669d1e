"""The ledger's connections: a small pool of plain DBAPI connections (sqlite3 or psycopg).

The daemon reads and writes its ledger in plain SQL, so it needs no more of a database
library than this: a connection per thread at work, kept for the next one, a transaction
that commits whole or rolls back, and a PostgreSQL connection that broke thrown away
with the idle ones opened before it (a restarted server leaves them all dead).
SQLAlchemy did this before, at the price of half a second of imports on every start.

::

    pool = Connections(lambda: sqlite3.connect(path, check_same_thread=False), "sqlite")
    with pool.begin() as conn:
        conn.execute("INSERT INTO t VALUES (?)", (1,))
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .errors import LedgerError

__all__ = ["Connections"]

log = logging.getLogger(__name__)


class Connections:
    """Up to ``size + overflow`` connections made by ``connect`` at once, ``size`` kept idle.

    ``dialect`` is ``"sqlite"`` or ``"postgresql"``. A caller waits up to ``timeout``
    seconds for a connection when all are in use, then gets a :class:`LedgerError`.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        dialect: str,
        *,
        size: int = 2,
        overflow: int = 4,
        timeout: float = 30.0,
    ) -> None:
        #: what makes a new connection
        self.factory = connect
        self.dialect = dialect
        self._size = size
        self._timeout = timeout
        self._slots = threading.BoundedSemaphore(size + overflow)
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._closed = False

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A connection for reads (or for a caller that commits itself); whatever it left
        uncommitted is rolled back when it comes back."""
        conn = self._checkout()
        try:
            yield conn
        except BaseException:
            self._checkin(conn, failed=True)
            raise
        self._checkin(conn, failed=False)

    @contextmanager
    def begin(self) -> Iterator[Any]:
        """A connection in a transaction: committed when the block ends, rolled back if
        it raises (as it goes back to the pool)."""
        with self.connect() as conn:
            self._began(conn)
            yield conn
            self._commit(conn)

    # A transaction's two steps, as methods: the intent check of the test suite
    # (tests/support/intents.py) wraps them to hold an intent's commit a little longer.

    def _began(self, conn: Any) -> None:
        """Called as a transaction opens (nothing to do: the driver begins by itself)."""

    def _commit(self, conn: Any) -> None:
        conn.commit()

    def dispose(self) -> None:
        """Close the idle connections; those in use are closed as they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)

    def _checkout(self) -> Any:
        if not self._slots.acquire(timeout=self._timeout):
            raise LedgerError(
                f"no ledger connection came free in {self._timeout:g} s: "
                "every one is held by a long transaction"
            )
        try:
            with self._lock:
                if self._closed:
                    raise LedgerError("the ledger is closed")
                conn = self._idle.pop() if self._idle else None
            return conn if conn is not None else self.factory()
        except BaseException:
            self._slots.release()
            raise

    def _checkin(self, conn: Any, *, failed: bool) -> None:
        try:
            if _broken(conn):
                # The server went away (or restarted): the idle ones opened before are
                # as dead as this one, and would each fail a turn before being dropped.
                log.warning("a ledger connection broke: reconnecting")
                with self._lock:
                    stale, self._idle = self._idle, []
                for other in (conn, *stale):
                    _close(other)
                return
            try:
                conn.rollback()  # a clean slate for the next user; a no-op when idle
            except Exception:
                _close(conn)
                if not failed:
                    raise
                return
            with self._lock:
                if not self._closed and len(self._idle) < self._size:
                    self._idle.append(conn)
                    return
            _close(conn)
        finally:
            self._slots.release()


def _broken(conn: Any) -> bool:
    # psycopg marks a connection whose server went away ``broken`` (and ``closed``);
    # sqlite3 has neither: a file does not go away under an open connection.
    return bool(getattr(conn, "broken", False) or getattr(conn, "closed", False))


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception as exc:  # closing a dead connection may say so: nothing to do
        log.debug("closing a ledger connection: %s", exc)
