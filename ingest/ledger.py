"""The ledger: one row per drop and a history of its transitions, in SQLite (one
machine, the default) or PostgreSQL (a server several hosts can share).

The engine writes it, one transaction per turn; ``ingest retry`` writes too, through
:meth:`Ledger.requeue` only (it puts failed drops back in RETRY_WAIT, for the engine to
pick up), and the other commands read while they write (WAL mode). The schema is built
by named migrations (:mod:`ingest.migrations`) that run in a transaction each and are
recorded in ``schema_migrations``; :mod:`ingest.schema` describes it as SQLModel tables.
Plain SQL on DBAPI connections (:mod:`ingest.connections`), so that a start-up does not
import SQLAlchemy. Writes go through
:meth:`Ledger.batch`, one transaction per batch, so a burst of events costs one commit,
not one per event.

A :class:`~ingest.batch.Batch` (:mod:`ingest.batch`) is that transaction, and every
write of a turn goes through it: an intent, a state change, a watcher's health. A check
that must hold when they commit (a node's lease on a watch folder, for several nodes on
one PostgreSQL) belongs in the same batch, before the writes it guards: a ``SELECT ...
FOR SHARE`` of the lease row through ``Batch._execute`` holds off a taker's update until
the commit, and a failed check raises, so that nothing of the turn commits.

::

    ledger = Ledger.open("sqlite:////var/lib/ingest/ingest.db")
    with ledger.batch() as tx:
        drop_id = tx.add(rule="news", watch="/mnt/news", path="a.mxf", kind="file")
        tx.transition(drop_id, State.SUBMITTING, "intent", object_name="a")
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .batch import REQUEUEABLE_STATES, Batch
from .connections import Connections
from .errors import ConfigError, LedgerError
from .ledgerurl import is_postgresql, postgres_target, postgresql_sql, redact
from .migrations import FILES_REMAIN, MIGRATIONS, SCHEMA_MIGRATIONS_DDL, portable_ddl
from .states import ACTIVE_STATES, FINAL_STATES, State

if TYPE_CHECKING:
    from .watch import Packed

__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "MIGRATIONS",
    "REQUEUEABLE_STATES",
    "Batch",
    "Ledger",
    "State",
    "sqlite_path",
]

#: the drops' columns that hold a boolean: SQLite gives them back as 0 and 1
_BOOLEANS = ("source_deleted", "adopted")


def sqlite_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` URL, or None for an in-memory database.

    >>> sqlite_path("sqlite:////var/lib/ingest/ingest.db")
    PosixPath('/var/lib/ingest/ingest.db')
    """
    if not url.startswith("sqlite:///"):
        raise LedgerError(
            f"the ledger must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB, "
            f"not {redact(url)!r}"
        )
    raw = url.removeprefix("sqlite:///")
    if raw in ("", ":memory:"):
        return None
    return Path(raw)


