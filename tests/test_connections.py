"""The ledger's connection pool (ingest/connections.py), on a real SQLite file and a real
PostgreSQL server: transactions commit whole or not at all, connections are reused and
capped, and a PostgreSQL connection that broke is replaced, with the idle ones that
broke with it, after one failed call rather than one per dead connection."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from ingest.connections import Connections
from ingest.errors import LedgerError
from ingest.ledger import Ledger
from tests.support.postgres import PASSWORD, PostgresServer


def _pool(path: Path, **kw: Any) -> Connections:
    def connect() -> sqlite3.Connection:
        return sqlite3.connect(path, check_same_thread=False)

    pool = Connections(connect, "sqlite", **kw)
    with pool.begin() as conn:
        conn.execute("CREATE TABLE t (n INTEGER)")
    return pool


def _rows(pool: Connections) -> list[int]:
    with pool.connect() as conn:
        return [n for (n,) in conn.execute("SELECT n FROM t ORDER BY n")]


def test_a_transaction_commits_whole_or_not_at_all(tmp_path: Path) -> None:
    pool = _pool(tmp_path / "t.db")
    with pool.begin() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("INSERT INTO t VALUES (2)")
    with pytest.raises(RuntimeError), pool.begin() as conn:
        conn.execute("INSERT INTO t VALUES (3)")
        raise RuntimeError("the turn failed half-way")
    # A reader that wrote without committing leaves nothing either.
    with pool.connect() as conn:
        conn.execute("INSERT INTO t VALUES (4)")
    assert _rows(pool) == [1, 2]
    pool.dispose()


def test_connections_are_reused_and_capped(tmp_path: Path) -> None:
    made: list[sqlite3.Connection] = []

    def connect() -> sqlite3.Connection:
        made.append(sqlite3.connect(tmp_path / "t.db", check_same_thread=False))
        return made[-1]

    pool = Connections(connect, "sqlite", size=1, overflow=1, timeout=0.3)
    for _ in range(5):
        with pool.connect() as conn:
            conn.execute("SELECT 1")
    assert len(made) == 1  # one connection, lent five times
    with pool.connect() as first, pool.connect() as second:
        assert first is not second
        with pytest.raises(LedgerError, match="no ledger connection came free"), pool.connect():
            pass
    with pool.connect():  # a slot came back
        pass
    assert len(made) == 2  # the overflow one was closed, not kept (size 1)
    pool.dispose()
    with pytest.raises(LedgerError, match="closed"), pool.connect():
        pass


def test_a_waiting_thread_gets_the_connection_given_back(tmp_path: Path) -> None:
    pool = _pool(tmp_path / "t.db", size=1, overflow=0, timeout=10)
    got = threading.Event()

    def wait_then_take() -> None:
        pool.connect().__enter__()
        got.set()

    with pool.connect():
        waiter = threading.Thread(target=wait_then_take)
        waiter.start()
        assert not got.wait(0.2)  # held here: the other thread waits
    waiter.join(10)
    assert got.is_set()


def test_a_broken_postgresql_connection_costs_one_failed_call(postgres: PostgresServer) -> None:
    ledger = Ledger.open(postgres.create_database(), password=PASSWORD)
    try:
        # Two connections in the pool, as two threads of the daemon leave them.
        with ledger.connect() as a, ledger.connect() as b:
            a.execute("SELECT 1")
            b.execute("SELECT 1")
        dbname = ledger.where.rsplit("/", 1)[-1]
        with postgres.connect() as admin:  # the server drops them, as a restart would
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            ).fetchone()
        assert killed is not None and killed[0] == 2
        with pytest.raises(LedgerError, match=r"terminat|closed|connection"):
            ledger.counts()
        # The other idle connection died too, and went with the one that failed.
        assert ledger.counts() == {}
        with ledger.batch() as tx:
            tx.add(rule="r", watch="/w", path="a")
        assert ledger.counts() == {"DETECTED": 1}
    finally:
        ledger.close()
