"""``ingest ledger list|show|export|prune``: what happened to each drop, read from the ledger."""

from __future__ import annotations

import functools
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from .. import overview, queries
from ..errors import NotFoundError
from ..report import (
    Column,
    config_option,
    dumps,
    iso_utc,
    local_time,
    output_format,
    parse_when,
    quiet_broken_pipe,
    render_table,
    style,
    table_width,
    use_colour,
    write_records,
)
from ..states import FINAL_STATES

__all__ = ["ledger"]

#: Rows a table shows when ``--limit`` is not given.
TABLE_LIMIT = 100


#: components of an archive body listed by ``ledger show`` before "... and N more"
_SHOWN_COMPONENTS = 10


@click.group()
def ledger() -> None:
    """List, show, export and prune the drops recorded in the ledger.

    list, show and export read the ledger read-only and never block the running daemon;
    prune writes in small batches, so the daemon waits for one batch at most.
    Tables show local time; --json, --nl and --csv show ISO 8601 UTC.

    \b
    Example:
      ingest ledger list --state FAILED --since 24h
      ingest ledger show 42
      ingest ledger export --since 30d > audit.csv
      ingest ledger prune --before 365d --export pruned.jsonl
    """


def _filter_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The filters ``list`` and ``export`` share; the command gets ``drop_filter``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        now = time.time()
        since, until = kwargs.pop("since"), kwargs.pop("until")
        kwargs["drop_filter"] = queries.DropFilter(
            states=queries.validate_states(kwargs.pop("states")),
            rules=tuple(kwargs.pop("rules")),
            since=parse_when(since, now) if since else None,
            until=parse_when(until, now) if until else None,
            path_glob=kwargs.pop("path_glob"),
            object_name=kwargs.pop("object_name"),
            rules_versions=tuple(
                queries.rules_version_prefix(v) for v in kwargs.pop("rules_versions")
            ),
        )
        return func(*args, **kwargs)

    options = [
        click.option(
            "--state",
            "states",
            multiple=True,
            metavar="STATE",
            help="Only drops in STATE (repeatable; any case): " + ", ".join(queries.STATES) + ".",
        ),
        click.option("--rule", "rules", multiple=True, help="Only drops of RULE (repeatable)."),
        click.option(
            "--since",
            metavar="WHEN",
            help="Only drops detected at or after WHEN: 24h, 7d, 30m, 2w ago, or an ISO "
            "date/time (local time unless it ends in Z or +HH:MM).",
        ),
        click.option("--until", metavar="WHEN", help="Only drops detected before WHEN."),
        click.option(
            "--path",
            "path_glob",
            metavar="GLOB",
            help="Only drops whose path (relative to the watch folder) matches GLOB "
            "(* ? [abc] [!abc]; * crosses /). A GLOB starting with / matches the absolute path.",
        ),
        click.option("--object", "object_name", metavar="NAME", help="Only the object NAME."),
        click.option(
            "--rules-version",
            "rules_versions",
            multiple=True,
            metavar="VERSION",
            help="Only drops whose archive request was built by rules VERSION (its first "
            "hex digits are enough; repeatable; see `ingest rules history`).",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


_limit_option = click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help=f"At most N drops, newest first (default: {TABLE_LIMIT} in the table, all with "
    "--json, --nl or --csv; 0 means no limit).",
)


@ledger.command("list")
@config_option
@_filter_options
@_limit_option
@output_format("json", "nl", "csv")
@quiet_broken_pipe
def list_(
    config_path: Path | None, drop_filter: queries.DropFilter, limit: int | None, fmt: str
) -> None:
    """List drops, newest first: a table, or every field as JSON, JSON lines or CSV.

    Filters combine (AND); a repeated --state or --rule means any of them. Rows are
    streamed, so a million-row ledger is never loaded into memory. The JSON fields
    are those of the ledger contract: id, rule, watch, path, object_name,
    collection, media, qos, state, diva_state, request_id, status_code, status_name,
    abort_reason, attempts, source_deleted, detected_at, submitted_at, finished_at,
    error, progress and more.

    \b
    Example:
      ingest ledger list --state FAILED --state REJECTED --since 24h
      ingest ledger list --rule news --path '*.mxf' --json
      ingest ledger list --object CLIP_0042 --nl
    """
    if limit == 0:
        limit = None
    elif limit is None and fmt == "table":
        limit = TABLE_LIMIT
    path = queries.ledger_path(config_path)
    with queries.open_ledger(path) as conn, queries.errors(path):
        # One row more than asked tells the table whether it was cut.
        probe = None if limit is None or fmt != "table" else limit + 1
        cursor = queries.select_drops(conn, drop_filter, limit=probe or limit)
        if fmt == "table":
            _table(cursor, limit)
        else:
            records = (queries.drop_record(row) for row in cursor)
            write_records(records, fmt, queries.RECORD_FIELDS, sys.stdout)


def _table(rows: Iterable[sqlite3.Row], limit: int | None) -> None:
    colour = use_colour(sys.stdout)
    columns = [
        Column("ID", align="right"),
        Column("STATE", min=6, colour=True),
        Column("RULE", min=4, max=20),
        Column("PATH", min=10, cut="left"),
        Column("DETECTED", min=16, max=16),
        Column("NOTE", min=8),
    ]
    shown = 0
    cut = False

    def cells() -> Iterator[list[Any]]:
        nonlocal shown, cut
        for row in rows:
            if limit is not None and shown >= limit:
                cut = True
                return
            shown += 1
            yield [
                row["id"],
                row["state"],
                row["rule"],
                row["path"],
                local_time(row["detected_at"]),
                _note(row),
            ]

    for line in render_table(columns, cells(), width=table_width(), colour=colour):
        click.echo(line)
    if shown == 0:
        click.echo("(no drops match)")
    elif cut:
        click.echo(f"(the newest {shown}; --limit N shows more, --limit 0 all)")


def _note(row: sqlite3.Row) -> str:
    """The one thing worth knowing about a drop in its state."""
    state = row["state"]
    if state in ("SUBMITTED", "RUNNING"):
        progress = "" if row["progress"] is None else f" {row['progress']}%"
        return f"request {row['request_id']} {row['diva_state'] or ''}{progress}".strip()
    if state in ("FAILED", "REJECTED"):
        parts = [row["error"] or "", row["status_name"] or "", row["abort_reason"] or ""]
        text = parts[0]
        for extra in parts[1:]:
            if extra and extra not in text:
                text = f"{text}; {extra}" if text else extra
        return text
    if state == "COMPLETED":
        gone = {1: ", source deleted", 0: ", source still there"}.get(row["source_deleted"], "")
        return f"{row['object_name'] or ''}{gone}"
    if state in ("DETECTED", "SUBMITTING", "RETRY_WAIT"):
        return overview.waiting_reason(row)
    return str(row["error"] or "")


@ledger.command()
@click.argument("drop", metavar="ID|PATH")
@config_option
@output_format("json")
def show(drop: str, config_path: Path | None, fmt: str) -> None:
    """Show everything about one drop and its full history.

    ID is the drop's number (as `ledger list` shows it). PATH is the drop's path
    relative to its watch folder, or its absolute path; when the same path was
    recorded several times (re-dropped, retried), the newest drop is shown and the
    others are named. Exit 9 when nothing matches.

    \b
    Example:
      ingest ledger show 42
      ingest ledger show /mnt/nas/news/clip.mxf --json
    """
    path = queries.ledger_path(config_path)
    with queries.open_ledger(path) as conn, queries.errors(path), queries.snapshot(conn):
        rows: list[sqlite3.Row] = []
        if drop.isdigit():
            row = queries.get_drop(conn, int(drop))
            if row is not None:
                rows = [row]
        if not rows:
            rows = queries.find_by_path(conn, drop)
        if not rows:
            what = "drop id or path" if drop.isdigit() else "path"
            raise NotFoundError(
                f"no {what} {drop!r} in the ledger {path}: "
                "see `ingest ledger list --path GLOB` for what is recorded"
            )
        row = rows[0]
        steps = queries.history(conn, row["id"])
    record = queries.drop_record(row)
    body = record.pop("body", None)
    record.pop("mtime_ns", None)
    try:
        record["body"] = json.loads(body) if body else None
    except ValueError:
        record["body"] = body
    others = [r["id"] for r in rows[1:]]
    if fmt == "json":
        record["history"] = [
            {
                "at": iso_utc(s["at"]),
                "from_state": s["from_state"],
                "to_state": s["to_state"],
                "detail": s["detail"],
            }
            for s in steps
        ]
        record["same_path_ids"] = [row["id"], *others]
        click.echo(dumps(record, indent=2))
        return
    _print_drop(row, record, steps, others)


_SHOW_FIELDS = [f for f in queries.RECORD_FIELDS if f not in ("id", "state")]


def _print_drop(
    row: sqlite3.Row, record: dict[str, Any], steps: list[sqlite3.Row], others: list[int]
) -> None:
    colour = use_colour(sys.stdout)
    echo = click.echo
    echo(f"drop {row['id']}: {style(row['state'], colour)}")
    if others:
        echo(
            f"  ({len(others) + 1} drops recorded for this path; this is the newest. "
            f"Older: {', '.join(str(i) for i in others)})"
        )
    for field in _SHOW_FIELDS:
        value = row[field]
        if value is None:
            continue
        if field.endswith("_at"):
            value = f"{local_time(value, seconds=True)}  ({record[field]})"
        elif field == "source_deleted":
            value = "yes" if value else "no"
        elif field == "qos":
            value = f"{value} (0x{value:x})"
        echo(f"  {field:<16}{value}")
    if record.get("body") is not None:
        echo("  archive request body:")
        body = record["body"]
        if isinstance(body, str):
            body = json.loads(body)
        components = body.get("components") if isinstance(body, dict) else None
        if isinstance(components, list) and len(components) > _SHOWN_COMPONENTS:
            # A DPX reel has thousands of frames: the table shows a few, --json shows all.
            more = f"... and {len(components) - _SHOWN_COMPONENTS} more (--json lists all)"
            body = {**body, "components": [*components[:_SHOWN_COMPONENTS], more]}
        text = json.dumps(body, indent=2, ensure_ascii=False)
        for line in text.splitlines():
            echo("    " + line)
    echo("history:")
    width = table_width()
    for step in steps:
        before = step["from_state"] or "(new)"
        head = f"  {local_time(step['at'], seconds=True)}  {before} → {step['to_state']}"
        detail = step["detail"] or ""
        if detail and len(head) + 2 + len(detail) <= width:
            echo(f"{head}  {detail}")
            continue
        echo(head)
        for line in _wrap(detail, width - 6):
            echo("      " + line)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, max(20, width), break_long_words=True) if text else []


