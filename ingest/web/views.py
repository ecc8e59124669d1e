"""What the HTTP routes answer, as plain data: the health verdict, the status document,
drop lists, and everything the status page shows.

The ledger is read through :mod:`ingest.queries` (read-only ``sqlite3``, WAL: never blocks
the engine's writes) with the same code as ``ingest status --json`` and ``ingest ledger
list --json``, so the API and the CLI cannot drift apart. The engine's live state comes
from its :class:`~ingest.engine.monitor.Snapshot`, never from the engine itself.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from .. import defaults, overview, queries
from ..commands.status import collect, rules_doc
from ..engine.monitor import Snapshot
from ..errors import LedgerError
from ..report import iso_utc

__all__ = ["drops", "health", "hourly_completed", "page_data", "rules_in_force", "status"]

HOUR = 3600


def health(snap: Snapshot, now: float) -> tuple[int, dict[str, Any]]:
    """``/healthz``: 200 while the engine turns and the ledger takes writes, else 503.

    Always says whether DIVA answered the latest call and which folders are paused or
    down (neither makes it 503: the daemon is alive and doing what it can).
    """
    reasons: list[str] = []
    since = snap.since_turn(now)
    stall = defaults.HTTP_HEALTH_STALL_SECONDS
    if since is None:
        reasons.append("the engine is starting: it has not finished a turn yet")
    elif since > stall:
        reasons.append(f"the engine loop has not turned for {since:.0f} s (more than {stall:g} s)")
    if snap.ledger_error is not None:
        reasons.append(f"the ledger is not writable: {snap.ledger_error}")
    doc = {
        "ok": not reasons,
        "status": "ok" if not reasons else "unhealthy",
        "reasons": reasons,
        "now": iso_utc(now),
        "engine": {
            "started_at": iso_utc(snap.started_at),
            "last_turn_at": iso_utc(snap.turned_at),
            "seconds_since_turn": None if since is None else round(since, 3),
            "turns": snap.turns,
            "ready_queue": snap.ready_queue,
            "in_flight": snap.in_flight,
        },
        "ledger": {"writable": snap.ledger_error is None, "error": snap.ledger_error},
        "diva": {
            "reachable": snap.diva.reachable,
            "detail": snap.diva.detail,
            "checked_at": iso_utc(snap.diva.at),
        },
        "folders": [
            {"watch": f.watch, "observer": f.observer, "health": f.health, "detail": f.detail}
            for f in snap.folders
        ],
        "paused": [{"watch": f.watch, "health": f.health, "reason": f.detail} for f in snap.paused],
    }
    return (200 if not reasons else 503), doc


def rules_in_force(ledger: queries.LedgerAt) -> dict[str, Any] | None:
    """``/healthz``'s ``rules``: the daemon's rules version and any refused edit (as
    ``ingest status --json``'s ``rules_in_force``); None when the ledger cannot say.

    A refused edit does not make the probe fail: the daemon is alive, on its last good
    rules."""
    try:
        with queries.open_ledger(ledger) as conn, queries.errors(ledger):
            return rules_doc(queries.rules_state(conn))
    except LedgerError:
        return None


def status(ledger: queries.LedgerAt, stuck_after: float, now: float) -> dict[str, Any]:
    """``/api/status``: exactly ``ingest status --json``'s document."""
    with queries.open_ledger(ledger) as conn, queries.errors(ledger):
        doc, _raw = collect(conn, ledger, now, stuck_after)
    return doc


def drops(
    ledger: queries.LedgerAt, states: Sequence[str], rules: Sequence[str], limit: int
) -> list[dict[str, Any]]:
    """``/api/drops``: ``ingest ledger list --json``'s records, newest first.

    ``states`` are checked (:class:`~ingest.errors.UsageError` names the valid ones)."""
    wanted = queries.DropFilter(states=queries.validate_states(states), rules=tuple(rules))
    with queries.open_ledger(ledger) as conn, queries.errors(ledger):
        return [queries.drop_record(r) for r in queries.select_drops(conn, wanted, limit=limit)]


def hourly_completed(conn: sqlite3.Connection, now: float, hours: int = 24) -> list[int]:
    """Drops COMPLETED in each of the last ``hours`` clock hours (UTC), oldest first; the
    last one is the hour in progress. A range of the ``(state, finished_at)`` index."""
    first = (int(now) // HOUR - hours + 1) * HOUR
    counts = [0] * hours
    # SQLite's CAST truncates; PostgreSQL's rounds, so it has floor() (which SQLite may lack)
    hour_of = "floor(finished_at / 3600)" if queries.is_pg(conn) else "finished_at / 3600"
    rows = conn.execute(
        f"SELECT CAST({hour_of} AS INTEGER), count(*) FROM drops "  # noqa: S608
        "WHERE state = 'COMPLETED' AND finished_at >= ? GROUP BY 1",
        (first,),
    )
    for hour, count in rows:
        slot = hour - first // HOUR
        if 0 <= slot < hours:
            counts[slot] = count
    return counts


def page_data(
    ledger: queries.LedgerAt, snap: Snapshot, stuck_after: float, now: float
) -> dict[str, Any]:
    """Everything the status page shows, read in one go."""
    rows = defaults.HTTP_PAGE_ROWS
    with queries.open_ledger(ledger) as conn, queries.errors(ledger):
        doc, _raw = collect(conn, ledger, now, stuck_after)
        with queries.snapshot(conn):
            latest = list(queries.select_drops(conn, queries.DropFilter(), limit=rows))
            failed = queries.DropFilter(states=queries.FAILED_STATES)
            failures = list(queries.select_drops(conn, failed, limit=rows))
            hourly = hourly_completed(conn, now)
            scans = {w["watch"]: w["last_scan_at"] for w in overview.watchers(conn)}
    code, healthz = health(snap, now)
    return {
        "status": doc,
        "health": healthz,
        "healthy_code": code,
        "latest": [queries.drop_record(r) for r in latest],
        "failures": [queries.drop_record(r) for r in failures],
        "hourly": hourly,
        "hourly_first": (int(now) // HOUR - len(hourly) + 1) * HOUR,
        "last_scans": {watch: iso_utc(at) for watch, at in scans.items()},
    }
