"""The ledger's schema is written twice: as SQLModel classes (what the code reads and
writes through) and as the migrations' DDL (what a database is built from). These tests
hold the two equal, column for column, for a fresh ledger and for one migrated up from
the oldest schema.

Both sides are read back through SQLAlchemy's inspector, the model side from
``create_all`` on an empty database of the same backend: the comparison sees what each
backend makes of the DDL, so it holds for a second backend by adding its URL, with no
parsing of SQLite's own catalog.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, inspect
from sqlalchemy.types import TypeEngine

from ingest import ledger as ledger_module
from ingest import queries
from ingest.ledger import (
    ACTIVE_STATES,
    FINAL_STATES,
    MIGRATIONS,
    DropRow,
    Ledger,
    MigrationRow,
    RulesStateRow,
    RulesVersionRow,
    State,
    TransitionRow,
    WatcherRow,
)

#: every table the ledger's migrations create, as the code declares it
MODEL_TABLES = [
    m.__table__  # type: ignore[union-attr]
    for m in (DropRow, TransitionRow, WatcherRow, MigrationRow, RulesVersionRow, RulesStateRow)
]


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
            fact = (position, col["name"], family(col["type"]), nullable, col.get("default"))
            facts.add((table, "column", *fact))
        for ix in inspector.get_indexes(table):
            facts.add((table, "index", ix["name"], tuple(ix["column_names"]), bool(ix["unique"])))
        for fk in inspector.get_foreign_keys(table):
            refers = (fk["referred_table"], tuple(fk["referred_columns"]))
            facts.add((table, "foreign key", tuple(fk["constrained_columns"]), *refers))
    return facts


def model_schema(url: str) -> set[Fact]:
    """The schema the SQLModel classes describe, built on an empty database at ``url``."""
    engine = create_engine(url)
    try:
        # Only the ledger's tables: SQLModel's metadata is shared by the whole process.
        DropRow.metadata.create_all(engine, tables=MODEL_TABLES)
        return schema(engine)
    finally:
        engine.dispose()


def ledger_schema(ledger: Ledger) -> set[Fact]:
    return schema(ledger.engine)


@pytest.fixture
def model(tmp_path: Path) -> set[Fact]:
    return model_schema(f"sqlite:///{tmp_path / 'model.db'}")


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'fresh.db'}")
    yield ledger
    ledger.close()


def test_a_fresh_ledger_is_the_model(fresh: Ledger, model: set[Fact]) -> None:
    assert fresh.pending_migrations() == []
    assert ledger_schema(fresh) == model


def test_the_oldest_ledger_migrated_is_the_model(
    tmp_path: Path, model: set[Fact], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    # A ledger as the first release made it: the initial schema, with a drop in it.
    with monkeypatch.context() as patch:
        patch.setattr(ledger_module, "MIGRATIONS", MIGRATIONS[:1])
        old = Ledger.open(url)
        with old.batch(now=1.0) as tx:
            tx.add(rule="news", watch="/w", path="a.mxf", size=3, mtime_ns=7)
        old.close()
    ledger = Ledger.open(url, migrate=False)
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


def test_the_model_declares_what_the_queries_rely_on(model: set[Fact]) -> None:
    """A guard on the comparison itself: it does see indexes, keys and defaults."""
    assert ("drops", "index", "ix_drops_state_finished", ("state", "finished_at"), False) in model
    assert ("drops", "column", 4, "kind", "String", False, "'file'") in model
    assert ("drops", "column", 17, "attempts", "Integer", False, "0") in model
    assert ("transitions", "foreign key", ("drop_id",), "drops", ("id",)) in model
    tables = {fact[0] for fact in model if fact[1] == "table"}
    assert tables == {
        "drops",
        "transitions",
        "watchers",
        "schema_migrations",
        "rules_versions",
        "rules_state",
    }


def test_the_read_side_states_are_the_ledger_states() -> None:
    assert [s.value for s in State] == list(queries.STATES)
    assert set(queries.ACTIVE_STATES) == ACTIVE_STATES
    assert set(queries.FAILED_STATES) <= FINAL_STATES
    assert set(queries.IN_FLIGHT_STATES) <= ACTIVE_STATES
    assert all(type(s) is str for s in queries.STATES)  # plain text for sqlite3 and output
