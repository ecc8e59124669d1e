"""The ledger's migrations: the named steps, in plain SQL, that build its schema and bring
an older ledger up to date.

Plain SQL on the DBAPI connection (sqlite3 or psycopg), written once in SQLite's words
(:func:`portable_ddl` translates for PostgreSQL): the daemon opens its ledger without
SQLAlchemy, whose imports cost more than a start-up over a large tree's walk. The same
schema is described a second time, as SQLModel classes, in :mod:`ingest.schema`;
tests/test_ledger_schema.py holds the two equal on every backend.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "DROP_COLUMNS",
    "FILES_REMAIN",
    "MIGRATIONS",
    "SCHEMA_MIGRATIONS_DDL",
    "Migration",
    "portable_ddl",
]

#: One migration: applied to a DBAPI connection inside a transaction, with the dialect's
#: name (``sqlite`` or ``postgresql``).
Migration = Callable[[Any, str], None]

CHECKSUM_OPEN = "checksum_mismatch IS NOT NULL AND checksum_acked_at IS NULL"

#: A drop whose files may still be in its watch folder: every drop but one COMPLETED
#: with its sources gone (DIVA deleted them) or one whose files a scan found gone (an
#: operator removed a refused file). Public: the ledger's start-up read names it word
#: for word, as SQLite uses a partial index only for a query that repeats it.
FILES_REMAIN = "(state <> 'COMPLETED' OR source_deleted IS NOT TRUE) AND files_gone_at IS NULL"
#: What FILES_REMAIN was before ``files_gone_at`` (migration 0010 builds its index so).
_FILES_REMAIN_0010 = "state <> 'COMPLETED' OR source_deleted IS NOT TRUE"

#: Every column of ``drops``, as the migrations leave it: a write names only these
#: (:class:`ingest.batch.Batch` checks, as column names reach its SQL text).
DROP_COLUMNS = frozenset({
    "id", "rule", "watch", "path", "kind", "state", "object_name", "collection", "media",
    "qos", "priority", "diva_state", "progress", "request_id", "status_code", "status_name",
    "abort_reason", "attempts", "source_deleted", "size", "mtime_ns", "file_count", "body",
    "error", "detected_at", "settled_at", "submitted_at", "finished_at", "next_attempt_at",
    "updated_at", "waiting_since", "adopted", "rules_version", "checksum_algo", "checksums",
    "checksum_mismatch", "checksum_acked_at", "files_gone_at",
})  # fmt: skip


_INITIAL = """
CREATE TABLE drops (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL,
    watch TEXT NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'file',
    state TEXT NOT NULL,
    object_name TEXT, collection TEXT, media TEXT, qos INTEGER, priority INTEGER,
    diva_state TEXT, progress INTEGER, request_id INTEGER,
    status_code INTEGER, status_name TEXT, abort_reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    source_deleted BOOLEAN,
    size INTEGER, mtime_ns INTEGER, file_count INTEGER,
    body TEXT, error TEXT,
    detected_at REAL NOT NULL, settled_at REAL, submitted_at REAL, finished_at REAL,
    next_attempt_at REAL, updated_at REAL NOT NULL
);
CREATE INDEX ix_drops_state_id ON drops (state, id);
CREATE INDEX ix_drops_state_rule ON drops (state, rule);
CREATE INDEX ix_drops_watch_path ON drops (watch, path);
CREATE INDEX ix_drops_rule_id ON drops (rule, id);
CREATE INDEX ix_drops_object ON drops (object_name, collection);
CREATE INDEX ix_drops_detected ON drops (detected_at);
CREATE INDEX ix_drops_finished ON drops (finished_at);
CREATE TABLE transitions (
    id INTEGER PRIMARY KEY,
    drop_id INTEGER NOT NULL REFERENCES drops (id),
    at REAL NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX ix_transitions_drop ON transitions (drop_id, id);
CREATE TABLE watchers (
    watch TEXT PRIMARY KEY,
    observer TEXT NOT NULL,
    health TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    last_scan_at REAL,
    updated_at REAL NOT NULL
);
"""


_RULES_VERSIONS = """
ALTER TABLE drops ADD COLUMN rules_version TEXT;
CREATE TABLE rules_versions (
    version TEXT PRIMARY KEY,
    loaded_at REAL NOT NULL,
    last_loaded_at REAL NOT NULL,
    rule_count INTEGER NOT NULL,
    files TEXT NOT NULL,
    rules TEXT NOT NULL
);
CREATE TABLE rules_state (
    id INTEGER PRIMARY KEY,
    version TEXT NOT NULL,
    loaded_at REAL NOT NULL,
    refused_since REAL,
    problems TEXT,
    updated_at REAL NOT NULL
)
"""


_CLUSTER = """
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE leases (
    watch TEXT PRIMARY KEY,
    holder TEXT,
    epoch INTEGER NOT NULL DEFAULT 0,
    expires_at REAL NOT NULL DEFAULT 0,
    taken_at REAL
)
"""

_CLUSTER_STAMPS = """
ALTER TABLE transitions ADD COLUMN node TEXT;
ALTER TABLE transitions ADD COLUMN epoch INTEGER;
CREATE TABLE lease_takes (
    watch TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    holder TEXT NOT NULL,
    taken_at REAL NOT NULL,
    PRIMARY KEY (watch, epoch)
)
"""

#: The migrations' DDL is written once, in SQLite's words; on PostgreSQL these become
#: their equivalents. An epoch timestamp needs double precision (PostgreSQL's ``real``
#: is single: two-minute steps), an ns mtime or a byte count 64 bits, and a key column
#: its own sequence (only SQLite numbers ``INTEGER PRIMARY KEY`` by itself).
_POSTGRESQL_TYPES = [
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGSERIAL PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
]


def portable_ddl(statement: str, dialect: str) -> str:
    """One DDL statement, written for SQLite, as ``dialect`` (``sqlite`` or ``postgresql``).

    >>> portable_ddl("CREATE TABLE t (id INTEGER PRIMARY KEY, at REAL, n INTEGER)", "postgresql")
    'CREATE TABLE t (id BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION, n BIGINT)'
    """
    if dialect == "sqlite":
        return statement
    if dialect != "postgresql":
        raise ValueError(f"no DDL for the {dialect} dialect")
    for pattern, replacement in _POSTGRESQL_TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


def _run_script(script: str) -> Migration:
    def apply(conn: Any, dialect: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(portable_ddl(statement, dialect))

    return apply


_DROP_COUNTS = (
    "CREATE TABLE drop_counts (id INTEGER PRIMARY KEY, state TEXT NOT NULL, rule TEXT NOT NULL,"
    " n INTEGER NOT NULL);"
    "CREATE TABLE drop_totals (state TEXT NOT NULL, rule TEXT NOT NULL, n INTEGER NOT NULL,"
    " PRIMARY KEY (state, rule))"
)
#: Triggers keep drop_counts true whoever writes drops: the engine, `ingest retry`, a
#: prune, `ingest ledger copy`. They only ever insert, so writers on several nodes never
#: wait for one another on a counter row.
_COUNT_TRIGGERS_SQLITE = (
    "CREATE TRIGGER drops_counted_insert AFTER INSERT ON drops BEGIN "
    "INSERT INTO drop_counts (state, rule, n) VALUES (NEW.state, NEW.rule, 1); END",
    "CREATE TRIGGER drops_counted_update AFTER UPDATE OF state, rule ON drops "
    "WHEN OLD.state IS NOT NEW.state OR OLD.rule IS NOT NEW.rule BEGIN "
    "INSERT INTO drop_counts (state, rule, n) VALUES (OLD.state, OLD.rule, -1), "
    "(NEW.state, NEW.rule, 1); END",
    "CREATE TRIGGER drops_counted_delete AFTER DELETE ON drops BEGIN "
    "INSERT INTO drop_counts (state, rule, n) VALUES (OLD.state, OLD.rule, -1); END",
)
_COUNT_TRIGGERS_POSTGRESQL = (
    "CREATE FUNCTION ingest_count_drops() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF TG_OP <> 'INSERT' THEN "
    "INSERT INTO drop_counts (state, rule, n) VALUES (OLD.state, OLD.rule, -1); END IF; "
    "IF TG_OP <> 'DELETE' THEN "
    "INSERT INTO drop_counts (state, rule, n) VALUES (NEW.state, NEW.rule, 1); END IF; "
    "RETURN NULL; END $$",
    "CREATE TRIGGER drops_counted AFTER INSERT OR DELETE ON drops "
    "FOR EACH ROW EXECUTE FUNCTION ingest_count_drops()",
    "CREATE TRIGGER drops_counted_update AFTER UPDATE OF state, rule ON drops FOR EACH ROW "
    "WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.rule IS DISTINCT FROM NEW.rule) "
    "EXECUTE FUNCTION ingest_count_drops()",
)


def _drop_counts(conn: Any, dialect: str) -> None:
    _run_script(_DROP_COUNTS)(conn, dialect)
    # What the ledger holds now; the triggers carry it on from here.
    conn.execute(
        "INSERT INTO drop_totals (state, rule, n) "
        "SELECT state, rule, count(*) FROM drops GROUP BY state, rule"
    )
    triggers = _COUNT_TRIGGERS_SQLITE if dialect == "sqlite" else _COUNT_TRIGGERS_POSTGRESQL
    for statement in triggers:
        conn.execute(statement)


_NEWER = (
    "SELECT {what} FROM drops n WHERE n.watch = drops.watch AND n.path = drops.path "
    "AND n.id > drops.id"
)
_SUPERSEDED = (
    f"UPDATE drops SET files_gone_at = ({_NEWER.format(what='min(n.detected_at)')}) "  # noqa: S608
    f"WHERE ({FILES_REMAIN}) AND state IN ('COMPLETED', 'FAILED', 'REJECTED', 'SKIPPED') "
    f"AND EXISTS ({_NEWER.format(what='1')})"
)

#: The table of applied migrations, made before any migration runs.
SCHEMA_MIGRATIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
)


#: Named schema migrations, applied in order, each in its own transaction. A change here
#: is also made to the SQLModel classes of :mod:`ingest.schema` (and to
#: :data:`DROP_COLUMNS`): tests/test_ledger_schema.py compares them.
MIGRATIONS: list[tuple[str, Migration]] = [
    ("0001_initial", _run_script(_INITIAL)),
    # ``ingest status`` counts the failures of the last 24 h: with this index that costs
    # the number of failures, not the number of drops finished in the window.
    (
        "0002_drops_state_finished",
        _run_script("CREATE INDEX ix_drops_state_finished ON drops (state, finished_at)"),
    ),
    ("0003_drops_waiting_since", _run_script("ALTER TABLE drops ADD COLUMN waiting_since REAL")),
    ("0004_drops_adopted", _run_script("ALTER TABLE drops ADD COLUMN adopted BOOLEAN")),
    ("0005_rules_versions", _run_script(_RULES_VERSIONS)),
    (
        "0006_rules_held",
        _run_script(
            "ALTER TABLE rules_state ADD COLUMN held TEXT;"
            "ALTER TABLE rules_state ADD COLUMN held_since REAL;"
            "ALTER TABLE rules_state ADD COLUMN accepted_at REAL"
        ),
    ),
    (
        "0007_drops_checksums",
        _run_script(
            "ALTER TABLE drops ADD COLUMN checksum_algo TEXT;"
            "ALTER TABLE drops ADD COLUMN checksums TEXT;"
            "ALTER TABLE drops ADD COLUMN checksum_mismatch TEXT;"
            "ALTER TABLE drops ADD COLUMN checksum_acked_at REAL"
        ),
    ),
    ("0008_cluster", _run_script(_CLUSTER)),
    (
        "0009_drops_checksum_open",
        _run_script(f"CREATE INDEX ix_drops_checksum_open ON drops (id) WHERE {CHECKSUM_OPEN}"),
    ),
    (
        "0010_drops_files_remain",
        _run_script(
            "CREATE INDEX ix_drops_files_remain ON drops (watch, path, id) "
            f"WHERE {_FILES_REMAIN_0010}"
        ),
    ),
    ("0011_cluster_stamps", _run_script(_CLUSTER_STAMPS)),
    (
        "0012_drops_files_gone",
        _run_script(
            "ALTER TABLE drops ADD COLUMN files_gone_at REAL;"
            "DROP INDEX ix_drops_files_remain;"
            f"CREATE INDEX ix_drops_files_remain ON drops (watch, path, id) WHERE {FILES_REMAIN}"
        ),
    ),
    ("0013_drop_counts", _drop_counts),
    # A new drop now takes its path's older final drops out of those whose files remain
    # (ingest.batch.Batch.add), so that the start-up read needs no per-row look for a
    # newer drop; this does the same for the drops recorded before, once. Only drops
    # whose files remain are looked at: the partial index bounds it by the present.
    ("0014_drops_superseded", _run_script(_SUPERSEDED)),
]
