"""The ledger at a glance: what ``ingest status``, the status page, ``/metrics`` and the
notifier read of it.

Counts by state and rule, the requests in flight and those DIVA keeps waiting, the
oldest waiting drop of each kind and why it waits, recent failures, checksum
mismatches, the watchers' health and, on a shared ledger, the nodes and their leases.
Like :mod:`ingest.queries` (whose connections and record shape these share), each
query is shaped for an index, so its cost is what it shows, not the ledger's size.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from . import defaults
from .config import ServiceConfig
from .queries import FAILED_STATES, IN_FLIGHT_STATES, SELECT_RECORDS, has_table, is_pg

__all__ = [
    "checksum_mismatches",
    "cluster",
    "in_flight",
    "oldest_waiting",
    "recent_failures",
    "state_rule_counts",
    "stuck",
    "stuck_after",
    "waiting_reason",
    "watchers",
]


def state_rule_counts(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """``(state, rule, count)`` for every pair with drops: ``drop_totals`` and the changes
    not yet folded into it, which the ledger's triggers keep (small tables, whatever the
    ledger's history), or on a ledger not yet migrated to them, one pass over the
    ``(state, rule)`` index."""
    if has_table(conn, "drop_totals"):
        sql = (
            "SELECT state, rule, sum(n) FROM (SELECT state, rule, n FROM drop_totals "
            "UNION ALL SELECT state, rule, n FROM drop_counts) AS c "
            "GROUP BY state, rule HAVING sum(n) <> 0"
        )
    else:
        sql = "SELECT state, rule, count(*) FROM drops GROUP BY state, rule"
    return [(r[0], r[1], int(r[2])) for r in conn.execute(sql)]


def in_flight(conn: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    """Requests DIVA is working on (SUBMITTED, RUNNING), oldest first."""
    rows: list[sqlite3.Row] = []
    for state in IN_FLIGHT_STATES:
        rows += conn.execute(
            f"{SELECT_RECORDS} WHERE state = ? ORDER BY id LIMIT ?", (state, limit)
        ).fetchall()
    rows.sort(key=lambda r: r["id"])
    return rows[:limit]


def stuck_after(config: ServiceConfig) -> float:
    """How long DIVA may keep a request waiting before it counts as stuck, in seconds
    (``[diva] stuck_after_seconds``): for :func:`stuck`'s ``before``."""
    return config.diva.stuck_after_seconds if config.diva else defaults.DIVA_STUCK_AFTER_SECONDS


def stuck(conn: sqlite3.Connection, before: float, limit: int) -> tuple[int, list[sqlite3.Row]]:
    """In-flight requests DIVA has kept waiting (queued, for resources, for an operator)
    since before ``before``: their count and the longest-waiting ``limit``. The cost is
    the number of requests in flight (the ``(state, id)`` index), not of drops."""
    return _per_state(conn, IN_FLIGHT_STATES, "waiting_since < ?", before, "waiting_since", limit)


def _per_state(
    conn: sqlite3.Connection,
    states: Iterable[str],
    where: str,
    value: float,
    order: str,
    limit: int,
) -> tuple[int, list[sqlite3.Row]]:
    """The drops in any of ``states`` meeting ``where`` (one ``?``, ``value``): their count
    and the first ``limit`` by ``order`` (a column, perhaps with DESC). One state at a
    time, each a range of a ``(state, ...)`` index, then merged."""
    column, _, direction = order.partition(" ")
    total = 0
    rows: list[sqlite3.Row] = []
    for state in states:
        total += conn.execute(
            f"SELECT count(*) FROM drops WHERE state = ? AND {where}",  # noqa: S608
            (state, value),
        ).fetchone()[0]
        rows += conn.execute(
            f"{SELECT_RECORDS} WHERE state = ? AND {where} ORDER BY {order} LIMIT ?",
            (state, value, limit),
        ).fetchall()
    rows.sort(key=lambda r: r[column], reverse=direction == "DESC")
    return total, rows[:limit]


def oldest_waiting(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """The oldest drop of each waiting state (DETECTED, SUBMITTING, RETRY_WAIT), oldest first."""
    rows: list[sqlite3.Row] = []
    for state in ("DETECTED", "SUBMITTING", "RETRY_WAIT"):
        row = conn.execute(
            f"{SELECT_RECORDS} WHERE state = ? ORDER BY id LIMIT 1", (state,)
        ).fetchone()
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
    return _per_state(conn, FAILED_STATES, "finished_at >= ?", since, "finished_at DESC", limit)


def checksum_mismatches(conn: sqlite3.Connection, limit: int) -> tuple[int, list[sqlite3.Row]]:
    """Drops whose checksums DIVA reported differently, not acknowledged (``ingest ledger
    ack``): their count and the newest ``limit``."""
    where = "WHERE checksum_mismatch IS NOT NULL AND checksum_acked_at IS NULL"
    total = conn.execute(f"SELECT count(*) FROM drops {where}").fetchone()[0]  # noqa: S608
    rows = conn.execute(f"{SELECT_RECORDS} {where} ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
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
    if not has_table(conn, "nodes"):
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
