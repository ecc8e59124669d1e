"""The ledger's schema as SQLModel tables: the typed description of what the migrations
(:mod:`ingest.migrations`) build.

Two descriptions of one schema: these classes name every table, column, index and type;
the migrations are what a database is built from (and what an older ledger is brought
up to date by). tests/test_ledger_schema.py holds the two equal on every backend. The
daemon itself reads and writes in plain SQL and never imports this module: SQLModel and
SQLAlchemy cost half a second of start-up and 40 MB.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, Index, Integer, text
from sqlmodel import Field, SQLModel

from .migrations import CHECKSUM_OPEN, FILES_REMAIN
from .states import State

__all__ = [
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
]


class DropRow(SQLModel, table=True):
    """One drop: a file (file mode) or a top-level folder (folder mode)."""

    __tablename__ = "drops"
    # The migrations build these; tests/test_ledger_schema.py holds the two equal.
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
            sqlite_where=text(CHECKSUM_OPEN),
            postgresql_where=text(CHECKSUM_OPEN),
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
    #: or failed file an operator removed), or a newer drop took its path: a start-up
    #: no longer reads it back
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

# What the migrations make of the annotations (ingest.migrations.portable_ddl): every
# float is an epoch timestamp, double precision on every backend, and every integer 64
# bits, except on SQLite, where only INTEGER makes a key column the rowid (and all its
# integers are 64-bit).
for _table in TABLES:
    for _column in _table.columns:
        if isinstance(_column.type, Float):
            _column.type = Float(53)
        elif isinstance(_column.type, Integer):
            _column.type = BigInteger().with_variant(Integer(), "sqlite")
