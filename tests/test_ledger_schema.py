"""The ledger's schema is written twice: as SQLModel classes (what the code reads and
writes through) and as the migrations' DDL (what a database is built from). These tests
hold the two equal, column for column, for a fresh ledger and for one migrated up from
the oldest schema.

Both sides are read back through SQLAlchemy's inspector (the ledger itself does not use
SQLAlchemy: an engine is made here for the inspection), the model side from
``create_all`` on an empty database of the same backend: the comparison sees what each
backend makes of the DDL, with no parsing of a catalog. They run on SQLite and on a
throwaway PostgreSQL (tests/support/postgres.py), where the migrations' DDL is translated
(ingest.migrations.portable_ddl): the facts include a float's precision, which the type family
alone does not tell (PostgreSQL's ``real`` is single precision).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, inspect
from sqlalchemy.types import TypeEngine

from ingest import ledger as ledger_module
from ingest import overview, queries
from ingest.ledger import ACTIVE_STATES, FINAL_STATES, MIGRATIONS, Ledger, State
from ingest.ledgerurl import postgres_target
from ingest.migrations import DROP_COLUMNS
from ingest.pgread import PostgresLedger
from ingest.schema import TABLES, DropRow
from tests.support.postgres import PASSWORD_ENV, PostgresServer

BACKENDS = ["sqlite", "postgresql"]

#: every table the ledger's migrations create, as the code declares it
MODEL_TABLES = TABLES


def family(sql_type: TypeEngine[Any]) -> str:
    """A column type's family, not its spelling: TEXT and VARCHAR, REAL and FLOAT store
    and read back alike."""
    affinity = sql_type._type_affinity
    return affinity.__name__ if affinity is not None else repr(sql_type)


Fact = tuple[Any, ...]


def schema(engine: Engine) -> set[Fact]:
    """What the database says it holds, one fact per column (position, name, type family,
    nullability, server default), table, primary key, index and foreign key: a mismatch
    then reads as the facts one side has and the other lacks."""
    inspector = inspect(engine)
    facts: set[Fact] = set()
    for table in inspector.get_table_names():
        facts.add((table, "table"))
        pk = inspector.get_pk_constraint(table)["constrained_columns"]
        facts.add((table, "primary key", tuple(pk)))
        for position, col in enumerate(inspector.get_columns(table)):
            # SQLite reports `id INTEGER PRIMARY KEY` nullable; no key column is.
            nullable = None if col["name"] in pk else col["nullable"]
            # PostgreSQL spells out a default's cast ('file'::text, or ::character varying
            # for the model's VARCHAR): the same default either way.
            default = col.get("default")
            if default is not None:
                default = re.sub(r"::[a-z ]+$", "", default)
            precision = getattr(col["type"], "precision", None)
            fact = (position, col["name"], family(col["type"]), precision, nullable, default)
            facts.add((table, "column", *fact))
        for ix in inspector.get_indexes(table):
            facts.add((table, "index", ix["name"], tuple(ix["column_names"]), bool(ix["unique"])))
        for fk in inspector.get_foreign_keys(table):
            refers = (fk["referred_table"], tuple(fk["referred_columns"]))
            facts.add((table, "foreign key", tuple(fk["constrained_columns"]), *refers))
    return facts


def open_ledger(url: str, *, migrate: bool = True) -> Ledger:
    return Ledger.open(url, migrate=migrate, password=os.environ.get(PASSWORD_ENV))


def sqlalchemy_engine(ledger: Ledger) -> Engine:
    """An SQLAlchemy engine on ``ledger``'s database, through the ledger's own connections."""
    url = "postgresql+psycopg://" if ledger.postgresql else "sqlite://"
    return create_engine(url, creator=ledger.db.factory)


def model_schema(url: str) -> set[Fact]:
    """The schema the SQLModel classes describe, built on an empty database at ``url``."""
    ledger = open_ledger(url, migrate=False)
    engine = sqlalchemy_engine(ledger)
    try:
        # Only the ledger's tables: SQLModel's metadata is shared by the whole process.
        DropRow.metadata.create_all(engine, tables=MODEL_TABLES)
        return schema(engine)
    finally:
        engine.dispose()
        ledger.close()


def ledger_schema(ledger: Ledger) -> set[Fact]:
    engine = sqlalchemy_engine(ledger)
    try:
        return schema(engine)
    finally:
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def new_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """Makes the URL of a new, empty database on the backend under test."""
    if request.param == "sqlite":
        names = iter(range(1000))
        yield lambda: f"sqlite:///{tmp_path / f'{next(names)}.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    monkeypatch.setenv(PASSWORD_ENV, "pg-test-secret-7f3a")
    yield server.create_database


@pytest.fixture
def model(new_url: Any) -> set[Fact]:
    return model_schema(new_url())


@pytest.fixture
def sqlite_model(tmp_path: Path) -> set[Fact]:
    return model_schema(f"sqlite:///{tmp_path / 'model.db'}")


@pytest.fixture
def fresh(new_url: Any) -> Iterator[Ledger]:
    ledger = open_ledger(new_url())
    yield ledger
    ledger.close()


def test_a_fresh_ledger_is_the_model(fresh: Ledger, model: set[Fact]) -> None:
    assert fresh.pending_migrations() == []
    assert ledger_schema(fresh) == model


def test_timestamps_and_sizes_keep_every_digit(fresh: Ledger) -> None:
    """Epoch seconds to the microsecond and 64-bit ns mtimes: what PostgreSQL's single
    precision ``real`` (two-minute steps) or 32-bit ``integer`` would round or refuse."""
    at = 1_764_370_000.123456
    mtime_ns = 1_764_370_000_123_456_789
    with fresh.batch(now=at) as tx:
        drop_id = tx.add(rule="r", watch="/w", path="a", size=2**40 + 1, mtime_ns=mtime_ns)
        tx.transition(drop_id, None, State.SUBMITTING, "intent", submitted_at=at + 0.5)
    row = fresh.get(drop_id)
    assert row is not None
    assert row["detected_at"] == pytest.approx(at, abs=1e-6)
    assert row["submitted_at"] - row["detected_at"] == pytest.approx(0.5, abs=1e-6)
    assert (row["size"], row["mtime_ns"]) == (2**40 + 1, mtime_ns)
    assert fresh.history(drop_id)[-1]["at"] == pytest.approx(at, abs=1e-6)
    assert fresh.settled_by_path("/w") == {"a": None}


def test_the_oldest_ledger_migrated_is_the_model(
    new_url: Any, model: set[Fact], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = new_url()
    # A ledger as the first release made it: the initial schema, with a drop in it.
    with monkeypatch.context() as patch:
        patch.setattr(ledger_module, "MIGRATIONS", MIGRATIONS[:1])
        old = open_ledger(url)
        # Written as the first release wrote it (today's Batch writes columns, such as a
        # transition's node, that this schema does not have yet).
        with old.begin() as conn:
            conn.execute(
                "INSERT INTO drops (rule, watch, path, state, size, mtime_ns, detected_at, "
                "updated_at) VALUES ('news', '/w', 'a.mxf', 'DETECTED', 3, 7, 1.0, 1.0)"
            )
            conn.execute(
                "INSERT INTO transitions (drop_id, at, from_state, to_state, detail) "
                "SELECT id, 1.0, NULL, 'DETECTED', 'detected' FROM drops"
            )
        old.close()
    ledger = open_ledger(url, migrate=False)
    try:
        assert ledger.pending_migrations() == [name for name, _ in MIGRATIONS[1:]]
        assert ledger.migrate() == [name for name, _ in MIGRATIONS[1:]]
        assert ledger_schema(ledger) == model
        (row,) = ledger.rows()
        # The columns added since read back as the model's defaults.
        assert (row["path"], row["size"], row["mtime_ns"]) == ("a.mxf", 3, 7)
        assert (row["waiting_since"], row["adopted"], row["rules_version"]) == (None, None, None)
    finally:
        ledger.close()
    told, truth = _counts(url)  # the counts start from what the ledger held
    assert told == truth == [("DETECTED", "news", 1)]


def _counts(url: str) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """(what ``ingest status`` counts, what the drops table holds) per (state, rule)."""
    at: Any
    if url.startswith("sqlite:"):
        at = Path(url.removeprefix("sqlite:///"))
    else:
        at = PostgresLedger(postgres_target(url), os.environ.get(PASSWORD_ENV))
    with queries.open_ledger(at) as conn:
        told = sorted(overview.state_rule_counts(conn))
        truth = conn.execute("SELECT state, rule, count(*) FROM drops GROUP BY state, rule")
        return told, sorted((r[0], r[1], int(r[2])) for r in truth)


def test_status_counts_follow_every_write_and_fold(new_url: Any) -> None:
    url = new_url()
    ledger = open_ledger(url)
    try:
        with ledger.batch() as tx:
            ids = [tx.add(rule=f"r{i % 3}", watch="/w", path=f"p{i}") for i in range(30)]
        told, truth = _counts(url)
        assert told == truth == [("DETECTED", "r0", 10), ("DETECTED", "r1", 10),
                                 ("DETECTED", "r2", 10)]  # fmt: skip
        with ledger.batch() as tx:
            for drop_id in ids[:12]:
                tx.transition(drop_id, State.DETECTED, State.SUBMITTING, "intent")
            for drop_id in ids[:6]:
                tx.transition(drop_id, State.SUBMITTING, State.FAILED, "refused")
            tx.update(ids[20], progress=5)  # no state change: no count moves
            tx.transition(ids[21], State.DETECTED, State.DETECTED, "again")
        assert ledger.requeue({ids[0]: "FAILED", ids[1]: "FAILED"}, "retried") == set(ids[:2])
        with ledger.begin() as conn:  # as a prune deletes
            for sql in (
                "DELETE FROM transitions WHERE drop_id IN (?, ?)",
                "DELETE FROM drops WHERE id IN (?, ?)",
            ):
                conn.execute(ledger.sql(sql), (ids[29], ids[28]))
            conn.execute(ledger.sql("UPDATE drops SET rule = 'renamed' WHERE id = ?"), (ids[27],))
        told, truth = _counts(url)
        assert told == truth
        assert {("FAILED", "r0", 1), ("FAILED", "r2", 2), ("RETRY_WAIT", "r0", 1)} <= set(told)
        # Folding (a few rows at a time, as the engine does in its turns) changes nothing.
        for _ in range(20):
            with ledger.batch() as tx:
                tx.fold_counts(7, 2)
        told, truth = _counts(url)
        assert told == truth
        with ledger.connect() as conn:
            (left,) = conn.execute("SELECT count(*) FROM drop_counts").fetchone()
            (totals,) = conn.execute("SELECT count(*) FROM drop_totals").fetchone()
        assert left is not None and left < 2  # all folded but what ``least`` leaves
        assert totals == len(truth)  # a row per pair
        with ledger.batch() as tx:  # under ``least`` rows: nothing to fold
            assert tx.fold_counts(100, 10_000) == 0
    finally:
        ledger.close()


def test_the_model_declares_what_the_queries_rely_on(model: set[Fact]) -> None:
    """A guard on the comparison itself: it does see indexes, keys, defaults and a float's
    precision (double: 53 bits where the backend tells)."""
    assert ("drops", "index", "ix_drops_state_finished", ("state", "finished_at"), False) in model
    assert ("drops", "column", 4, "kind", "String", None, False, "'file'") in model
    assert ("drops", "column", 17, "attempts", "Integer", None, False, "0") in model
    floats = {fact[5] for fact in model if fact[1] == "column" and fact[4] == "Float"}
    assert floats in ({None}, {53})  # SQLite: every REAL is 8 bytes; PostgreSQL: double
    assert ("transitions", "foreign key", ("drop_id",), "drops", ("id",)) in model
    tables = {fact[0] for fact in model if fact[1] == "table"}
    assert tables == {
        "drops",
        "transitions",
        "watchers",
        "schema_migrations",
        "rules_versions",
        "rules_state",
        "nodes",
        "leases",
        "lease_takes",
        "drop_counts",
        "drop_totals",
    }


def test_the_columns_a_write_may_name_are_the_drops_columns(model: set[Fact]) -> None:
    """Batch checks a write's fields against ingest.migrations.DROP_COLUMNS (the names
    reach its SQL text): the list is the drops table's, no more and no less."""
    columns = {fact[3] for fact in model if fact[:2] == ("drops", "column")}
    assert columns == DROP_COLUMNS == {c.name for c in DropRow.__table__.columns}  # type: ignore[attr-defined]


def test_the_daemon_imports_neither_sqlalchemy_nor_sqlmodel() -> None:
    """``ingest run`` opens, migrates, reads and writes its ledger in plain SQL: the two
    cost half a second and 40 MB at every start (the reconcile benchmark)."""
    code = (
        "import sys; import ingest.engine, ingest.commands.run, ingest.web, ingest.prune; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'sqlmodel', "
        "'pydantic', 'ingest') and m.split('.')[0] != 'ingest' or m == 'ingest.schema'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_read_side_states_are_the_ledger_states() -> None:
    assert [s.value for s in State] == list(queries.STATES)
    assert set(queries.ACTIVE_STATES) == ACTIVE_STATES
    assert set(queries.FAILED_STATES) <= FINAL_STATES
    assert set(queries.IN_FLIGHT_STATES) <= ACTIVE_STATES
    assert all(type(s) is str for s in queries.STATES)  # plain text for sqlite3 and output
