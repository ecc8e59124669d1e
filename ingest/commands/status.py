"""``ingest status``: what the daemon is doing and whether anything needs a person."""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .. import overview, queries
from ..config import find_config, load_config
from ..errors import LedgerError
from ..report import (
    Column,
    ago,
    ago_span,
    config_option,
    dumps,
    iso_utc,
    local_time,
    output_format,
    render_table,
    style,
    table_width,
    use_colour,
)

__all__ = ["collect", "rules_doc", "status"]

#: How far back ``status`` looks for failures, seconds.
FAILURE_WINDOW_SECONDS = 24 * 3600
#: Rows shown per section of the table (JSON gives as many).
SHOWN = 10
#: ``--watch`` refreshes this often by default, and at most this often, seconds
WATCH_SECONDS = 2.0
WATCH_MIN_SECONDS = 0.1
#: a terminal's cursor home, clear to the end of the line, and of the screen
_HOME, _CLEAR_LINE, _CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


@click.command()
@config_option
@output_format("json")
@click.option(
    "--watch",
    is_flag=True,
    help="Refresh in place every --interval seconds until Ctrl-C (exit 0); with --json, "
    "one document per line.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=WATCH_MIN_SECONDS),
    default=WATCH_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="How often --watch refreshes.",
)
def status(config_path: Path | None, fmt: str, watch: bool, interval: float) -> None:
    """Show the ledger at a glance: counts, requests in flight, what waits, what failed.

    Counts per state and per rule; the requests DIVA is working on with their DIVA
    state and progress; the oldest drop still waiting and why (settling, queued, a
    ready marker, a retry at a given time); the failures of the last 24 hours; the
    health of each watch folder (native events or polling, last scan, paused for a
    mount problem). Reads the ledger without blocking the daemon.

    Exit 0 when healthy; 1 when a drop failed in the last 24 hours, a watcher is
    down or paused, the rule files on disk are invalid (the daemon refused them and
    keeps the rules in force: each problem is named by file, line and key), or DIVA
    has kept a request waiting (queued, for resources, for an operator) longer than
    [diva] stuck_after_seconds (default 4 h), so it can serve as a monitoring check.
    A stuck request is shown, never resubmitted.

    \b
    Example:
      ingest status --config /etc/ingest/ingest.toml
      ingest status --json | jq .failures_24h.count
      ingest status --watch
    """
    config = load_config(find_config(config_path), warn=False)
    path = queries.config_ledger_path(config)
    stuck_after = overview.stuck_after(config)
    if watch:
        _watch(path, stuck_after, fmt, interval)
        return
    with queries.open_ledger(path) as conn, queries.errors(path):
        doc, raw = collect(conn, path, time.time(), stuck_after)
    if fmt == "json":
        click.echo(dumps(doc, indent=2))
    else:
        _print(doc, raw)
    if not doc["healthy"]:
        raise SystemExit(1)


