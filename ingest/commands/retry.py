"""``ingest retry``: put failed or rejected drops back in the daemon's queue."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .. import queries
from ..errors import CANNOT_CONFIRM, UsageError
from ..report import config_option, dumps, output_format, style, use_colour

__all__ = ["retry"]

#: What an operator may retry: by id also SKIPPED (e.g. on_conflict=skip, then fixed).
RETRYABLE: tuple[str, ...] = ("FAILED", "REJECTED")
RETRYABLE_BY_ID: tuple[str, ...] = ("FAILED", "REJECTED", "SKIPPED")
DETAIL = "retry requested by an operator"


@dataclass
class Outcome:
    """What ``retry`` did with one drop."""

    drop_id: int
    outcome: str  # requeued | not found | files gone | not retryable | superseded | changed
    message: str
    row: sqlite3.Row | None = None

    @property
    def requeued(self) -> bool:
        return self.outcome in ("requeued", "would requeue")

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.drop_id, "outcome": self.outcome}
        doc["message"] = self.message
        if self.row is not None:
            doc |= {"rule": self.row["rule"], "path": self.row["path"], "state": self.row["state"]}
        return doc


@click.command()
@click.argument("ids", nargs=-1, type=int, metavar="[ID]...")
@click.option(
    "--failed",
    "all_failed",
    is_flag=True,
    help="Retry every FAILED and REJECTED drop (the newest of each path).",
)
@click.option("--rule", "rules", multiple=True, help="With --failed: only drops of RULE.")
@click.option("--dry-run", is_flag=True, help="Say what would be requeued; change nothing.")
@config_option
@output_format("json")
def retry(
    ids: tuple[int, ...],
    all_failed: bool,
    rules: tuple[str, ...],
    dry_run: bool,
    config_path: Path | None,
    fmt: str,
) -> None:
    """Put FAILED or REJECTED drops back in the queue, if their files are still there.

    By ID (as `ingest ledger list` shows it; SKIPPED drops too), or every failed
    drop with --failed (optionally only those of --rule). A drop is requeued only
    when its file or folder still exists and no newer drop was recorded for the same
    path. The running daemon picks requeued drops up within seconds and submits them
    again with a fresh count of attempts. Says what it did for each drop: requeued,
    not found, files gone, not in a retryable state. Exit 0 when every drop was
    requeued, 1 when some were not.

    \b
    Example:
      ingest retry 42 43
      ingest retry --failed --rule news --dry-run
    """
    if ids and all_failed:
        raise UsageError("give drop IDs or --failed, not both")
    if not ids and not all_failed:
        raise UsageError("give the IDs of the drops to retry, or --failed")
    if rules and not all_failed:
        raise UsageError("--rule goes with --failed")
    path = queries.ledger_path(config_path)
    outcomes = _plan(path, ids, rules, all_failed)
    if not dry_run:
        _apply(path, outcomes)
    else:
        for o in outcomes:
            if o.outcome == "requeued":
                o.outcome, o.message = "would requeue", "would be requeued (dry run)"
    _report(outcomes, fmt, all_failed)
    if not all(o.requeued for o in outcomes):
        raise SystemExit(1)


def _plan(
    path: queries.LedgerAt, ids: tuple[int, ...], rules: tuple[str, ...], all_failed: bool
) -> list[Outcome]:
    """Decide per drop from a read-only look; nothing is locked while files are checked."""
    outcomes: list[Outcome] = []
    with queries.open_ledger(path) as conn, queries.errors(path):
        if all_failed:
            f = queries.DropFilter(states=RETRYABLE, rules=rules)
            candidates = list(queries.select_drops(conn, f))
            allowed: tuple[str, ...] = RETRYABLE
        else:
            candidates = []
            for drop_id in dict.fromkeys(ids):
                row = queries.get_drop(conn, drop_id)
                if row is None:
                    outcomes.append(Outcome(drop_id, "not found", "no such drop in the ledger"))
                else:
                    candidates.append(row)
            allowed = RETRYABLE_BY_ID
        for row in candidates:
            if row["state"] not in allowed:
                what = ", ".join(allowed)
                outcomes.append(
                    Outcome(
                        row["id"],
                        "not retryable",
                        f"not in a retryable state: {row['state']} (retry takes {what})",
                        row,
                    )
                )
                continue
            newer = queries.newer_for_path(conn, row)
            if newer is not None:
                if all_failed:
                    continue  # an old failure the daemon has since dealt with
                outcomes.append(
                    Outcome(
                        row["id"],
                        "superseded",
                        f"a newer drop {newer['id']} ({newer['state']}) exists for this path",
                        row,
                    )
                )
                continue
            gone = _files_gone(row)
            if gone and not _unconfirmed(row):
                outcomes.append(Outcome(row["id"], "files gone", gone, row))
                continue
            # Files gone after an archive call that may have reached DIVA is what success
            # looks like: the daemon asks DIVA before anything else.
            why = f"requeued ({gone}: DIVA will be asked whether it archived it)" if gone else ""
            outcomes.append(Outcome(row["id"], "requeued", why or "requeued", row))
    order = {drop_id: i for i, drop_id in enumerate(ids)}
    outcomes.sort(key=lambda o: order.get(o.drop_id, -o.drop_id))
    return outcomes


def _unconfirmed(row: sqlite3.Row) -> bool:
    """Whether the drop FAILED not knowing if its archive call reached DIVA."""
    return str(row["error"] or "").startswith(CANNOT_CONFIRM)


def _files_gone(row: sqlite3.Row) -> str | None:
    where = os.path.join(row["watch"], row["path"])
    if row["kind"] == "folder":
        if os.path.isdir(where):
            return None
        return f"the folder {where} is gone"
    if os.path.isfile(where):
        return None
    return f"the file {where} is gone"


def _apply(path: queries.LedgerAt, outcomes: list[Outcome]) -> None:
    """Requeue the planned drops in one write transaction, each only if still as seen."""
    todo = {o.drop_id: o for o in outcomes if o.outcome == "requeued" and o.row is not None}
    if not todo:
        return
    # Only here, for a write: the ledger module costs SQLAlchemy's import (a third of a
    # second), which the read-only look above and a dry run do without.
    from ..ledger import Ledger

    password = None if isinstance(path, Path) else path.password
    ledger = Ledger.open(queries.ledger_url(path), migrate=False, password=password)
    try:
        seen = {i: o.row["state"] for i, o in todo.items() if o.row is not None}
        done = ledger.requeue(seen, DETAIL)
    finally:
        ledger.close()
    for drop_id, o in todo.items():
        if drop_id in done:
            o.message = f"{o.message} (was {seen[drop_id]})"
        else:
            o.outcome, o.message = "changed", "its state changed meanwhile; not touched"


def _report(outcomes: list[Outcome], fmt: str, all_failed: bool) -> None:
    if fmt == "json":
        click.echo(dumps({"drops": [o.as_dict() for o in outcomes]}, indent=2))
        return
    if not outcomes:
        click.echo("nothing to retry: no FAILED or REJECTED drops" if all_failed else "")
        return
    colour = use_colour()
    for o in outcomes:
        key = "OK" if o.requeued else "FAIL"
        where = f" {o.row['rule']} {o.row['path']}" if o.row is not None else ""
        click.echo(f"{style(o.outcome, colour, key)}: drop {o.drop_id}{where}: {o.message}")
    done = sum(o.requeued for o in outcomes)
    click.echo(f"{done} of {len(outcomes)} requeued")
