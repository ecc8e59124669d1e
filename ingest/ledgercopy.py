"""``ingest ledger copy --to URL``: an SQLite ledger into PostgreSQL, for a user moving
from one machine to several.

The copy is whole or nothing: the target must be an empty PostgreSQL ledger (migrated
here, as the daemon would), every table of drops, history and rules goes over in one
transaction through PostgreSQL's COPY, ids kept (``ingest ledger show 42`` still shows
drop 42) and the sequences moved past them, and each table's row count is compared
before it commits. The source is held as a running daemon holds it (:mod:`ingest.nodes`):
a daemon still at work on it refuses the copy, which would miss its last writes.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .errors import LedgerError
from .ledger import Ledger
from .nodes import NodeLock

__all__ = ["Copied", "copy_ledger"]

#: the tables copied, parents first; nodes and leases belong to the running cluster
TABLES = ("drops", "transitions", "watchers", "rules_versions", "rules_state")
#: the tables whose key a sequence numbers on PostgreSQL
_SEQUENCED = ("drops", "transitions", "rules_state")


@dataclass(frozen=True)
class Copied:
    """Rows copied, by table."""

    counts: dict[str, int]


def copy_ledger(source: Path, target_url: str, password: str | None, node: str) -> Copied:
    """Copy the SQLite ledger ``source`` into the empty PostgreSQL ledger at ``target_url``.

    Raises :class:`LedgerError` (the target not PostgreSQL or not empty, the source in
    use by a daemon) or :class:`~ingest.errors.ConfigError` (the target unreachable).
    """
    if not target_url.startswith("postgresql://"):
        raise LedgerError("ledger copy --to: the target must be postgresql://USER@HOST:PORT/DB")
    if not source.exists():
        raise LedgerError(f"ledger copy: no ledger at {source}")
    lock = NodeLock.acquire(source, f"{node} (ingest ledger copy)")
    try:
        # Brought up to this version's schema first, as a start of the daemon would.
        Ledger.open(f"sqlite:///{source}").close()
        target = Ledger.open(target_url, password=password)
        try:
            return _copy(source, target)
        finally:
            target.close()
    finally:
        lock.release()


def _copy(source: Path, target: Ledger) -> Copied:
    counts: dict[str, int] = {}
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src:
        with target.begin() as pg:
            for table in TABLES:
                found = pg.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
                if found:
                    raise LedgerError(
                        f"ledger copy: the target {target.where} is not empty ({found} rows "
                        f"in {table}): copy into a new database"
                    )
            for table in TABLES:
                counts[table] = _copy_table(src, pg, table)
            for table in _SEQUENCED:
                key = "id"
                pg.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{key}'), "  # noqa: S608
                    f"(SELECT COALESCE(max({key}), 0) + 1 FROM {table}), false)"
                )
            for table, count in counts.items():
                landed = pg.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
                if landed != count:
                    raise LedgerError(
                        f"ledger copy: {table}: {count} rows read but {landed} written"
                    )
    return Copied(counts)


def _copy_table(src: sqlite3.Connection, pg: object, table: str) -> int:
    cursor = src.execute(f"SELECT * FROM {table}")  # noqa: S608 - names from TABLES
    columns = [d[0] for d in cursor.description]
    names = ", ".join(columns)
    count = 0
    with pg.cursor() as out, out.copy(f"COPY {table} ({names}) FROM STDIN") as copy:  # type: ignore[attr-defined]
        for row in cursor:
            copy.write_row(row)
            count += 1
    return count
