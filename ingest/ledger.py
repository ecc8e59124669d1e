"""The ledger: one row per drop and a history of its transitions, in SQLite (one
machine, the default) or PostgreSQL (a server several hosts can share).

The engine writes it, one transaction per turn; ``ingest retry`` writes too, through
:meth:`Ledger.requeue` only (it puts failed drops back in RETRY_WAIT, for the engine to
pick up), and the other commands read while they write (WAL mode). The schema is the
SQLModel tables of :mod:`ingest.schema`, built by named migrations that run in a
transaction each and are recorded in ``schema_migrations``. Writes go through
:meth:`Ledger.batch`, one transaction per batch, so a burst of events costs one commit,
not one per event.

A :class:`Batch` is that transaction, and every write of a turn goes through it: an
intent, a state change, a watcher's health. A check that must hold when they commit (a
node's lease on a watch folder, for several nodes on one PostgreSQL) belongs in the same
batch, before the writes it guards: a ``SELECT ... FOR SHARE`` of the lease row through
``Batch._execute`` holds off a taker's update until the commit, and a failed check
raises, so that nothing of the turn commits.

::

    ledger = Ledger.open("sqlite:////var/lib/ingest/ingest.db")
    with ledger.batch() as tx:
        drop_id = tx.add(rule="news", watch="/mnt/news", path="a.mxf", kind="file")
        tx.transition(drop_id, State.SUBMITTING, "intent", object_name="a")
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, insert, select

from .errors import ConfigError, LedgerError
from .ledgerurl import is_postgresql, postgres_target, postgresql_sql, redact
from .schema import (
    FILES_REMAIN,
    MIGRATIONS,
    SCHEMA_MIGRATIONS_DDL,
    DropRow,
    MigrationRow,
    RulesStateRow,
    RulesVersionRow,
    TransitionRow,
    WatcherRow,
    portable_ddl,
)
from .states import ACTIVE_STATES, FINAL_STATES, State

__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "MIGRATIONS",
    "REQUEUEABLE_STATES",
    "Batch",
    "DropRow",
    "Ledger",
    "MigrationRow",
    "RulesStateRow",
    "RulesVersionRow",
    "State",
    "TransitionRow",
    "WatcherRow",
    "sqlite_path",
]


_DROPS = DropRow.__table__  # type: ignore[attr-defined]
_TRANSITIONS = TransitionRow.__table__  # type: ignore[attr-defined]
_WATCHERS = WatcherRow.__table__  # type: ignore[attr-defined]
_MIGRATIONS = MigrationRow.__table__  # type: ignore[attr-defined]
_COLUMNS = frozenset(c.name for c in _DROPS.columns)


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


@dataclass(frozen=True)
class Batch:
    """The writes of one transaction; get one from :meth:`Ledger.batch`."""

    conn: Connection
    now: float
    #: whether this transaction wrote (a list, so that the frozen batch can note it)
    _wrote: list[bool] = field(default_factory=list, repr=False)
    #: (node, JSON {watch: epoch}) stamped on this transaction's steps; see :meth:`stamp`
    _stamp: list[tuple[str, str]] = field(default_factory=list, repr=False)

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """``sql`` (``?`` placeholders) on the transaction's own DBAPI connection.

        Plain SQL: SQLAlchemy's statement building cost more than the writes themselves
        when a burst moves thousands of drops per turn (see the burst benchmark).
        """
        raw = self.conn.connection.driver_connection
        if isinstance(raw, sqlite3.Connection):
            return raw.execute(sql, params)
        return raw.execute(postgresql_sql(sql), params)  # type: ignore[union-attr]

    def _write(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if not self._wrote:
            self._wrote.append(True)
        return self._execute(sql, params)

    @functools.cached_property
    def _postgresql(self) -> bool:
        return bool(self.conn.dialect.name == "postgresql")

    def stamp(self, node: str, epochs: Mapping[str, int]) -> None:
        """Record ``node`` and its lease epoch on the drop's folder (from ``epochs``) on
        every step this transaction writes from now on (PostgreSQL: a shared ledger), so
        that who wrote an intent, at which epoch, can be checked against the lease history."""
        self._stamp[:] = [(node, json.dumps(dict(epochs)))]

    def _stamps(self) -> tuple[str | None, str | None]:
        return self._stamp[0] if self._stamp else (None, None)

    @property
    def wrote(self) -> bool:
        """Whether anything was written in this transaction so far."""
        return bool(self._wrote)

    def add(self, *, detail: str = "detected", **fields: Any) -> int:
        """Insert a drop (state DETECTED unless given) and its first transition; returns its id."""
        _check_fields(fields)
        fields.setdefault("state", State.DETECTED)
        fields.setdefault("detected_at", self.now)
        fields["updated_at"] = self.now
        keys = tuple(fields)
        values = tuple(fields[k] for k in keys)
        step = (self.now, None, fields["state"], detail)
        if self._postgresql:
            # One round trip to the server for the row and its first step.
            row = self._write(_pg_add_sql(keys), (*values, *step, *self._stamps())).fetchone()
            drop_id = row[0]
            if not isinstance(drop_id, int):
                raise LedgerError("the ledger did not give the new drop an id")
            return drop_id
        drop_id = self._write(_insert_sql(keys), values).fetchone()[0]
        if not isinstance(drop_id, int):
            raise LedgerError("the ledger did not give the new drop an id")
        self._write(_TRANSITION_SQL, (drop_id, *step))
        return drop_id

    def transition(
        self, drop_id: int, from_state: str | None, to_state: str, detail: str, **fields: Any
    ) -> None:
        """Move a drop to ``to_state``, update ``fields``, and record the step."""
        fields["state"] = to_state
        if self._postgresql:  # one round trip, as in add()
            _check_fields(fields)
            fields["updated_at"] = self.now
            keys = tuple(fields)
            step = (self.now, from_state, to_state, detail)
            values = (*(fields[k] for k in keys), drop_id, *step, *self._stamps())
            self._write(_pg_transition_sql(keys), values)
            return
        self.update(drop_id, **fields)
        self._write(_TRANSITION_SQL, (drop_id, self.now, from_state, to_state, detail))

    def update(self, drop_id: int, **fields: Any) -> None:
        """Change fields without a transition (progress, DIVA's state while running)."""
        _check_fields(fields)
        fields["updated_at"] = self.now
        keys = tuple(fields)
        self._write(_update_sql(keys), (*(fields[k] for k in keys), drop_id))

    def files_gone(self, watch: str, path: str, detail: str) -> list[int]:
        """Record that the files at ``path`` are gone from ``watch``: each final drop
        there whose files remained gets ``files_gone_at`` and a step saying ``detail``
        (its state stays). Its ids; none when nothing there was thought to remain."""
        final = ", ".join(f"'{s}'" for s in sorted(FINAL_STATES))
        found = self._execute(
            f"SELECT id, state FROM drops WHERE watch = ? AND path = ? "  # noqa: S608
            f"AND ({FILES_REMAIN}) AND state IN ({final})",
            (watch, path),
        ).fetchall()
        for drop_id, state in found:
            self.transition(drop_id, state, state, detail, files_gone_at=self.now)
        return [drop_id for drop_id, _ in found]

    def fold_counts(self, limit: int, least: int) -> int:
        """Move the oldest ``limit`` changes of ``drop_counts`` (the triggers' +1 and -1
        per drop written) into ``drop_totals``, once ``least`` or more have piled up; the
        changes moved. On PostgreSQL, one node at a time: another's fold is skipped."""
        nth = "SELECT id FROM drop_counts ORDER BY id LIMIT 1 OFFSET ?"
        if self._execute(nth, (least - 1,)).fetchone() is None:
            return 0
        if self._postgresql:
            lock = f"SELECT pg_try_advisory_xact_lock({_COUNTS_LOCK})"
            if not self._execute(lock).fetchone()[0]:
                return 0
        # Summed from what the DELETE itself returns: a change another transaction
        # commits meanwhile is either deleted and summed here, or left as it is.
        moved = self._write(
            "DELETE FROM drop_counts WHERE id IN "
            "(SELECT id FROM drop_counts ORDER BY id LIMIT ?) RETURNING state, rule, n",
            (limit,),
        ).fetchall()
        sums: dict[tuple[str, str], int] = {}
        for state, rule, n in moved:
            sums[state, rule] = sums.get((state, rule), 0) + n
        for (state, rule), n in sums.items():
            if n:
                self._write(
                    "INSERT INTO drop_totals (state, rule, n) VALUES (?, ?, ?) ON CONFLICT "
                    "(state, rule) DO UPDATE SET n = drop_totals.n + excluded.n",
                    (state, rule, n),
                )
        self._write("DELETE FROM drop_totals WHERE n = 0")
        return len(moved)

    def requeue(self, drop_id: int, from_state: str, detail: str) -> bool:
        """Put a final drop back in RETRY_WAIT, due now with a fresh count of attempts,
        if it is still in ``from_state`` (one of :data:`REQUEUEABLE_STATES`); records the
        step. False when its state changed meanwhile: it is left untouched."""
        if from_state not in REQUEUEABLE_STATES:
            raise LedgerError(f"drop {drop_id}: {from_state} drops are not requeued")
        # Conditional on the state it was seen in: the engine may have moved it since.
        changed = self._write(
            "UPDATE drops SET state = ?, next_attempt_at = ?, attempts = 0, error = NULL, "
            "files_gone_at = NULL, updated_at = ? WHERE id = ? AND state = ?",
            (State.RETRY_WAIT, self.now, self.now, drop_id, from_state),
        ).rowcount
        if not changed:
            return False
        self._write(_TRANSITION_SQL, (drop_id, self.now, from_state, State.RETRY_WAIT, detail))
        return True

    def rows(self, state: str) -> list[dict[str, Any]]:
        """The drops in ``state`` as this transaction sees them (its own writes included)."""
        cursor = self._execute("SELECT * FROM drops WHERE state = ? ORDER BY id", (state,))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def watcher(self, watch: str, observer: str, health: str, detail: str = "", **kw: Any) -> None:
        """Record a watch folder's health (upsert)."""
        last_scan_at = kw.pop("last_scan_at", None)
        if kw:
            raise LedgerError(f"unknown watcher fields: {', '.join(sorted(kw))}")
        self._write(
            "INSERT INTO watchers (watch, observer, health, detail, last_scan_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (watch) DO UPDATE SET observer = excluded.observer, "
            "health = excluded.health, detail = excluded.detail, "
            "last_scan_at = COALESCE(excluded.last_scan_at, watchers.last_scan_at), "
            "updated_at = excluded.updated_at",
            (watch, observer, health, detail, last_scan_at, self.now),
        )

    def rules_loaded(
        self, version: str, loaded_at: float, rule_count: int, files: str, rules: str
    ) -> bool:
        """Record a rule set put in force: a new version row, or the same content's row
        brought up to date (no second row); True when the version is new."""
        changed = self._write(
            "UPDATE rules_versions SET last_loaded_at = ?, files = ? WHERE version = ?",
            (loaded_at, files, version),
        ).rowcount
        if changed:
            return False
        self._write(
            "INSERT INTO rules_versions (version, loaded_at, last_loaded_at, rule_count, "
            "files, rules) VALUES (?, ?, ?, ?, ?, ?)",
            (version, loaded_at, loaded_at, rule_count, files, rules),
        )
        return True

    def rules_state(
        self, version: str, loaded_at: float, refused_since: float | None, problems: str | None
    ) -> None:
        """Publish the rules in force and any refused edit (the one ``rules_state`` row)."""
        self._write(
            "INSERT INTO rules_state (id, version, loaded_at, refused_since, problems, "
            "updated_at) VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "version = excluded.version, loaded_at = excluded.loaded_at, "
            "refused_since = excluded.refused_since, problems = excluded.problems, "
            "updated_at = excluded.updated_at",
            (version, loaded_at, refused_since, problems, self.now),
        )

    def rules_held(self, held: str | None, since: float | None) -> None:
        """Publish the drops held for ``ingest rules accept`` (JSON), or that none is."""
        self._write(
            "UPDATE rules_state SET held = ?, held_since = ?, updated_at = ? WHERE id = 1",
            (held, since, self.now),
        )

    def rules_state_row(self) -> dict[str, Any] | None:
        """The ``rules_state`` row as this transaction sees it (None before the first)."""
        cursor = self._execute("SELECT * FROM rules_state WHERE id = 1")
        names = [d[0] for d in cursor.description]
        row = cursor.fetchone()
        return None if row is None else dict(zip(names, row, strict=True))

    def rules_accept(self) -> int | None:
        """Mark the held drops accepted (see :meth:`Ledger.accept_rules`)."""
        row = self.rules_state_row()
        if row is None:
            return None
        held = len(json.loads(row["held"])) if row["held"] else 0
        if held:
            self._write("UPDATE rules_state SET accepted_at = ? WHERE id = 1", (self.now,))
        return held

    def rules_of(self, version: str) -> str | None:
        """The normalized rules (JSON) of a recorded rules version."""
        row = self._execute("SELECT rules FROM rules_versions WHERE version = ?", (version,))
        found = row.fetchone()
        return None if found is None else str(found[0])


_TRANSITION_SQL = (
    "INSERT INTO transitions (drop_id, at, from_state, to_state, detail) VALUES (?, ?, ?, ?, ?)"
)

#: The states :meth:`Ledger.requeue` takes a drop from (an operator's retry); a FAILED
#: drop whose archive call may have reached DIVA is one: the engine asks DIVA first.
REQUEUEABLE_STATES = frozenset({State.FAILED, State.REJECTED, State.SKIPPED})


@functools.lru_cache(maxsize=256)
def _insert_sql(keys: tuple[str, ...]) -> str:
    # Only column names checked against the schema (_check_fields) ever reach here.
    marks = ", ".join("?" * len(keys))
    return f"INSERT INTO drops ({', '.join(keys)}) VALUES ({marks}) RETURNING id"  # noqa: S608


@functools.lru_cache(maxsize=256)
def _update_sql(keys: tuple[str, ...]) -> str:
    return f"UPDATE drops SET {', '.join(f'{k} = ?' for k in keys)} WHERE id = ?"  # noqa: S608


# PostgreSQL runs a write and the step it records as one statement (a data-modifying WITH,
# which SQLite lacks): every statement is a round trip to the server, and a burst's turn
# makes thousands. The step's values follow the row's.
_PG_STEP = (
    "INSERT INTO transitions (drop_id, at, from_state, to_state, detail, node, epoch) "
    "SELECT id, ?, ?, ?, ?, ?, CAST(CAST(? AS jsonb) ->> watch AS BIGINT) FROM d"
)


@functools.lru_cache(maxsize=256)
def _pg_add_sql(keys: tuple[str, ...]) -> str:
    return f"WITH d AS ({_insert_sql(keys)}, watch) {_PG_STEP} RETURNING drop_id"


@functools.lru_cache(maxsize=256)
def _pg_transition_sql(keys: tuple[str, ...]) -> str:
    return f"WITH d AS ({_update_sql(keys)} RETURNING id, watch) {_PG_STEP}"


def _check_fields(fields: Mapping[str, Any]) -> None:
    unknown = set(fields) - _COLUMNS
    if unknown:
        raise LedgerError(f"unknown ledger fields: {', '.join(sorted(unknown))}")


class Ledger:
    """The ledger, SQLite or PostgreSQL: open it with :meth:`open`, write with :meth:`batch`."""

    def __init__(self, engine: Engine, path: Path | None, where: str | None = None) -> None:
        self.engine = engine
        self.path = path
        #: how messages name it: the file, or the server without its password
        self.where = where or (str(path) if path else "the in-memory ledger")

    def __repr__(self) -> str:
        return f"Ledger({str(self.path) if self.path else self.where!r})"

    @property
    def postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

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
            engine = create_engine(url if path is None else f"sqlite:///{path}")
            event.listen(engine, "connect", _on_connect)
            ledger = cls(engine, path)
        try:
            if migrate:
                ledger.migrate()
            else:
                with ledger.engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
        except Exception as exc:
            ledger.engine.dispose()
            raise _ledger_error(exc, ledger.where, ledger.path) from exc
        return ledger

    def close(self) -> None:
        self.engine.dispose()

    def migrate(self) -> list[str]:
        """Apply the migrations not yet applied; returns their names."""
        applied: list[str] = []
        with self.engine.begin() as conn:
            self._serialize_migrations(conn)
            conn.exec_driver_sql(portable_ddl(SCHEMA_MIGRATIONS_DDL, conn.dialect.name))
        for name, apply in MIGRATIONS:
            with self.engine.begin() as conn:
                self._serialize_migrations(conn)
                done = conn.execute(select(_MIGRATIONS.c.name).where(_MIGRATIONS.c.name == name))
                if done.first() is not None:
                    continue
                apply(conn)
                conn.execute(insert(_MIGRATIONS).values(name=name, applied_at=time.time()))
                applied.append(name)
        return applied

    def _serialize_migrations(self, conn: Connection) -> None:
        # Nodes starting together on one PostgreSQL take turns; SQLite's write lock
        # already does this.
        if self.postgresql:
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")

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
        with self.engine.connect() as conn:
            return {r[0] for r in conn.exec_driver_sql("SELECT name FROM schema_migrations")}

    @contextmanager
    def batch(self, now: float | None = None) -> Iterator[Batch]:
        """One transaction: everything written inside commits together, or not at all."""
        try:
            with self.engine.begin() as conn:
                yield Batch(conn, time.time() if now is None else now)
        except LedgerError:
            raise
        except Exception as exc:
            if _is_db_error(exc):
                raise _ledger_error(exc, self.where, self.path) from exc
            raise

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

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except Exception as exc:
            if _is_db_error(exc):
                raise _ledger_error(exc, self.where, self.path) from exc
            raise

    def get(self, drop_id: int) -> dict[str, Any] | None:
        with self._reading() as conn:
            row = conn.execute(select(_DROPS).where(_DROPS.c.id == drop_id)).mappings().first()
        return dict(row) if row else None

    def rows(self, *states: str) -> list[dict[str, Any]]:
        """Every drop in one of ``states`` (all drops when none is given)."""
        query = select(_DROPS).order_by(_DROPS.c.id)
        if states:
            query = query.where(_DROPS.c.state.in_([str(s) for s in states]))
        with self._reading() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def settled_by_path(self, watch: str) -> dict[str, tuple[int, int] | None]:
        """What the ledger settled under ``watch`` whose files may remain: path -> (size,
        mtime_ns) of the path's newest drop when that drop is final, None while it is
        still active.

        What a scan compares the filesystem with: a file whose (size, mtime) equals its
        entry was archived, rejected or failed as it is, and needs no second look. A path
        whose newest drop was COMPLETED with its files deleted has no entry: a file there
        now is a new drop. Read through the partial index of drops whose files remain,
        so a start-up costs the present, not the ledger's history. Plain tuples, shaped
        like :func:`ingest.watch.scan`'s, to stay small and quick for many files.
        """
        with self._reading() as conn:
            raw = conn.connection.driver_connection
            # The plain DBAPI cursor: SQLAlchemy's per-row processing doubles the cost of
            # a start-up over a few hundred thousand known paths.
            sql = settled_sql(postgresql=not isinstance(raw, sqlite3.Connection))
            rows = raw.execute(sql, (watch,))  # type: ignore[union-attr]
            return {path: (size, mtime) if done else None for path, done, size, mtime in rows}

    def history(self, drop_id: int) -> list[dict[str, Any]]:
        with self._reading() as conn:
            query = (
                select(_TRANSITIONS)
                .where(_TRANSITIONS.c.drop_id == drop_id)
                .order_by(_TRANSITIONS.c.id)
            )
            return [dict(r) for r in conn.execute(query).mappings()]

    def watchers(self) -> list[dict[str, Any]]:
        with self._reading() as conn:
            return [dict(r) for r in conn.execute(select(_WATCHERS)).mappings()]

    def counts(self) -> dict[str, int]:
        with self._reading() as conn:
            result = conn.exec_driver_sql("SELECT state, count(*) FROM drops GROUP BY state")
            return {state: n for state, n in result}


def settled_sql(*, postgresql: bool) -> str:
    """The query behind :meth:`Ledger.settled_by_path`, in the backend's own dialect.

    An older drop at a path whose newest one left no files is no longer what is on disk:
    only a path's newest drop counts.
    """
    final = ", ".join(f"'{s}'" for s in sorted(FINAL_STATES))
    same = "n.watch = d.watch AND n.path = d.path"
    newest = f"NOT EXISTS (SELECT 1 FROM drops n WHERE {same} AND n.id > d.id)"  # noqa: S608
    if postgresql:
        # PostgreSQL plans that anti-join from the table's statistics, and before its
        # first ANALYZE (a new ledger after a burst) it guesses a handful of rows and
        # picks a nested loop over the whole watch: quadratic, 0.85 s at 2,000 drops. A
        # correlated max() is one index probe per row whatever the statistics say.
        newest = f"d.id = (SELECT max(n.id) FROM drops n WHERE {same})"  # noqa: S608
    sql = (
        f"SELECT path, state IN ({final}), size, mtime_ns FROM drops d "  # noqa: S608
        f"WHERE watch = ? AND ({FILES_REMAIN}) AND {newest} ORDER BY id"
    )
    return postgresql_sql(sql) if postgresql else sql


def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
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


#: the advisory lock that lets one node at a time fold drop_counts (Batch.fold_counts)
_COUNTS_LOCK = 0x696E6763
#: the advisory lock (any constant of ours) that makes migrations on PostgreSQL take turns
_MIGRATION_LOCK = 0x1A6E57


def _open_postgresql(url: str, password: str | None) -> Ledger:
    """An engine on the PostgreSQL at ``url`` through psycopg 3, checked by connecting."""
    target = postgres_target(url)
    # The password goes to the driver alone, never into a URL that could be logged.
    engine = create_engine(
        "postgresql+psycopg://",
        connect_args=target.connect_kwargs(password),
        pool_size=2,
        max_overflow=4,
    )
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        engine.dispose()
        reason = _reason(exc, password)
        raise ConfigError(
            f"[ledger] url: cannot reach PostgreSQL at {target.host}:{target.port} "
            f"(database {target.dbname}, user {target.user}): {reason}"
        ) from None
    return Ledger(engine, None, str(target))


def _reason(exc: BaseException, password: str | None) -> str:
    reason = str(getattr(exc, "orig", exc)) or type(exc).__name__
    reason = " ".join(reason.split())  # libpq's messages span lines
    if password:  # no driver we know echoes it; this holds if one ever does
        reason = reason.replace(password, "***")
    return reason


def _is_db_error(exc: BaseException) -> bool:
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, OperationalError | DBAPIError | sqlite3.Error):
        return True
    # psycopg's own errors, when raised on its raw connection (Batch._execute)
    return type(exc).__module__.startswith("psycopg")


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
