"""Read-side SQL over the ledger, for the operator commands.

Plain :mod:`sqlite3`, read-only (``mode=ro``), never SQLAlchemy: ``ingest status`` must
start and answer in a fraction of a second on a million-row ledger. Every query is
shaped for an index of the schema (see ``ingest.schema``); unbounded queries return
cursors, not lists. The ledger is in WAL mode, so these reads never block the daemon,
nor wait for it. A PostgreSQL ledger is read through psycopg (:mod:`ingest.pgread`), with
the same query texts: where the two backends' SQL differs, :func:`_pg` says which.

::

    with open_ledger(ledger_path(None)) as conn:
        for row in select_drops(conn, DropFilter(states=("FAILED",)), limit=50):
            print(drop_record(row))
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from . import states
from .config import ServiceConfig, find_config, load_config
from .errors import LedgerError, UsageError
from .ledgerurl import is_postgresql, postgres_target
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
    "STATES",
    "DropFilter",
    "drop_known",
    "drop_record",
    "find_by_path",
    "get_drop",
    "history",
    "ledger_path",
    "open_ledger",
    "resolve_rules_versions",
    "rules_state",
    "rules_version_prefix",
    "rules_version_record",
    "rules_versions",
    "select_drops",
    "state_rule_counts",
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
)
_TIME_FIELDS = frozenset(f for f in RECORD_FIELDS if f.endswith("_at"))
_COLUMNS = ", ".join(RECORD_FIELDS)
# Only constant column names and placeholders are ever put into SQL text; every value
# is bound. Hence the S608 (SQL built from strings) exemptions below.
_SELECT = f"SELECT {_COLUMNS} FROM drops"  # noqa: S608

#: How long a read waits for a lock before giving up (WAL readers rarely wait at all:
#: only while a checkpoint resets the log).
BUSY_TIMEOUT_MS = 5000


def ledger_path(config_path: Path | None) -> LedgerAt:
    """The ledger named by the service config (``--config``, env, ``./ingest.toml``)."""
    return config_ledger_path(load_config(find_config(config_path), warn=False))


def config_ledger_path(config: ServiceConfig) -> LedgerAt:
    """The ledger of a loaded service config: its file, or its PostgreSQL server."""
    if is_postgresql(config.ledger.url):
        from .pgread import PostgresLedger

        return PostgresLedger(postgres_target(config.ledger.url), config.ledger.password())
    path = config.ledger.path
    if path is None:
        raise UsageError("the ledger is in memory ([ledger] url): no other process can read it")
    return path


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
                f"SELECT * FROM ({_SELECT} WHERE {clause} ORDER BY id DESC LIMIT ?){alias}"  # noqa: S608
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
    sql = _SELECT
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
# status


def state_rule_counts(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """``(state, rule, count)`` for every pair: one pass over the ``(state, rule)`` index."""
    return [
        (r[0], r[1], r[2])
        for r in conn.execute("SELECT state, rule, count(*) FROM drops GROUP BY state, rule")
    ]


def in_flight(conn: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    """Requests DIVA is working on (SUBMITTED, RUNNING), oldest first."""
    rows: list[sqlite3.Row] = []
    for state in IN_FLIGHT_STATES:
        rows += conn.execute(
            f"{_SELECT} WHERE state = ? ORDER BY id LIMIT ?", (state, limit)
        ).fetchall()
    rows.sort(key=lambda r: r["id"])
    return rows[:limit]


def stuck(conn: sqlite3.Connection, before: float, limit: int) -> tuple[int, list[sqlite3.Row]]:
    """In-flight requests DIVA has kept waiting (queued, for resources, for an operator)
    since before ``before``: their count and the longest-waiting ``limit``. The cost is
    the number of requests in flight (the ``(state, id)`` index), not of drops."""
    total = 0
    rows: list[sqlite3.Row] = []
    for state in IN_FLIGHT_STATES:
        total += conn.execute(
            "SELECT count(*) FROM drops WHERE state = ? AND waiting_since < ?", (state, before)
        ).fetchone()[0]
        rows += conn.execute(
            f"{_SELECT} WHERE state = ? AND waiting_since < ? ORDER BY waiting_since LIMIT ?",
            (state, before, limit),
        ).fetchall()
    rows.sort(key=lambda r: r["waiting_since"])
    return total, rows[:limit]


def oldest_waiting(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """The oldest drop of each waiting state (DETECTED, SUBMITTING, RETRY_WAIT), oldest first."""
    rows: list[sqlite3.Row] = []
    for state in ("DETECTED", "SUBMITTING", "RETRY_WAIT"):
        row = conn.execute(f"{_SELECT} WHERE state = ? ORDER BY id LIMIT 1", (state,)).fetchone()
        if row is not None:
            rows.append(row)
    rows.sort(key=lambda r: (r["detected_at"], r["id"]))
    return rows


def waiting_reason(row: sqlite3.Row | dict[str, Any]) -> str:
    """Why a waiting drop waits, in a few words."""
    state = row["state"]
    if state == "DETECTED":
        if row["settled_at"] is None:
            return "settling (still changing, or not unchanged long enough yet)"
        error = str(row["error"] or "")
        if error.startswith(("waiting for the ready marker", "waiting for its sidecar", "hashing")):
            return error
        return "queued: settled, waiting for a free slot to submit"
    if state == "SUBMITTING":
        return "submitting: waiting for DIVA's answer to the archive request"
    if state == "RETRY_WAIT":
        at = row["next_attempt_at"]
        when = "now" if at is None else f"at {_local(at)}"
        why = f" after: {row['error']}" if row["error"] else ""
        return f"retry {when}{why}"
    return str(state).lower()


def _local(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def recent_failures(
    conn: sqlite3.Connection, since: float, limit: int
) -> tuple[int, list[sqlite3.Row]]:
    """FAILED/REJECTED drops finished since ``since``: their count and the newest ``limit``.

    Each state is a range of the ``(state, finished_at)`` index (migration 0002), so the
    cost is the number of failures, not of drops finished.
    """
    total = 0
    rows: list[sqlite3.Row] = []
    for state in FAILED_STATES:
        total += conn.execute(
            "SELECT count(*) FROM drops WHERE state = ? AND finished_at >= ?", (state, since)
        ).fetchone()[0]
        rows += conn.execute(
            f"{_SELECT} WHERE state = ? AND finished_at >= ? ORDER BY finished_at DESC LIMIT ?",
            (state, since, limit),
        ).fetchall()
    rows.sort(key=lambda r: r["finished_at"], reverse=True)
    return total, rows[:limit]


def checksum_mismatches(conn: sqlite3.Connection, limit: int) -> tuple[int, list[sqlite3.Row]]:
    """Drops whose checksums DIVA reported differently, not acknowledged (``ingest ledger
    ack``): their count and the newest ``limit``."""
    where = "WHERE checksum_mismatch IS NOT NULL AND checksum_acked_at IS NULL"
    total = conn.execute(f"SELECT count(*) FROM drops {where}").fetchone()[0]  # noqa: S608
    rows = conn.execute(f"{_SELECT} {where} ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return total, rows


def watchers(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """The engine's last word on each watch folder."""
    return conn.execute(
        "SELECT watch, observer, health, detail, last_scan_at, updated_at FROM watchers "
        "ORDER BY watch"
    ).fetchall()