@ledger.command()
@config_option
@_filter_options
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="At most N drops, newest first (default: all).",
)
@click.option(
    "--output",
    "-o",
    "output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of standard output.",
)
@output_format("csv", "nl", "json", default="csv")
@quiet_broken_pipe
def export(
    config_path: Path | None,
    drop_filter: queries.DropFilter,
    limit: int | None,
    output: Path | None,
    fmt: str,
) -> None:
    """Export the whole ledger, or a filtered part, for audits: CSV (default) or JSON lines.

    Every field of every matching drop, newest first, streamed: exporting a million
    drops takes little memory and does not hold up the daemon. Takes the same filters
    as `ledger list`. Times are ISO 8601 UTC.

    \b
    Example:
      ingest ledger export > ledger.csv
      ingest ledger export --since 2024-05-01 --until 2024-06-01 --nl -o may.jsonl
    """
    path = queries.ledger_path(config_path)
    with queries.open_ledger(path) as conn, queries.errors(path):
        cursor = queries.select_drops(conn, drop_filter, limit=limit)
        records = (queries.drop_record(row) for row in cursor)
        if output is None:
            write_records(records, fmt, queries.RECORD_FIELDS, sys.stdout)
            return
        with output.open("w", encoding="utf-8", newline="") as out:
            count = write_records(records, fmt, queries.RECORD_FIELDS, out)
        click.echo(f"exported {count:,} drop{'s' if count != 1 else ''} to {output}", err=True)


