"""The ledger's schema: the SQLModel tables and the named migrations that build them.

Two descriptions of one schema: the tables are what the code reads and writes through,
the migrations what a database is built from (and what an older ledger is brought up to
date by); tests/test_ledger_schema.py holds the two equal on every backend.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlalchemy import BigInteger, Connection, Float, Index, Integer, text
from sqlmodel import Field, SQLModel

from .states import State

__all__ = [
    "FILES_REMAIN",
    "MIGRATIONS",
    "SCHEMA_MIGRATIONS_DDL",
    "TABLES",
    "DropCountRow",
    "DropRow",
    "DropTotalRow",
    "LeaseRow",
    "LeaseTakeRow",
    "MigrationRow",
    "NodeRow",
    "RulesStateRow",
    "RulesVersionRow",
    "TransitionRow",
    "WatcherRow",
    "portable_ddl",
]


_CHECKSUM_OPEN = "checksum_mismatch IS NOT NULL AND checksum_acked_at IS NULL"

#: A drop whose files may still be in its watch folder: every drop but one COMPLETED
#: with its sources gone (DIVA deleted them) or one whose files a scan found gone (an
#: operator removed a refused file). Public: the ledger's start-up read names it word
#: for word, as SQLite uses a partial index only for a query that repeats it.
FILES_REMAIN = "(state <> 'COMPLETED' OR source_deleted IS NOT TRUE) AND files_gone_at IS NULL"
#: What FILES_REMAIN was before ``files_gone_at`` (migration 0010 builds its index so).
_FILES_REMAIN_0010 = "state <> 'COMPLETED' OR source_deleted IS NOT TRUE"


class DropRow(SQLModel, table=True):
    """One drop: a file (file mode) or a top-level folder (folder mode)."""

    __tablename__ = "drops"
    # The migrations below build these; tests/test_ledger_schema.py holds the two equal.
    __table_args__ = (
        Index("ix_drops_state_id", "state", "id"),
        Index("ix_drops_state_rule", "state", "rule"),
        Index("ix_drops_watch_path", "watch", "path"),
        Index("ix_drops_rule_id", "rule", "id"),
        Index("ix_drops_object", "object_name", "collection"),
        Index("ix_drops_detected", "detected_at"),
        Index("ix_drops_finished", "finished_at"),
        Index("ix_drops_state_finished", "state", "finished_at"),
        # Unacknowledged checksum mismatches, read every second by the notifier and by
        # every `ingest status`: a partial index keeps that read the size of the problem,
        # not of the ledger's history.
        Index(
            "ix_drops_checksum_open",
            "id",
            sqlite_where=text(_CHECKSUM_OPEN),
            postgresql_where=text(_CHECKSUM_OPEN),
        ),
        # What a start-up reads: the drops whose files may remain, not years of drops
        # whose files DIVA deleted long ago (the index is as large as the present).
        Index(
            "ix_drops_files_remain",
            "watch",
            "path",
            "id",
            sqlite_where=text(FILES_REMAIN),
            postgresql_where=text(FILES_REMAIN),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    rule: str
    watch: str  # the watch folder, absolute
    path: str  # relative to ``watch``, '/'-separated
    kind: str = Field(default="file", sa_column_kwargs={"server_default": "file"})  # | folder
    state: str = State.DETECTED
    object_name: str | None = None
    collection: str | None = None
    media: str | None = None
    qos: int | None = None
    priority: int | None = None
    diva_state: str | None = None
    progress: int | None = None
    request_id: int | None = None
    status_code: int | None = None
    status_name: str | None = None
    abort_reason: str | None = None
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": text("0")})
    source_deleted: bool | None = None
    size: int | None = None  # bytes (a folder: all its members)
    mtime_ns: int | None = None  # newest mtime of the drop, ns since the epoch
    file_count: int | None = None
    body: str | None = None  # the archive request body, JSON
    error: str | None = None
    detected_at: float = 0.0  # epoch seconds, UTC
    settled_at: float | None = None
    submitted_at: float | None = None
    finished_at: float | None = None
    next_attempt_at: float | None = None
    updated_at: float = 0.0
    #: since when DIVA has kept the request waiting (pending, for resources, for an
    #: operator): ``ingest status`` calls it stuck after ``[diva] stuck_after_seconds``
    waiting_since: float | None = None
    #: its request was found by the object's name (after a lost answer), not given by
    #: DIVA's answer to our call: the object is checked to be ours before COMPLETED
    adopted: bool | None = None
    #: the rules version (``rules_versions.version``) that built its archive request
    rules_version: str | None = None
    #: a rule's ``checksum``: the algorithm, and each component's digest (JSON:
    #: {component: hex}), taken after the drop settled and before its intent
    checksum_algo: str | None = None
    checksums: str | None = None
    #: DIVA's object info disagreed with ``checksums`` after completion (JSON:
    #: {component: {"ours", "diva"}}); ``ingest status`` exits 1 until acknowledged
    checksum_mismatch: str | None = None
    checksum_acked_at: float | None = None
    #: when a scan found the files of this final drop gone from its folder (a refused
    #: or failed file an operator removed): a start-up no longer reads it back
    files_gone_at: float | None = None


class TransitionRow(SQLModel, table=True):
    """One step in a drop's history."""

    __tablename__ = "transitions"
    __table_args__ = (Index("ix_transitions_drop", "drop_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    drop_id: int = Field(foreign_key="drops.id")
    at: float
    from_state: str | None = None
    to_state: str
    detail: str = Field(default="", sa_column_kwargs={"server_default": ""})
    #: on a shared ledger, the node that wrote the step and its lease epoch on the drop's
    #: folder (null on SQLite, and for an operator's step)
    node: str | None = None
    epoch: int | None = None


class WatcherRow(SQLModel, table=True):
    """The health of one watch folder, as the engine last saw it (for ``ingest status``)."""

    __tablename__ = "watchers"

    watch: str = Field(primary_key=True)
    observer: str  # native | polling
    health: str  # ok | paused | down
    detail: str = Field(default="", sa_column_kwargs={"server_default": ""})
    last_scan_at: float | None = None
    updated_at: float = 0.0


class RulesVersionRow(SQLModel, table=True):
    """A rule set the daemon loaded, once per content (``ingest rules history``)."""

    __tablename__ = "rules_versions"

    version: str = Field(primary_key=True)  # SHA-256 of the normalized rule set, hex
    loaded_at: float  # when it was first put in force, epoch seconds
    last_loaded_at: float  # when it was last put in force (a restart, an edit undone)
    rule_count: int
    files: str  # JSON: [{"path", "mtime"}] as last loaded
    rules: str  # JSON: the normalized rules, in match order


class RulesStateRow(SQLModel, table=True):
    """The daemon's word on its rules (one row): the version in force, and the problems
    of rule files on disk it refused (for ``ingest status`` and ``rules check``)."""

    __tablename__ = "rules_state"

    id: int | None = Field(default=None, primary_key=True)  # always 1
    version: str  # the rules version in force
    loaded_at: float
    refused_since: float | None = None  # since when the files on disk are refused
    problems: str | None = None  # JSON: the refused files' problems (file, line, key...)
    updated_at: float
    #: JSON: the drops already present that an edit newly matched, held until ``ingest
    #: rules accept`` (``[rules] confirm_new_matches``): [{"rule", "watch", "path", "kind"}]
    held: str | None = None
    held_since: float | None = None
    accepted_at: float | None = None  # ``ingest rules accept``: release what is held


class NodeRow(SQLModel, table=True):
    """A node on a shared (PostgreSQL) ledger, and its heartbeat (:mod:`ingest.leases`).

    Times are the database server's clock, epoch seconds: the nodes' clocks may differ.
    """

    __tablename__ = "nodes"

    name: str = Field(primary_key=True)  # [cluster] node
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    expires_at: float  # alive until then unless it beats again


class LeaseRow(SQLModel, table=True):
    """Which node holds a watch folder, until when, at which epoch (:mod:`ingest.leases`).

    The epoch grows by one at every change of holder: a write fenced by (holder, epoch)
    cannot commit for a node that lost the folder, even if it got it back since.
    """

    __tablename__ = "leases"

    watch: str = Field(primary_key=True)
    holder: str | None = None
    epoch: int = Field(default=0, sa_column_kwargs={"server_default": text("0")})
    expires_at: float = Field(default=0.0, sa_column_kwargs={"server_default": text("0")})
    taken_at: float | None = None


class LeaseTakeRow(SQLModel, table=True):
    """Each change of a folder's holder: which node took it at which epoch. The lease row
    keeps only the latest; this history is what a node's stamped steps are checked against."""

    __tablename__ = "lease_takes"

    watch: str = Field(primary_key=True)
    epoch: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    holder: str
    taken_at: float


class DropCountRow(SQLModel, table=True):
    """A change in the number of drops of a (state, rule): the ledger's own triggers write
    -1 and +1 as drops are added, move and go, and only ever insert, so writers on several
    nodes never wait for one another here. :meth:`ingest.ledger.Batch.fold_counts` moves
    the oldest into :class:`DropTotalRow` now and then."""

    __tablename__ = "drop_counts"

    id: int | None = Field(default=None, primary_key=True)
    state: str
    rule: str
    n: int


class DropTotalRow(SQLModel, table=True):
    """The drops of a (state, rule) as of the changes folded so far: ``ingest status``
    adds the few changes not yet folded, instead of counting the ledger's whole history."""

    __tablename__ = "drop_totals"

    state: str = Field(primary_key=True)
    rule: str = Field(primary_key=True)
    n: int


class MigrationRow(SQLModel, table=True):
    __tablename__ = "schema_migrations"

    name: str = Field(primary_key=True)
    applied_at: float


#: every table the migrations build
TABLES = [
    m.__table__  # type: ignore[union-attr]
    for m in (
        DropRow,
        TransitionRow,
        WatcherRow,
        MigrationRow,
        RulesVersionRow,
        RulesStateRow,
        NodeRow,
        LeaseRow,
        LeaseTakeRow,
        DropCountRow,
        DropTotalRow,
    )
]

# What the migrations make of the annotations (see _POSTGRESQL_TYPES): every float is an
# epoch timestamp, double precision on every backend, and every integer 64 bits, except on
# SQLite, where only INTEGER makes a key column the rowid (and all its integers are 64-bit).
for _table in TABLES:
    for _column in _table.columns:
        if isinstance(_column.type, Float):
            _column.type = Float(53)
        elif isinstance(_column.type, Integer):
            _column.type = BigInteger().with_variant(Integer(), "sqlite")


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
    """One DDL statement, written for SQLite, as ``dialect`` (a SQLAlchemy dialect name).

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


def _run_script(script: str) -> Callable[[Connection], None]:
    def apply(conn: Connection) -> None:
        for statement in script.split(";"):
            if statement.strip():
                conn.exec_driver_sql(portable_ddl(statement, conn.dialect.name))

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


def _drop_counts(conn: Connection) -> None:
    dialect = conn.dialect.name
    _run_script(_DROP_COUNTS)(conn)
    # What the ledger holds now; the triggers carry it on from here.
    conn.exec_driver_sql(
        "INSERT INTO drop_totals (state, rule, n) "
        "SELECT state, rule, count(*) FROM drops GROUP BY state, rule"
    )
    triggers = _COUNT_TRIGGERS_SQLITE if dialect == "sqlite" else _COUNT_TRIGGERS_POSTGRESQL
    for statement in triggers:
        conn.exec_driver_sql(statement)


#: The table of applied migrations, made before any migration runs.
SCHEMA_MIGRATIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
)


#: Named schema migrations, applied in order, each in its own transaction. A change here
#: is also made to the SQLModel classes above: tests/test_ledger_schema.py compares them.
MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
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
        _run_script(f"CREATE INDEX ix_drops_checksum_open ON drops (id) WHERE {_CHECKSUM_OPEN}"),
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
]
