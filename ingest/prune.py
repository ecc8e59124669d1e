"""Retention: remove old final drops and their history, exported first (``ingest ledger
prune``, and ``[ledger] keep_days`` in the daemon).

Safety, in order: a drop is a candidate only when final, finished before the cutoff, with
no unacknowledged checksum mismatch, and with no file left in its watch folder (COMPLETED
with its sources deleted, ``files_gone_at`` set, or another final state whose path is
gone from a folder that can be read). Every candidate goes to the export file, which is
written and fsynced before any row is deleted. Deletion runs in batches of one
transaction each, so a running daemon waits at most one batch, and a crash leaves every
batch whole or undone. Each batch deletes a drop only if it still qualifies (an operator
may have requeued it since the export). Space is then returned: incremental vacuum on
SQLite, VACUUM on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import sqlite3
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .drop import absent
from .ledger import Ledger
from .queries import RECORD_FIELDS, drop_record
from .report import dumps, write_csv
from .states import FINAL_STATES

__all__ = ["EXPORT_SUFFIXES", "Pruned", "export_format", "ledger_size", "prune"]

#: rows per transaction: small enough that the daemon never waits long for the lock
BATCH_SIZE = 500

#: the export's format by the file's suffix
EXPORT_SUFFIXES = {".csv": "csv", ".jsonl": "nl", ".ndjson": "nl"}


@dataclass(frozen=True)
class Pruned:
    """What a prune did (or, ``dry_run``, would do)."""

    exported: int  # drops written to the export
    deleted: int  # drops removed (0 on a dry run)
    transitions: int  # their transitions removed
    kept_files_remain: int  # final and old, but a file of theirs is still there
    dry_run: bool
    vacuum: str  # how space was returned, or why not


def export_format(path: Path) -> str:
    """The export format named by ``path``'s suffix: csv or nl (JSON lines)."""
    fmt = EXPORT_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        names = ", ".join(sorted(EXPORT_SUFFIXES))
        raise ValueError(f"{path}: the export file must end in one of {names}")
    return fmt


def _qualifies(states: Sequence[str]) -> str:
    """The SQL a candidate meets, parameters: the cutoff (epoch seconds)."""
    names = ", ".join(f"'{s}'" for s in sorted(states))
    return (
        f"state IN ({names}) AND finished_at IS NOT NULL AND finished_at < ? "
        "AND (checksum_mismatch IS NULL OR checksum_acked_at IS NOT NULL)"
    )


def _files_gone(row: dict[str, Any]) -> bool:
    """Whether a final drop left nothing in its folder (a folder unread keeps it)."""
    if row["state"] == "COMPLETED" and row["source_deleted"]:
        return True
    if row.get("files_gone_at") is not None:
        # Two sweeps found them gone, or a newer drop took the path: the file there now
        # is that drop's, not this one's (which its path alone would keep for ever).
        return True
    watch = row["watch"]
    if not os.path.isdir(watch):
        return False  # not mounted here, or gone: it cannot be known, so it is kept
    # Only "no such file" is gone: a folder the pruning user cannot search keeps it.
    return absent(os.path.join(watch, *row["path"].split("/")))


def _candidates(
    ledger: Ledger, where: str, before: float, counts: list[int]
) -> Iterator[dict[str, Any]]:
    """The drops to prune, oldest first, each with its transitions; read in pages."""
    last = 0
    with ledger.connect() as raw:
        page_sql = ledger.sql(
            f"SELECT * FROM drops WHERE id > ? AND {where} ORDER BY id LIMIT {BATCH_SIZE}",  # noqa: S608
        )
        while True:
            cur = raw.execute(page_sql, (last, before))
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            if not rows:
                return
            last = rows[-1]["id"]
            kept = [r for r in rows if _files_gone(r)]
            counts[0] += len(rows) - len(kept)
            if not kept:
                continue
            marks = ", ".join("?" for _ in kept)
            steps = raw.execute(
                ledger.sql(
                    "SELECT drop_id, at, from_state, to_state, detail FROM transitions "  # noqa: S608
                    f"WHERE drop_id IN ({marks}) ORDER BY id",
                ),
                [r["id"] for r in kept],
            ).fetchall()
            by_drop: dict[int, list[dict[str, Any]]] = {}
            for drop_id, at, from_state, to_state, detail in steps:
                by_drop.setdefault(drop_id, []).append(
                    {"at": at, "from": from_state, "to": to_state, "detail": detail}
                )
            raw.rollback()  # end the read transaction: no snapshot held between pages
            for row in kept:
                row["transitions"] = by_drop.get(row["id"], [])
                yield row


def _record(row: dict[str, Any]) -> dict[str, Any]:
    record = drop_record({k: row.get(k) for k in RECORD_FIELDS})
    record["transitions"] = row["transitions"]
    return record