def cluster(conn: sqlite3.Connection, now: float) -> tuple[list[Any], list[Any]]:
    """The nodes on a shared (PostgreSQL) ledger and the folder leases (ingest.leases):
    (nodes: name, host, pid, heartbeat_at, alive, folders; leases: watch, holder, epoch,
    live). Liveness is by the database's clock on PostgreSQL (the nodes' own), ``now``
    elsewhere. Empty on a ledger no node has shared."""
    if not _has_table(conn, "nodes"):
        return [], []
    clock = "CAST(EXTRACT(EPOCH FROM now()) AS DOUBLE PRECISION)" if is_pg(conn) else "?"
    times = () if is_pg(conn) else (now,)
    nodes = conn.execute(
        f"SELECT n.name, n.host, n.pid, n.heartbeat_at, n.expires_at > {clock} AS alive, "  # noqa: S608
        f"(SELECT count(*) FROM leases l WHERE l.holder = n.name AND l.expires_at > {clock}) "
        "AS folders FROM nodes n ORDER BY n.name",
        times * 2,
    ).fetchall()
    leases = conn.execute(
        f"SELECT watch, holder, epoch, expires_at > {clock} AS live FROM leases "  # noqa: S608
        "ORDER BY watch",
        times,
    ).fetchall()
    return nodes, leases


# ---------------------------------------------------------------------------------------
# rules versions (written by the daemon: ingest.engine.rulestate)


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    # A ledger the daemon has not migrated yet (an older ingest wrote it) has none.
    if is_pg(conn):
        return conn.execute("SELECT to_regclass(?)", (name,)).fetchone()[0] is not None
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return found is not None


def rules_versions(conn: sqlite3.Connection, limit: int | None = None) -> list[sqlite3.Row]:
    """The rules versions the daemon loaded, the one last put in force first."""
    if not _has_table(conn, "rules_versions"):
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
    if not _has_table(conn, "rules_versions"):
        return []
    match, param = _glob(is_pg(conn), "version", text + "*")
    return conn.execute(
        f"SELECT * FROM rules_versions WHERE {match} ORDER BY last_loaded_at DESC",  # noqa: S608
        (param,),
    ).fetchall()


def rules_state(conn: sqlite3.Connection) -> sqlite3.Row | None:
    """The daemon's word on its rules: the version in force and any refused edit."""
    if not _has_table(conn, "rules_state"):
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
