"""Read-side SQL over the ledger, for the operator commands.

Plain :mod:`sqlite3`, read-only (``mode=ro``), never SQLAlchemy: ``ingest status`` must
start and answer in a fraction of a second on a million-row ledger. Every query is
shaped for an index of the schema (see ``ingest.schema``); unbounded queries return
cursors, not lists. The ledger is in WAL mode, so these reads never block the daemon,
nor wait for it. A PostgreSQL ledger is read through psycopg (:mod:`ingest.pgread`), with
the same query texts: where the two backends' SQL differs, :func:`is_pg` says which.
What ``ingest status`` and the status page read is :mod:`ingest.overview`.

::

    with open_ledger(ledger_path(None)) as conn:
        for row in select_drops(conn, DropFilter(states=("FAILED",)), limit=50):
            print(drop_record(row))
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from . import states
from .config import ServiceConfig, find_config, load_config
from .errors import LedgerError, UsageError
from .ledgerurl import OLDER_LEDGER, is_postgresql, postgres_target
from .report import iso_utc
from .states import State
from .tomlcheck import did_you_mean

if TYPE_CHECKING:
    from .pgread import PostgresLedger

    #: where the ledger is: an SQLite file, or a PostgreSQL server
    LedgerAt = Path | PostgresLedger

__all__ = [
    "ACTIVE_STATES",
    "FAILED_STATES",
    "RECORD_FIELDS",
    "SELECT_RECORDS",
    "STATES",
    "DropFilter",
    "drop_known",
    "drop_record",
    "find_by_path",
    "get_drop",
    "has_table",
    "history",
    "ledger_path",
    "open_ledger",
    "resolve_rules_versions",
    "rules_state",
    "rules_version_prefix",
    "rules_version_record",
    "rules_versions",
    "select_drops",
]

#: The ledger's states, in the order a drop goes through them, as plain strings.
STATES: tuple[str, ...] = tuple(s.value for s in State)
ACTIVE_STATES: tuple[str, ...] = tuple(s.value for s in State if s in states.ACTIVE_STATES)
IN_FLIGHT_STATES: tuple[str, ...] = tuple(s.value for s in State if s in states.IN_FLIGHT_STATES)
FAILED_STATES: tuple[str, ...] = tuple(s.value for s in State if s in states.FAILED_STATES)

#: The fields of a drop in ``ledger list --json``/``--nl``/``--csv`` and ``export``, in order.
RECORD_FIELDS: tuple[str, ...] = (
    "id",
    "rule",
    "watch",
    "path",
    "kind",
    "state",
    "object_name",
    "collection",
    "media",
    "qos",
    "priority",
    "diva_state",
    "progress",
    "request_id",
    "status_code",
    "status_name",
    "abort_reason",
    "attempts",
    "source_deleted",
    "size",
    "file_count",
    "error",
    "detected_at",
    "settled_at",
    "submitted_at",
    "finished_at",
    "next_attempt_at",
    "updated_at",
    "waiting_since",
    "rules_version",
    "checksum_algo",
    "checksums",
    "checksum_mismatch",
    "checksum_acked_at",
    "files_gone_at",
)
_TIME_FIELDS = frozenset(f for f in RECORD_FIELDS if f.endswith("_at"))
_COLUMNS = ", ".join(RECORD_FIELDS)
# Only constant column names and placeholders are ever put into SQL text; every value
# is bound. Hence the S608 (SQL built from strings) exemptions below.
#: drops' rows as :func:`drop_record` reads them (here and in :mod:`ingest.overview`)
SELECT_RECORDS = f"SELECT {_COLUMNS} FROM drops"  # noqa: S608

#: How long a read waits for a lock before giving up (WAL readers rarely wait at all:
#: only while a checkpoint resets the log).
BUSY_TIMEOUT_MS = 5000


def ledger_path(config_path: Path | None) -> LedgerAt:
    """The ledger named by the service config (``--config``, env, ``./ingest.toml``)."""
    return config_ledger_path(load_config(find_config(config_path), warn=False))


def config_ledger_path(config: ServiceConfig) -> LedgerAt:
    """The ledger of a loaded service config: its file, or its PostgreSQL server."""
    ledger = readable_ledger(config)
    if ledger is None:
        raise UsageError("the ledger is in memory ([ledger] url): no other process can read it")
    return ledger


def readable_ledger(config: ServiceConfig) -> LedgerAt | None:
    """The ledger of a loaded service config, or None when it is in memory (only the
    engine's own connection sees it: the status page and the notifier stay off)."""
    if is_postgresql(config.ledger.url):
        from .pgread import PostgresLedger

        return PostgresLedger(postgres_target(config.ledger.url), config.ledger.password())
    return config.ledger.path


def ledger_url(ledger: LedgerAt) -> str:
    """The ``[ledger] url`` of ``ledger`` (without a password), for :meth:`Ledger.open`."""
    return ledger.url if not isinstance(ledger, Path) else f"sqlite:///{ledger}"


def is_pg(conn: sqlite3.Connection) -> bool:
    """Whether ``conn`` reads a PostgreSQL ledger (for the few queries whose SQL differs):
    a :class:`ingest.pgread.PgConnection` passes for an sqlite3 one otherwise."""
    return getattr(conn, "dialect", None) == "postgresql"


def _uri(path: Path) -> str:
    # Percent-encode what a URI would read as its own syntax.
    text = os.path.abspath(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file:{text}?mode=ro"


@contextmanager
def open_ledger(path: LedgerAt) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the ledger at ``path``; errors become :class:`LedgerError`.

    On PostgreSQL, a :class:`ingest.pgread.PgConnection`: it runs these queries' SQL and
    reads like an sqlite3 connection, which is what the callers are typed against.
    """
    if not isinstance(path, Path):
        from . import pgread

        pg = pgread.connect(path)
        try:
            with pgread.errors(path):
                pg.execute("SELECT id FROM drops LIMIT 0")
            yield cast(sqlite3.Connection, pg)
        finally:
            pg.close()
        return
    if not path.exists():
        raise LedgerError(
            f"no ledger at {path}: `ingest run` creates it; check [ledger] url in the config"
        )
    try:
        conn = sqlite3.connect(_uri(path), uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc
    # Autocommit: each statement is its own short read transaction unless we BEGIN.
    conn.isolation_level = None
    conn.row_factory = sqlite3.Row
    try:
        with errors(path):
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA query_only = 1")
            conn.execute("SELECT id FROM drops LIMIT 0")
        yield conn
    finally:
        conn.close()


@contextmanager
def errors(path: LedgerAt) -> Iterator[None]:
    """Turn :mod:`sqlite3` errors into one :class:`LedgerError` line naming the ledger."""
    if not isinstance(path, Path):
        from . import pgread

        with pgread.errors(path):
            yield
        return
    try:
        yield
    except sqlite3.Error as exc:
        reason = str(exc)
        if "no such table" in reason:
            reason += " (not an ingest ledger, or `ingest run` has not initialised it yet)"
        elif "no such column" in reason:
            reason += f" ({OLDER_LEDGER})"
        elif "not a database" in reason:
            reason = "not an SQLite database"
        elif "locked" in reason or "busy" in reason:
            reason += ": another process holds a lock too long"
        raise LedgerError(f"ledger {path}: {reason}") from exc


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction: the queries inside see the same ledger. Keep it short."""
    if is_pg(conn):
        conn.begin_snapshot()  # type: ignore[attr-defined]
        try:
            yield conn
        finally:
            conn.end_snapshot()  # type: ignore[attr-defined]
        return
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


# ---------------------------------------------------------------------------------------
# records


def drop_record(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    """A drop row as the JSON contract has it: ISO 8601 UTC times, a bool ``source_deleted``."""
    keys = row.keys()
    record: dict[str, Any] = {}
    for key in keys:
        value = row[key]
        if key in _TIME_FIELDS:
            value = iso_utc(value)
        elif key == "source_deleted" and value is not None:
            value = bool(value)
        record[key] = value
    return record


# ---------------------------------------------------------------------------------------
# drops


@dataclass(frozen=True)
class DropFilter:
    """What ``ledger list``/``export`` select; empty fields select everything."""

    states: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    since: float | None = None  # detected_at >= since
    until: float | None = None  # detected_at < until
    path_glob: str | None = None
    object_name: str | None = None
    #: rules versions, or their first hex digits (see :func:`rules_version_prefix`)
    rules_versions: tuple[str, ...] = ()


def glob_to_sql(pattern: str) -> str:
    """An fnmatch-style pattern as SQLite ``GLOB`` reads it (``[!a]`` becomes ``[^a]``).

    >>> glob_to_sql("news/[!x]*.mxf")
    'news/[^x]*.mxf'
    """
    return pattern.replace("[!", "[^")


def _glob(pg: bool, target: str, pattern: str) -> tuple[str, str]:
    """``target`` matching the glob ``pattern``: SQL and its parameter, per backend."""
    if pg:
        from .pgread import glob_to_regex

        return f"{target} ~ ?", glob_to_regex(pattern)
    return f"{target} GLOB ?", glob_to_sql(pattern)


def _conditions(
    f: DropFilter, *, with_states: bool, pg: bool = False
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if with_states and f.states:
        where.append(f"state IN ({', '.join('?' * len(f.states))})")
        params += f.states
    if f.rules:
        where.append(f"rule IN ({', '.join('?' * len(f.rules))})")
        params += f.rules
    if f.since is not None:
        where.append("detected_at >= ?")
        params.append(f.since)
    if f.until is not None:
        where.append("detected_at < ?")
        params.append(f.until)
    if f.path_glob:
        # A pattern starting with / is matched against the absolute path.
        target = "(watch || '/' || path)" if f.path_glob.startswith("/") else "path"
        sql, param = _glob(pg, target, f.path_glob)
        where.append(sql)
        params.append(param)
    if f.object_name is not None:
        where.append("object_name = ?")
        params.append(f.object_name)
    if f.rules_versions:
        globs = [
            _glob(pg, "rules_version", rules_version_prefix(v) + "*") for v in f.rules_versions
        ]
        where.append("(" + " OR ".join(sql for sql, _ in globs) + ")")
        params += [param for _, param in globs]
    return where, params


def select_drops(
    conn: sqlite3.Connection, f: DropFilter, *, limit: int | None = None
) -> sqlite3.Cursor:
    """Drops matching ``f``, newest first (by id), at most ``limit``; a cursor to iterate.

    One state: the ``(state, id)`` index gives rows in order. Several states with a
    limit: one ordered, limited scan of that index per state, merged, so
    ``--state FAILED --state REJECTED --limit 50`` never sorts a whole state. Several
    states without a limit: a scan of the table by id, filtered, which streams.
    """
    pg = is_pg(conn)
    where, params = _conditions(f, with_states=False, pg=pg)
    states = f.states
    if len(states) > 1 and limit is not None:
        parts = []
        all_params: list[Any] = []
        for n, state in enumerate(states):
            clause = " AND ".join(["state = ?", *where])
            alias = f" AS s{n}" if pg else ""  # PostgreSQL 15 names every subquery
            parts.append(
                f"SELECT * FROM ({SELECT_RECORDS} WHERE {clause} ORDER BY id DESC LIMIT ?){alias}"  # noqa: S608
            )
            all_params += [state, *params, limit]
        sql = " UNION ALL ".join(parts) + " ORDER BY id DESC LIMIT ?"
        return conn.execute(sql, [*all_params, limit])
    if len(states) == 1:
        where.insert(0, "state = ?")
        params.insert(0, states[0])
    elif states:
        # The unary + keeps SQLite off the state index, whose order is not by id
        # (PostgreSQL has no + for text, and its planner weighs the sort itself).
        plus = "" if pg else "+"
        where.insert(0, f"{plus}state IN ({', '.join('?' * len(states))})")
        params[:0] = states
    sql = SELECT_RECORDS
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    elif is_pg(conn):  # the whole ledger, perhaps: streamed, as sqlite3's cursor does
        return cast(sqlite3.Cursor, conn.stream(sql, params))  # type: ignore[attr-defined]
    return conn.execute(sql, params)


def get_drop(conn: sqlite3.Connection, drop_id: int) -> sqlite3.Row | None:
    """Every column of one drop (the archive body too), or None."""
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM drops WHERE id = ?", (drop_id,)
    ).fetchone()
    return row


def watches(conn: sqlite3.Connection) -> list[str]:
    """Every distinct watch folder in the ledger.

    A loose index scan by hand (one seek per folder on ``(watch, path)``): SQLite's
    DISTINCT would read the whole index.
    """
    found: list[str] = []
    current = conn.execute("SELECT min(watch) FROM drops").fetchone()[0]
    while current is not None:
        found.append(current)
        current = conn.execute(
            "SELECT min(watch) FROM drops WHERE watch > ?", (current,)
        ).fetchone()[0]
    return found


def find_by_path(conn: sqlite3.Connection, text: str) -> list[sqlite3.Row]:
    """The drops recorded for a path, newest first.

    ``text`` is a path relative to its watch folder (as ``ledger list`` shows it), or an
    absolute path (watch folder + path).
    """
    candidates: list[tuple[str, str]] = []
    if os.path.isabs(text):
        norm = os.path.normpath(text)
        for watch in watches(conn):
            prefix = watch.rstrip("/") + "/"
            if norm.startswith(prefix):
                candidates.append((watch, norm[len(prefix) :]))
    else:
        rel = text.removeprefix("./").rstrip("/")
        candidates = [(watch, rel) for watch in watches(conn)]
    rows: list[sqlite3.Row] = []
    for watch, rel in candidates:
        rows += conn.execute(
            "SELECT * FROM drops WHERE watch = ? AND path = ? ORDER BY id DESC", (watch, rel)
        ).fetchall()
    rows.sort(key=lambda r: r["id"], reverse=True)
    return rows


def drop_known(conn: sqlite3.Connection, watch: str, path: str) -> bool:
    """Whether the ledger has recorded a drop at ``path`` under ``watch`` (one seek)."""
    found = conn.execute(
        "SELECT 1 FROM drops WHERE watch = ? AND path = ? LIMIT 1", (watch, path)
    ).fetchone()
    return found is not None


def history(conn: sqlite3.Connection, drop_id: int) -> list[sqlite3.Row]:
    """A drop's transitions, oldest first."""
    return conn.execute(
        "SELECT id, at, from_state, to_state, detail FROM transitions "
        "WHERE drop_id = ? ORDER BY id",
        (drop_id,),
    ).fetchall()


def newer_for_path(conn: sqlite3.Connection, row: sqlite3.Row) -> sqlite3.Row | None:
    """The newest drop recorded after ``row`` for the same file or folder, if any."""
    found: sqlite3.Row | None = conn.execute(
        "SELECT id, state FROM drops WHERE watch = ? AND path = ? AND id > ? "
        "ORDER BY id DESC LIMIT 1",
        (row["watch"], row["path"], row["id"]),
    ).fetchone()
    return found


# ---------------------------------------------------------------------------------------
# rules versions (written by the daemon: ingest.engine.rulestate)


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    # A ledger the daemon has not migrated yet (an older ingest wrote it) has none.
    if is_pg(conn):
        return conn.execute("SELECT to_regclass(?)", (name,)).fetchone()[0] is not None
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return found is not None


def rules_versions(conn: sqlite3.Connection, limit: int | None = None) -> list[sqlite3.Row]:
    """The rules versions the daemon loaded, the one last put in force first."""
    if not has_table(conn, "rules_versions"):
        return []
    sql = "SELECT * FROM rules_versions ORDER BY last_loaded_at DESC, loaded_at DESC"
    if limit is not None:
        return conn.execute(sql + " LIMIT ?", (limit,)).fetchall()
    return conn.execute(sql).fetchall()


def rules_version_prefix(text: str) -> str:
    """A rules version or its first digits, checked (lower-case hex) for a GLOB prefix.

    >>> rules_version_prefix(" 3F9A ")
    '3f9a'
    """
    prefix = text.strip().lower()
    if not prefix or any(c not in "0123456789abcdef" for c in prefix):
        raise UsageError(f"{text!r} is not a rules version: give its hex digits")
    return prefix


def resolve_rules_versions(conn: sqlite3.Connection, prefix: str) -> list[sqlite3.Row]:
    """The rules versions whose hash starts with ``prefix`` (a few hex digits do)."""
    text = rules_version_prefix(prefix)
    if not has_table(conn, "rules_versions"):
        return []
    match, param = _glob(is_pg(conn), "version", text + "*")
    return conn.execute(
        f"SELECT * FROM rules_versions WHERE {match} ORDER BY last_loaded_at DESC",  # noqa: S608
        (param,),
    ).fetchall()


def rules_state(conn: sqlite3.Connection) -> sqlite3.Row | None:
    """The daemon's word on its rules: the version in force and any refused edit."""
    if not has_table(conn, "rules_state"):
        return None
    row: sqlite3.Row | None = conn.execute("SELECT * FROM rules_state WHERE id = 1").fetchone()
    return row


def rules_version_record(row: sqlite3.Row, *, with_rules: bool = True) -> dict[str, Any]:
    """A rules version as the JSON contract has it (ISO 8601 UTC times)."""
    files = json.loads(row["files"])
    record: dict[str, Any] = {
        "version": row["version"],
        "loaded_at": iso_utc(row["loaded_at"]),
        "last_loaded_at": iso_utc(row["last_loaded_at"]),
        "rule_count": row["rule_count"],
        "files": [{"path": f["path"], "mtime": iso_utc(f["mtime"])} for f in files],
    }
    if with_rules:
        record["rules"] = json.loads(row["rules"])
    return record


def validate_states(values: Sequence[str]) -> tuple[str, ...]:
    """State names, upper-cased and checked; :class:`UsageError` names the valid ones."""
    out: list[str] = []
    for value in values:
        name = value.strip().upper().replace("-", "_")
        if name not in STATES:
            hint = did_you_mean(name, STATES)
            raise UsageError(f"unknown state {value!r}{hint}: use one of {', '.join(STATES)}")
        if name not in out:
            out.append(name)
    return tuple(out)