@ledger.command()
@click.option(
    "--before",
    required=True,
    metavar="WHEN",
    help="Drops finished before then: 90d (ago), or an ISO date or time.",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(sorted(FINAL_STATES), case_sensitive=False),
    help="Only drops in this final state (repeatable; default: every final state).",
)
@click.option(
    "--export",
    "export_to",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The new file the pruned drops are written to first: .csv or .jsonl.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be pruned; change nothing.")
@click.option(
    "--vacuum",
    is_flag=True,
    help="SQLite: rebuild the ledger once for incremental vacuum (stop the daemon first).",
)
@config_option
def prune(
    before: str,
    states: tuple[str, ...],
    export_to: Path | None,
    dry_run: bool,
    vacuum: bool,
    config_path: Path | None,
) -> None:
    """Remove old final drops and their history, exporting them to a file first.

    Never an active drop, nor one with a file still in its watch folder (kept and
    counted), nor one with an unacknowledged checksum mismatch. The export is written
    and fsynced before anything is deleted; deletion runs in small transactions, so a
    running daemon is not held up. Freed space goes back to the filesystem (SQLite:
    incremental vacuum, for ledgers made by this version or after one --vacuum).

    \b
    Example:
      ingest ledger prune --before 365d --dry-run
      ingest ledger prune --before 2025-01-01 --export 2024.jsonl
    """
    from .. import prune as retention
    from ..ledger import Ledger

    if not dry_run and export_to is None:
        raise click.UsageError("--export FILE is required (or --dry-run)")
    if export_to is not None:
        try:
            retention.export_format(export_to)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        if export_to.exists():
            raise click.UsageError(f"{export_to} exists: the export goes to a new file")
    cutoff = parse_when(before)
    path = queries.ledger_path(config_path)
    password = None if isinstance(path, Path) else path.password
    with queries.errors(path):
        store = Ledger.open(queries.ledger_url(path), migrate=False, password=password)
        try:
            if vacuum and not dry_run:
                retention.full_vacuum(store)
            done = retention.prune(
                store,
                before=cutoff,
                export=export_to,
                states=[s.upper() for s in states],
                dry_run=dry_run,
            )
        finally:
            store.close()
    s = "s" if done.exported != 1 else ""
    if done.dry_run:
        click.echo(f"would prune {done.exported:,} drop{s} finished before {iso_utc(cutoff)}")
    else:
        click.echo(
            f"exported {done.exported:,} drop{s} to {export_to}; removed {done.deleted:,} "
            f"and {done.transitions:,} transitions ({done.vacuum})"
        )
    if done.kept_files_remain:
        click.echo(f"kept {done.kept_files_remain:,} old drop(s) whose files remain", err=True)


@ledger.command()
@click.argument("ids", metavar="ID...", nargs=-1, required=True, type=click.IntRange(min=1))
@config_option
def ack(ids: tuple[int, ...], config_path: Path | None) -> None:
    """Acknowledge the checksum mismatch of archived drops, so `ingest status` passes again.

    After a drop whose rule has `checksum` completes, ingest compares its checksums with
    those DIVA's object info reports; a mismatch is recorded (the drop stays COMPLETED)
    and `ingest status` exits 1 until someone has looked (restored and compared, say)
    and acknowledged it here. The mismatch stays on record (`ingest ledger show ID`).
    Exit 1 when an ID has no unacknowledged mismatch.

    \b
    Example:
      ingest ledger ack 42
    """
    path = queries.ledger_path(config_path)
    with queries.open_ledger(path) as conn, queries.errors(path):
        rows = {i: queries.get_drop(conn, i) for i in dict.fromkeys(ids)}
    todo = [i for i, r in rows.items() if r is not None and r["checksum_mismatch"] and
            r["checksum_acked_at"] is None]  # fmt: skip
    if todo:
        # Only here, for a write: the ledger module costs SQLAlchemy's import.
        from ..ledger import Ledger

        password = None if isinstance(path, Path) else path.password
        store = Ledger.open(queries.ledger_url(path), migrate=False, password=password)
        try:
            with store.batch() as tx:
                for drop_id in todo:
                    tx.update(drop_id, checksum_acked_at=time.time())
        finally:
            store.close()
    for drop_id, row in rows.items():
        if drop_id in todo:
            click.echo(f"drop {drop_id}: checksum mismatch acknowledged")
        elif row is None:
            click.echo(f"drop {drop_id}: not found", err=True)
        else:
            click.echo(f"drop {drop_id}: no unacknowledged checksum mismatch", err=True)
    if len(todo) != len(rows):
        raise SystemExit(1)


@ledger.command()
@click.option(
    "--to",
    "to_url",
    required=True,
    metavar="URL",
    help="The PostgreSQL ledger to fill: postgresql://USER@HOST:PORT/DB (an empty database).",
)
@click.option(
    "--password-env",
    metavar="NAME",
    help="The environment variable holding the PostgreSQL password.",
)
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file (owner-only) holding the PostgreSQL password.",
)
@config_option
def copy(
    to_url: str, password_env: str | None, password_file: Path | None, config_path: Path | None
) -> None:
    """Copy this config's SQLite ledger into an empty PostgreSQL ledger.

    For a move from one machine to several nodes sharing PostgreSQL: stop `ingest run`
    first (a running daemon refuses the copy), copy, then point every node's [ledger]
    url at the PostgreSQL. Every drop keeps its id and history; the copy commits whole
    or not at all, and each table's rows are counted on both sides.

    \b
    Example:
      PGPASS=... ingest ledger copy --to postgresql://ingest@db1:5432/ingest \\
          --password-env PGPASS
    """
    from ..config import find_config, load_config
    from ..ledgercopy import copy_ledger
    from ..ledgerurl import redact
    from ..passwords import read_password

    config = load_config(find_config(config_path), warn=False)
    source = config.ledger.path
    if source is None:
        raise click.UsageError("ledger copy: this config's [ledger] is not an SQLite file")
    password = read_password("ledger copy", password_env, password_file)
    copied = copy_ledger(source, to_url, password, config.cluster.node_name())
    parts = ", ".join(f"{n:,} {table}" for table, n in copied.counts.items())
    click.echo(f"copied {source} into {redact(to_url)}: {parts}")