def collect(
    conn: sqlite3.Connection, path: Path | queries.LedgerAt, now: float, stuck_after: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The status document (``--json``'s, and the status page's) and its raw rows."""
    with queries.snapshot(conn):
        stuck_count, stuck = overview.stuck(conn, now - stuck_after, SHOWN)
        pairs = overview.state_rule_counts(conn)
        flying = overview.in_flight(conn, SHOWN * 10)
        waiting = overview.oldest_waiting(conn)
        failed_count, failed = overview.recent_failures(conn, now - FAILURE_WINDOW_SECONDS, SHOWN)
        watcher_rows = overview.watchers(conn)
        rules_row = queries.rules_state(conn)
        mismatch_count, mismatched = overview.checksum_mismatches(conn, SHOWN)
        node_rows, lease_rows = overview.cluster(conn, now)
    states = dict.fromkeys(queries.STATES, 0)
    rules: dict[str, dict[str, int]] = {}
    for state, rule, count in pairs:
        states[state] = states.get(state, 0) + count
        rules.setdefault(rule, dict.fromkeys(queries.STATES, 0))[state] = count
    watchers = [
        {
            "watch": w["watch"],
            "observer": w["observer"],
            "health": w["health"],
            "detail": w["detail"],
            "last_scan_at": iso_utc(w["last_scan_at"]),
            "updated_at": iso_utc(w["updated_at"]),
        }
        for w in watcher_rows
    ]
    nodes, unheld = cluster_doc(node_rows, lease_rows)
    problems = []
    if unheld and any(n["alive"] for n in nodes):
        problems.append(
            f"{len(unheld)} watch folder(s) with no live node holding them: "
            + ", ".join(unheld)
            + " (a node taking them over, or a folder no node's rules name any more)"
        )
    if failed_count:
        problems.append(f"{failed_count} drop(s) failed in the last 24 h")
    for w in watchers:
        if w["health"] != "ok":
            problems.append(f"watcher {w['watch']} is {w['health']}: {w['detail']}")
    in_force = rules_doc(rules_row)
    if in_force is not None and in_force["refused_since"] is not None:
        problems.append(
            f"the rule files on disk are invalid since {in_force['refused_since']}: the "
            f"daemon keeps rules version {in_force['version'][:12]}; "
            + "; ".join(p["text"] for p in in_force["problems"])
        )
    if in_force is not None and in_force["held"]:
        problems.append(
            f"{len(in_force['held'])} file(s) already present, newly matched by a rules edit, "
            f"are held since {in_force['held_since']} until `ingest rules accept` "
            "([rules] confirm_new_matches)"
        )
    if mismatch_count:
        problems.append(
            f"{mismatch_count} archived drop(s) with checksums DIVA reports differently: "
            + ", ".join(f"{r['id']} ({r['path']})" for r in mismatched)
            + " (see `ingest ledger show ID`; `ingest ledger ack ID` once dealt with)"
        )
    if stuck_count:
        problems.append(
            f"{stuck_count} request(s) kept waiting by DIVA for more than {ago_span(stuck_after)}"
            " (stuck: see DIVA's queue; ingest does not resubmit them)"
        )
    waiting_docs = [
        {**queries.drop_record(r), "reason": overview.waiting_reason(r)} for r in waiting
    ]
    doc = {
        "ledger": str(path),
        "ledger_bytes": ledger_bytes(conn, path),
        "now": iso_utc(now),
        "healthy": not problems,
        "problems": problems,
        "total": sum(states.values()),
        "states": states,
        "rules": {name: rules[name] for name in sorted(rules)},
        "in_flight": [queries.drop_record(r) for r in flying],
        "in_flight_total": states.get("SUBMITTED", 0) + states.get("RUNNING", 0),
        "oldest_waiting": waiting_docs[0] if waiting_docs else None,
        "waiting": waiting_docs,
        "failures_24h": {"count": failed_count, "recent": [queries.drop_record(r) for r in failed]},
        "stuck": {
            "after_seconds": stuck_after,
            "count": stuck_count,
            "requests": [queries.drop_record(r) for r in stuck],
        },
        "watchers": watchers,
        "nodes": nodes,
        "unheld_folders": unheld,
        "rules_in_force": in_force,
        "checksum_mismatches": {
            "count": mismatch_count,
            "drops": [queries.drop_record(r) for r in mismatched],
        },
    }
    # The rows themselves, with epoch times, for the table's local times.
    raw = {
        "waiting": waiting,
        "failed": failed,
        "flying": flying,
        "watchers": watcher_rows,
        "nodes": node_rows,
        "stuck": stuck,
        "rules": rules_row,
    }
    return doc, raw


def ledger_bytes(conn: sqlite3.Connection, path: Path | queries.LedgerAt) -> int | None:
    """The ledger's size on disk: an SQLite file with its WAL, or the PostgreSQL
    database; None when it cannot be told (pruning is what makes it smaller)."""
    try:
        if queries.is_pg(conn):
            return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
        if isinstance(path, Path):
            return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    except (OSError, sqlite3.Error):
        pass
    return None


def _bytes(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def cluster_doc(
    node_rows: list[Any], lease_rows: list[Any]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The nodes sharing the ledger (each with the folders it holds) and the folders no
    live node holds; both empty on a single node's ledger."""
    held: dict[str, list[str]] = {}
    for lease in lease_rows:
        if lease["live"] and lease["holder"] is not None:
            held.setdefault(lease["holder"], []).append(lease["watch"])
    nodes = [
        {
            "name": n["name"],
            "host": n["host"],
            "pid": n["pid"],
            "last_heartbeat": iso_utc(n["heartbeat_at"]),
            "alive": bool(n["alive"]),
            "folders": held.get(n["name"], []),
        }
        for n in node_rows
    ]
    unheld = [lease["watch"] for lease in lease_rows if not lease["live"]]
    return nodes, unheld


def rules_doc(row: sqlite3.Row | None) -> dict[str, Any] | None:
    """The daemon's word on its rules: the version in force, and any refused edit."""
    if row is None:
        return None
    problems = json.loads(row["problems"]) if row["problems"] else []
    return {
        "version": row["version"],
        "loaded_at": iso_utc(row["loaded_at"]),
        "refused_since": iso_utc(row["refused_since"]),
        "problems": [
            {k: p.get(k) for k in ("file", "line", "rule", "key", "message", "text")}
            for p in problems
        ],
        "updated_at": iso_utc(row["updated_at"]),
        "held": json.loads(row["held"]) if row["held"] else [],
        "held_since": iso_utc(row["held_since"]),
    }


def _watch(path: queries.LedgerAt, stuck_after: float, fmt: str, interval: float) -> None:
    """``--watch``: the status again every ``interval`` seconds until Ctrl-C.

    On a terminal each refresh is drawn over the last one (cursor home, each line cleared
    to its end, then the rest of the screen), so it does not flicker; elsewhere (a pipe, a
    log) the refreshes follow one another. A ledger that cannot be read is said in the
    frame and looked at again: a daemon being restarted does not end the watch."""
    terminal = sys.stdout.isatty()
    colour = use_colour(sys.stdout)
    # Ctrl-C (or a SIGTERM from a supervisor) ends the watch, even when started with
    # SIGINT ignored (a script's background job, nohup): Python installs no handler then.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            now = time.time()
            lines: list[str] = []
            try:
                with queries.open_ledger(path) as conn, queries.errors(path):
                    doc, raw = collect(conn, path, now, stuck_after)
            except LedgerError as exc:
                doc, raw = None, {}
                lines.append(f"cannot read the ledger: {exc}")
            if fmt == "json":
                click.echo(dumps(doc if doc is not None else {"error": lines[0]}))
            else:
                lines.insert(
                    0, f"ingest status at {local_time(now, seconds=True)}, every {interval:g} s "
                    "(Ctrl-C to stop)",
                )  # fmt: skip
                if doc is not None:
                    _print(doc, raw, colour=colour, echo=lines.append)
                if terminal:
                    # Written as is: click.echo would strip the control sequences with
                    # the colours when colour is off (NO_COLOR).
                    frame = "".join(f"{line}{_CLEAR_LINE}\n" for line in lines)
                    sys.stdout.write(_HOME + frame + _CLEAR_BELOW)
                else:
                    click.echo("\n".join(lines) + "\n")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends: exit 0


def _print(
    doc: dict[str, Any],
    raw: dict[str, Any],
    *,
    colour: bool | None = None,
    echo: Callable[[str], object] = click.echo,
) -> None:
    colour = use_colour(sys.stdout) if colour is None else colour
    width = table_width()
    total = doc["total"]
    verdict = "healthy" if doc["healthy"] else "NEEDS ATTENTION"
    head = style(verdict, colour, "OK" if doc["healthy"] else "FAIL", bold=True)
    echo(f"{head}: {total:,} drop{'s' if total != 1 else ''} in the ledger")
    size = doc.get("ledger_bytes")
    echo(f"ledger: {doc['ledger']}" + ("" if size is None else f" ({_bytes(size)})"))
    for problem in doc["problems"]:
        echo("  " + style("!", colour, "FAIL") + " " + problem)

    shown = [(s, n) for s, n in doc["states"].items() if n]
    echo("")
    if shown:
        parts = [f"{style(s, colour)} {n:,}" for s, n in shown]
        echo(_wrap("states: ", parts, width))
    else:
        echo("states: no drops yet")

    if doc["rules"]:
        echo("")
        columns = [
            Column("RULE", min=8, max=40),
            Column("WAITING", align="right"),
            Column("IN FLIGHT", align="right"),
            Column("COMPLETED", align="right"),
            Column("FAILED", align="right"),
            Column("SKIPPED", align="right"),
            Column("TOTAL", align="right"),
        ]
        rows = []
        for name, counts in doc["rules"].items():
            waiting = sum(counts[s] for s in ("DETECTED", "SUBMITTING", "RETRY_WAIT"))
            flying = counts["SUBMITTED"] + counts["RUNNING"]
            failed = counts["FAILED"] + counts["REJECTED"]
            values = [waiting, flying, counts["COMPLETED"], failed, counts["SKIPPED"]]
            rows.append([name, *(f"{v:,}" for v in values), f"{sum(counts.values()):,}"])
        for line in render_table(columns, rows, width=width, colour=colour):
            echo(line)

    echo("")
    flying = raw["flying"]
    n = doc["in_flight_total"]
    echo(f"in flight: {n:,} request{'s' if n != 1 else ''}" + (":" if n else ""))
    if flying:
        columns = [
            Column("ID", align="right"),
            Column("RULE", max=20),
            Column("OBJECT", min=8, cut="left"),
            Column("REQUEST", align="right"),
            Column("DIVA STATE", min=8, max=20),
            Column("PROGRESS", align="right"),
            Column("SUBMITTED", min=16, max=16),
        ]
        rows = [
            [
                r["id"],
                r["rule"],
                r["object_name"] or r["path"],
                r["request_id"] or "",
                r["diva_state"] or r["state"],
                "" if r["progress"] is None else f"{r['progress']}%",
                local_time(r["submitted_at"]),
            ]
            for r in flying[:SHOWN]
        ]
        for line in render_table(columns, rows, width=width, colour=colour):
            echo("  " + line if line else line)
        if n > SHOWN:
            echo(f"  ... and {n - SHOWN:,} more (ingest ledger list --state RUNNING)")

    if raw["stuck"]:
        echo("")
        count = doc["stuck"]["count"]
        echo(style(f"stuck: {count:,}", colour, "FAIL") + " request(s) DIVA keeps waiting:")
        for r in raw["stuck"]:
            echo(
                f"  #{r['id']} {r['rule']} {r['object_name'] or r['path']}: request "
                f"{r['request_id']} {r['diva_state'] or ''} since "
                f"{local_time(r['waiting_since'])} ({ago(r['waiting_since'])})"
            )

    echo("")
    waiting = raw["waiting"]
    if waiting:
        oldest = waiting[0]
        echo(
            f"oldest waiting: #{oldest['id']} {oldest['rule']} {oldest['path']}, detected "
            f"{local_time(oldest['detected_at'], seconds=True)} "
            f"({ago(oldest['detected_at'])})"
        )
        echo(f"  why: {overview.waiting_reason(oldest)}")
    else:
        echo("oldest waiting: nothing waits")

    echo("")
    count = doc["failures_24h"]["count"]
    label = style(f"{count:,}", colour, "FAIL" if count else "OK")
    echo(f"failures in the last 24 h: {label}" + (":" if count else ""))
    if count:
        columns = [
            Column("ID", align="right"),
            Column("STATE", min=6),
            Column("RULE", max=20),
            Column("PATH", min=10, cut="left"),
            Column("FINISHED", min=16, max=16),
            Column("WHY", min=10),
        ]
        rows = [
            [
                r["id"],
                r["state"],
                r["rule"],
                r["path"],
                local_time(r["finished_at"]),
                _why(r),
            ]
            for r in raw["failed"]
        ]
        for line in render_table(columns, rows, width=width - 2, colour=colour):
            echo("  " + line)
        if count > SHOWN:
            echo(f"  ... and {count - SHOWN:,} more: ingest ledger list --state FAILED --since 24h")

    echo("")
    if raw["watchers"]:
        echo("watchers:")
        columns = [
            Column("WATCH", min=12, cut="left"),
            Column("OBSERVER", min=7),
            Column("HEALTH", min=6, colour=True),
            Column("LAST SCAN", min=16, max=16),
            Column("DETAIL", min=8),
        ]
        rows = [
            [w["watch"], w["observer"], w["health"], local_time(w["last_scan_at"]), w["detail"]]
            for w in raw["watchers"]
        ]
        for line in render_table(columns, rows, width=width - 2, colour=colour):
            echo("  " + line)
    else:
        echo("watchers: none recorded (has `ingest run` started?)")

    if doc["nodes"]:
        echo("")
        echo("nodes:")
        columns = [
            Column("NODE", min=6),
            Column("HOST", min=6),
            Column("LAST HEARTBEAT", min=19, max=19),
            Column("STATE", min=5, colour=True),
            Column("FOLDERS", min=8, cut="left"),
        ]
        rows = []
        for n, r in zip(doc["nodes"], raw["nodes"], strict=True):
            beat = local_time(r["heartbeat_at"], seconds=True)
            state = "alive" if n["alive"] else "gone"
            folders = n["folders"] or ["-"]
            # One line a folder: paths are long, and the node's held set is the point.
            rows.append([n["name"], n["host"], beat, state, folders[0]])
            rows.extend(["", "", "", "", folder] for folder in folders[1:])
        for line in render_table(columns, rows, width=width - 2, colour=colour):
            echo("  " + line)
        for watch in doc["unheld_folders"]:
            echo("  " + style("!", colour, "FAIL") + f" {watch}: no live node holds it")

    rules, row = doc["rules_in_force"], raw["rules"]
    if rules is not None:
        echo("")
        loaded = local_time(row["loaded_at"], seconds=True)
        echo(f"rules: version {rules['version'][:12]} in force since {loaded}")
        if row["refused_since"] is not None:
            since = local_time(row["refused_since"], seconds=True)
            echo(
                "  "
                + style("!", colour, "FAIL")
                + f" the rule files on disk are invalid since {since} "
                f"({ago(row['refused_since'])}); the daemon keeps the rules above:"
            )
            for problem in rules["problems"]:
                echo(f"    {problem['text']}")
        if rules["held"]:
            since = local_time(row["held_since"], seconds=True)
            echo(
                "  "
                + style("!", colour, "FAIL")
                + f" held since {since} until `ingest rules accept` (newly matched by an edit):"
            )
            for item in rules["held"][:SHOWN]:
                echo(f"    {item['watch']}/{item['path']} (rule {item['rule']!r})")
            if len(rules["held"]) > SHOWN:
                echo(f"    ... and {len(rules['held']) - SHOWN} more (--json lists all)")


def _why(row: sqlite3.Row) -> str:
    parts = [row["error"] or ""]
    if row["status_name"] and row["status_name"] not in parts[0]:
        parts.append(str(row["status_name"]))
    if row["abort_reason"] and row["abort_reason"] not in parts[0]:
        parts.append(str(row["abort_reason"]))
    return "; ".join(p for p in parts if p) or (row["diva_state"] or "")


def _wrap(prefix: str, parts: list[str], width: int) -> str:
    # Colour codes do not take room on screen: measure the text without them.
    lines, line, seen = [], prefix, len(prefix)
    for part in parts:
        visible = len(click.unstyle(part))
        if seen > len(prefix) and seen + 3 + visible > width:
            lines.append(line)
            line, seen = " " * len(prefix) + part, len(prefix) + visible
        else:
            sep = " · " if seen > len(prefix) else ""
            line, seen = line + sep + part, seen + len(sep) + visible
    lines.append(line)
    return "\n".join(lines)
