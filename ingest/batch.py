"""One ledger transaction's writes: a :class:`Batch`, from :meth:`ingest.ledger.Ledger.batch`.

Every write of an engine turn goes through it: a drop detected, an intent, a state change
and the step that records it, a watcher's health, the rules' record, the fold of the
status counts. Plain DBAPI SQL, written once with ``?`` placeholders
(:func:`ingest.ledgerurl.postgresql_sql` turns them into psycopg's ``%s``): SQLAlchemy's
statement building cost more than the writes themselves in a burst. On PostgreSQL a
write and the step it records go as one statement, as every statement is a round trip.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import LedgerError
from .ledgerurl import postgresql_sql
from .migrations import DROP_COLUMNS, FILES_REMAIN
from .states import FINAL_STATES, State

__all__ = ["REQUEUEABLE_STATES", "Batch"]
#: the advisory lock that lets one node at a time fold drop_counts (Batch.fold_counts)
_COUNTS_LOCK = 0x696E6763


@dataclass(frozen=True)
class Batch:
    """The writes of one transaction; get one from :meth:`Ledger.batch`."""

    #: the transaction's DBAPI connection (sqlite3 or psycopg)
    conn: Any
    now: float
    #: whether the ledger is PostgreSQL (else SQLite)
    postgresql: bool = False
    #: whether this transaction wrote (a list, so that the frozen batch can note it)
    _wrote: list[bool] = field(default_factory=list, repr=False)
    #: (node, JSON {watch: epoch}) stamped on this transaction's steps; see :meth:`stamp`
    _stamp: list[tuple[str, str]] = field(default_factory=list, repr=False)

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """``sql`` (``?`` placeholders) on the transaction's DBAPI connection."""
        if self.postgresql:
            return self.conn.execute(postgresql_sql(sql), params)
        return self.conn.execute(sql, params)

    def _write(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if not self._wrote:
            self._wrote.append(True)
        return self._execute(sql, params)

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
        if self.postgresql:
            # One round trip to the server for the row and its first step.
            row = self._write(_pg_add_sql(keys), (*values, *step, *self._stamps())).fetchone()
            drop_id = row[0]
        else:
            drop_id = self._write(_insert_sql(keys), values).fetchone()[0]
            if isinstance(drop_id, int):
                self._write(_TRANSITION_SQL, (drop_id, *step))
        if not isinstance(drop_id, int):
            raise LedgerError("the ledger did not give the new drop an id")
        if "watch" in fields and "path" in fields:
            # The path's older final drops no longer describe what is on disk: they leave
            # the drops whose files remain, so that the start-up read finds at most one
            # drop per path there, the newest, and needs no per-row look for a newer one.
            detail = f"drop {drop_id} took its path"
            self.files_gone(fields["watch"], fields["path"], detail, before=drop_id)
        return drop_id

    def transition(
        self, drop_id: int, from_state: str | None, to_state: str, detail: str, **fields: Any
    ) -> None:
        """Move a drop to ``to_state``, update ``fields``, and record the step."""
        fields["state"] = to_state
        if self.postgresql:  # one round trip, as in add()
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

    def files_gone(
        self, watch: str, path: str, detail: str, *, before: int | None = None
    ) -> list[int]:
        """Record that the files at ``path`` are gone from ``watch``: each final drop
        there whose files remained (with an id below ``before``, if given) gets
        ``files_gone_at`` and a step saying ``detail`` (its state stays). Its ids; none
        when nothing there was thought to remain."""
        final = ", ".join(f"'{s}'" for s in sorted(FINAL_STATES))
        found = self._execute(
            f"SELECT id, state FROM drops WHERE watch = ? AND path = ? "  # noqa: S608
            f"AND ({FILES_REMAIN}) AND state IN ({final}) AND id < ?",
            (watch, path, before if before is not None else _NO_ID_ABOVE),
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
        if self.postgresql:
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
        # Conditional on the state it was seen in: the engine may have moved it since. A
        # drop a newer one superseded at its path is not requeued (`ingest retry` says
        # so before): it would stand for files that are no longer there.
        changed = self._write(
            "UPDATE drops SET state = ?, next_attempt_at = ?, attempts = 0, error = NULL, "
            "files_gone_at = NULL, updated_at = ? WHERE id = ? AND state = ? AND NOT EXISTS "
            "(SELECT 1 FROM drops n WHERE n.watch = drops.watch AND n.path = drops.path "
            "AND n.id > drops.id)",
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


#: above every drop id (SQLite's and PostgreSQL's keys are signed 64-bit)
_NO_ID_ABOVE = 2**63 - 1

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
    unknown = set(fields) - DROP_COLUMNS
    if unknown:
        raise LedgerError(f"unknown ledger fields: {', '.join(sorted(unknown))}")