def _write_export(rows: Iterator[dict[str, Any]], fmt: str, out: TextIO, ids: array[int]) -> int:
    def records() -> Iterator[dict[str, Any]]:
        for row in rows:
            ids.append(row["id"])
            record = _record(row)
            if fmt == "csv":
                record["transitions"] = dumps(record["transitions"])
            yield record

    if fmt == "csv":
        return write_csv(records(), out, (*RECORD_FIELDS, "transitions"))
    count = 0
    for record in records():
        out.write(json.dumps(record, separators=(",", ":"), default=str))
        out.write("\n")
        count += 1
    return count


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(
    ledger: Ledger,
    *,
    before: float,
    export: Path | None,
    states: Sequence[str] = (),
    dry_run: bool = False,
    vacuum: bool = True,
) -> Pruned:
    """Remove the final drops finished before ``before`` (epoch seconds) whose files are
    gone, and their transitions, after writing them to ``export`` (required unless
    ``dry_run``). ``states`` narrows the final states considered."""
    chosen = [s for s in (states or FINAL_STATES) if s in FINAL_STATES]
    if not chosen:
        raise ValueError("prune removes final drops only: " + ", ".join(sorted(FINAL_STATES)))
    where = _qualifies(chosen)
    counts = [0]
    ids: array[int] = array("q")
    rows = _candidates(ledger, where, before, counts)
    if dry_run or export is None:
        if not dry_run:
            raise ValueError("prune needs an export file (--export FILE)")
        exported = sum(1 for _ in rows)
        return Pruned(exported, 0, 0, counts[0], True, "not run (dry run)")
    fmt = export_format(export)
    # A new file only: an export is the one record of what is removed.
    fd = os.open(export, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
        exported = _write_export(rows, fmt, out, ids)
        out.flush()
        os.fsync(out.fileno())
    _fsync_dir(export.resolve().parent)
    deleted = steps = 0
    for start in range(0, len(ids), BATCH_SIZE):
        chunk = list(ids[start : start + BATCH_SIZE])
        marks = ", ".join("?" for _ in chunk)
        # Still final and old (an operator may have requeued one since the export).
        still = f"id IN ({marks}) AND {where}"
        params = (*chunk, before)
        with ledger.batch() as tx:
            raw = tx.conn
            # The first statement writes: the lock is taken before anything is read.
            drop_steps = ledger.sql(
                f"DELETE FROM transitions WHERE drop_id IN (SELECT id FROM drops WHERE {still})",  # noqa: S608
            )
            steps += raw.execute(drop_steps, params).rowcount
            drops = ledger.sql(f"DELETE FROM drops WHERE {still}")  # noqa: S608
            deleted += raw.execute(drops, params).rowcount
    how = reclaim(ledger) if vacuum and deleted else "nothing to return"
    return Pruned(exported, deleted, steps, counts[0], False, how)


def reclaim(ledger: Ledger) -> str:
    """Return freed pages to the filesystem where the ledger allows it without a long
    lock: an incremental vacuum on SQLite (when the ledger was made with it), VACUUM on
    PostgreSQL (which does not lock out writers)."""
    with ledger.connect() as raw:
        if isinstance(raw, sqlite3.Connection):
            mode = raw.execute("PRAGMA auto_vacuum").fetchone()[0]
            if mode != 2:  # INCREMENTAL
                return (
                    "space kept for reuse: this ledger predates incremental vacuum; "
                    "run `ingest ledger prune --vacuum` once with the daemon stopped"
                )
            raw.execute("PRAGMA incremental_vacuum")
            raw.commit()
            return "incremental vacuum"
        raw.commit()
        raw.autocommit = True  # VACUUM runs outside a transaction
        try:
            raw.execute("VACUUM drops")
            raw.execute("VACUUM transitions")
        finally:
            raw.autocommit = False
        return "VACUUM"


def full_vacuum(ledger: Ledger) -> None:
    """SQLite: switch the ledger to incremental vacuum and rebuild it (one long lock:
    with the daemon stopped); PostgreSQL: VACUUM."""
    with ledger.connect() as raw:
        raw.commit()
        if isinstance(raw, sqlite3.Connection):
            raw.execute("PRAGMA auto_vacuum=INCREMENTAL")
            raw.execute("VACUUM")
            return
    reclaim(ledger)


def ledger_size(ledger: Ledger) -> tuple[int, int, int]:
    """The ledger's bytes on disk (SQLite: the file and its WAL; PostgreSQL: the
    database), and its drops' and transitions' row counts."""
    with ledger.connect() as raw:
        drops = raw.execute("SELECT count(*) FROM drops").fetchone()[0]
        steps = raw.execute("SELECT count(*) FROM transitions").fetchone()[0]
        if isinstance(raw, sqlite3.Connection):
            size = 0
            if ledger.path is not None:
                for suffix in ("", "-wal"):
                    p = Path(f"{ledger.path}{suffix}")
                    size += p.stat().st_size if p.exists() else 0
        else:
            size = raw.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return int(size), int(drops), int(steps)