class Ledger:
    """The ledger, SQLite or PostgreSQL: open it with :meth:`open`, write with :meth:`batch`."""

    def __init__(self, db: Connections, path: Path | None, where: str | None = None) -> None:
        #: the pool of DBAPI connections; :meth:`connect` and :meth:`begin` lend them
        self.db = db
        self.path = path
        #: how messages name it: the file, or the server without its password
        self.where = where or (str(path) if path else "the in-memory ledger")

    def __repr__(self) -> str:
        return f"Ledger({str(self.path) if self.path else self.where!r})"

    @property
    def postgresql(self) -> bool:
        return self.db.dialect == "postgresql"

    def sql(self, statement: str) -> str:
        """``statement``, written with ``?`` placeholders, as this ledger's driver takes it."""
        return postgresql_sql(statement) if self.postgresql else statement

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A DBAPI connection (sqlite3 or psycopg) for reads; anything it leaves
        uncommitted is rolled back. Database errors become :class:`LedgerError`."""
        with self._errors(), self.db.connect() as conn:
            yield conn

    @contextmanager
    def begin(self) -> Iterator[Any]:
        """A DBAPI connection in a transaction, committed at the end of the block (the
        raw form of :meth:`batch`, for prunes and copies)."""
        with self._errors(), self.db.begin() as conn:
            yield conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except LedgerError:
            raise
        except Exception as exc:
            if _is_db_error(exc):
                raise _ledger_error(exc, self.where, self.path) from exc
            raise

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, password: str | None = None) -> Ledger:
        """Open (creating if needed, readable only by its owner) and migrate the ledger.

        A PostgreSQL ledger (``postgresql://USER@HOST:PORT/DB``, ``password`` apart) that
        cannot be reached raises :class:`ConfigError` naming host and port: at start that
        is a wrong setting far more often than an outage.
        """
        if is_postgresql(url):
            ledger = _open_postgresql(url, password)
        else:
            path = sqlite_path(url)
            if path is not None:
                _create_private(path)
            # An in-memory ledger lives in its one connection: the pool lends only that.
            size, overflow = (5, 10) if path is not None else (1, 0)
            db = Connections(_sqlite_connect(path), "sqlite", size=size, overflow=overflow)
            ledger = cls(db, path)
        try:
            if migrate:
                ledger.migrate()
            else:
                with ledger.connect() as conn:
                    conn.execute("SELECT 1")
        except Exception as exc:
            ledger.db.dispose()
            if isinstance(exc, LedgerError):
                raise
            raise _ledger_error(exc, ledger.where, ledger.path) from exc
        return ledger

    def close(self) -> None:
        self.db.dispose()

    def migrate(self) -> list[str]:
        """Apply the migrations not yet applied; returns their names."""
        applied: list[str] = []
        dialect = self.db.dialect
        with self.begin() as conn:
            self._serialize_migrations(conn)
            conn.execute(portable_ddl(SCHEMA_MIGRATIONS_DDL, dialect))
        done = self._applied_migrations()
        for name, apply in MIGRATIONS:
            if name in done:
                continue  # the common case, a ledger up to date: one read, no write
            with self.begin() as conn:
                self._serialize_migrations(conn)
                # Again under the lock: another node may have applied it meanwhile.
                found = conn.execute(
                    self.sql("SELECT 1 FROM schema_migrations WHERE name = ?"), (name,)
                ).fetchone()
                if found is not None:
                    continue
                apply(conn, dialect)
                conn.execute(
                    self.sql("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)"),
                    (name, time.time()),
                )
                applied.append(name)
        return applied

    def _serialize_migrations(self, conn: Any) -> None:
        # Nodes starting together on one PostgreSQL take turns; SQLite's write lock
        # already does this.
        if self.postgresql:
            conn.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")

    def pending_migrations(self) -> list[str]:
        """Migrations this version knows that the ledger has not had (for ``doctor``)."""
        done = self._applied_migrations()
        return [name for name, _ in MIGRATIONS if name not in done]

    def unknown_migrations(self) -> list[str]:
        """Migrations the ledger has had that this version does not know: a newer ingest
        wrote it (for ``doctor``)."""
        known = {name for name, _ in MIGRATIONS}
        return sorted(self._applied_migrations() - known)

    def _applied_migrations(self) -> set[str]:
        with self.connect() as conn:
            return {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}

    @contextmanager
    def batch(self, now: float | None = None) -> Iterator[Batch]:
        """One transaction: everything written inside commits together, or not at all."""
        with self.begin() as conn:
            yield Batch(conn, time.time() if now is None else now, self.postgresql)

    def requeue(self, drops: Mapping[int, str], detail: str) -> set[int]:
        """Put final drops (id -> the state they were seen in) back in RETRY_WAIT, in one
        transaction, for the engine to submit again; returns the ids requeued. A drop
        whose state changed since it was seen is left untouched.

        The one write to drop state outside the engine (``ingest retry``); the engine
        picks the drops up on its next reload tick.
        """
        with self.batch() as tx:
            return {i for i, state in drops.items() if tx.requeue(i, state, detail)}

    def accept_rules(self) -> int | None:
        """``ingest rules accept``: ask the daemon to release the drops it holds for an
        operator's word (``[rules] confirm_new_matches``); returns how many it holds, None
        when the daemon has not recorded its rules yet. The engine releases them on its
        next turn and clears the mark."""
        with self.batch() as tx:
            return tx.rules_accept()

    # -- reads -----------------------------------------------------------------------

    def _dicts(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self.connect() as conn:
            cursor = conn.execute(self.sql(sql), params)
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor]
        if rows and not self.postgresql and "source_deleted" in rows[0]:
            for row in rows:
                for key in _BOOLEANS:
                    if row[key] is not None:
                        row[key] = bool(row[key])
        return rows

    def get(self, drop_id: int) -> dict[str, Any] | None:
        found = self._dicts("SELECT * FROM drops WHERE id = ?", (drop_id,))
        return found[0] if found else None

    def rows(self, *states: str) -> list[dict[str, Any]]:
        """Every drop in one of ``states`` (all drops when none is given)."""
        if not states:
            return self._dicts("SELECT * FROM drops ORDER BY id")
        marks = ", ".join("?" * len(states))
        sql = f"SELECT * FROM drops WHERE state IN ({marks}) ORDER BY id"  # noqa: S608
        return self._dicts(sql, tuple(str(s) for s in states))

    def settled_by_path(self, watch: str) -> dict[str, Packed | None]:
        """What the ledger settled under ``watch`` whose files may remain: path -> (size,
        mtime_ns) of the path's newest drop when that drop is final, in one int
        (:func:`ingest.watch.pack`), None while it is still active.

        What a scan compares the filesystem with: a file whose (size, mtime) equals its
        entry was archived, rejected or failed as it is, and needs no second look. A path
        whose newest drop was COMPLETED with its files deleted has no entry: a file there
        now is a new drop. Read through the partial index of drops whose files remain,
        so a start-up costs the present, not the ledger's history. One int per path, as
        :func:`ingest.watch.scan` compares them, to stay small and quick for many files.
        """
        with self.connect() as conn:
            rows = conn.execute(settled_sql(postgresql=self.postgresql), (watch,))
            # A path's rows come in id order: the newest is the one kept. (ingest.watch.pack
            # inline: the CLI's commands never import the watchers.)
            return {path: None if n is None else mtime << 64 | n for path, n, mtime in rows}

    def history(self, drop_id: int) -> list[dict[str, Any]]:
        return self._dicts("SELECT * FROM transitions WHERE drop_id = ? ORDER BY id", (drop_id,))

    def watchers(self) -> list[dict[str, Any]]:
        return self._dicts("SELECT * FROM watchers ORDER BY watch")

    def counts(self) -> dict[str, int]:
        with self.connect() as conn:
            result = conn.execute("SELECT state, count(*) FROM drops GROUP BY state")
            return {state: n for state, n in result}


def settled_sql(*, postgresql: bool) -> str:
    """The query behind :meth:`Ledger.settled_by_path`, in the backend's own dialect.

    Only a path's newest drop counts, and a new drop takes its older final drops out of
    those whose files remain (:meth:`Batch.add`; migration 0014 did it for the drops
    recorded before): a path has one drop here, or, for an older one still active, the
    newest comes last in the index's own order. No per-row look for a newer drop, which
    cost a third of the read (and, on PostgreSQL before its first ANALYZE, a nested loop
    over the whole folder: 0.85 s at 2,000 drops).
    """
    final = ", ".join(f"'{s}'" for s in sorted(FINAL_STATES))
    # A live drop's size reads NULL, a final drop without a size -1 (it packs to -1, which
    # no file found equals): three columns, not four, a tenth less of the read.
    sql = (
        f"SELECT path, CASE WHEN state IN ({final}) THEN coalesce(size, -1) END, "  # noqa: S608
        "coalesce(mtime_ns, 0) FROM drops "
        f"WHERE watch = ? AND ({FILES_REMAIN}) ORDER BY path, id"
    )
    return postgresql_sql(sql) if postgresql else sql


def _sqlite_connect(path: Path | None) -> Any:
    """What makes one connection to the SQLite ledger at ``path`` (None: in memory)."""

    def connect() -> sqlite3.Connection:
        # One connection serves one thread at a time, lent by the pool to any of them.
        # The driver's own transactions, as before: it begins one before the first write.
        conn = sqlite3.connect(
            ":memory:" if path is None else str(path), check_same_thread=False, timeout=10
        )
        _on_connect(conn)
        return conn

    return connect


def _on_connect(dbapi_conn: sqlite3.Connection) -> None:
    cursor = dbapi_conn.cursor()
    # Freed pages go back to the filesystem after a prune (ingest.prune); a no-op on a
    # ledger made before, which keeps them for reuse until one full VACUUM.
    cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
    # WAL lets the CLI read while the daemon writes; FULL makes a committed intent survive
    # a power cut, which is what stops a second archive of the same drop.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _create_private(path: Path) -> None:
    """Create the ledger's folder (0700) and file (0600) when they do not exist yet."""
    try:
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
            os.close(fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise LedgerError(f"cannot create the ledger {path}: {exc.strerror}") from exc


#: the advisory lock (any constant of ours) that makes migrations on PostgreSQL take turns
_MIGRATION_LOCK = 0x1A6E57


def _open_postgresql(url: str, password: str | None) -> Ledger:
    """An engine on the PostgreSQL at ``url`` through psycopg 3, checked by connecting."""
    import psycopg

    target = postgres_target(url)
    kwargs = target.connect_kwargs(password)
    # The password goes to the driver alone, never into a URL that could be logged.
    db = Connections(lambda: psycopg.connect(**kwargs), "postgresql", size=2, overflow=4)  # type: ignore[arg-type]
    try:
        with db.connect() as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        db.dispose()
        reason = _reason(exc, password)
        raise ConfigError(
            f"[ledger] url: cannot reach PostgreSQL at {target.host}:{target.port} "
            f"(database {target.dbname}, user {target.user}): {reason}"
        ) from None
    return Ledger(db, None, str(target))


def _reason(exc: BaseException, password: str | None) -> str:
    reason = str(getattr(exc, "orig", exc)) or type(exc).__name__
    reason = " ".join(reason.split())  # libpq's messages span lines
    if password:  # no driver we know echoes it; this holds if one ever does
        reason = reason.replace(password, "***")
    return reason


def _is_db_error(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        return True
    return type(exc).__module__.startswith("psycopg")  # its errors, without importing it


def _ledger_error(exc: BaseException, where: str, path: Path | None) -> LedgerError:
    reason = _reason(exc, None)
    hint = ""
    if "readonly" in reason or "read-only" in reason:
        hint = ": the ledger or its folder is read-only for this user"
    elif "disk" in reason and "full" in reason:
        hint = ": the disk is full"
    elif "locked" in reason:
        hint = ": another process holds a write lock too long"
    elif path is not None and _read_only_fs(path):
        # SQLite says only "unable to open database file" when its WAL files cannot be made.
        hint = ": the ledger's filesystem is mounted read-only"
    return LedgerError(f"ledger {where}: {reason}{hint}")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False
