"""Following the ledger's history: the transitions written since the last look.

``/metrics`` counts transitions with it; notifications (a digest of what failed) and a
live terminal view are meant to read it the same way. It reads through its own read-only
``sqlite3`` connection (:mod:`ingest.queries`), so it never blocks nor waits for the
engine, and each look costs the transitions since the previous one (the primary key).

    follower = Follower(ledger_path)          # from now on
    for step in follower.new():               # later, and again
        print(step.rule, step.path, step.to_state)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from . import queries

__all__ = ["Follower", "Step"]

#: transitions read per query (a first look after a burst reads in chunks)
CHUNK_ROWS = 20_000


@dataclass(frozen=True)
class Step:
    """One transition, with what its drop says about it now."""

    id: int
    drop_id: int
    at: float  # epoch seconds
    from_state: str | None
    to_state: str
    detail: str
    rule: str
    watch: str
    path: str
    settled_at: float | None
    status_code: int | None


class Follower:
    """The transitions after the last one seen; not thread-safe (lock around it)."""

    def __init__(self, ledger: queries.LedgerAt, *, from_start: bool = False) -> None:
        self.ledger = ledger
        self.seen = 0
        if not from_start:
            with queries.open_ledger(ledger) as conn, queries.errors(ledger):
                self.seen = conn.execute("SELECT coalesce(max(id), 0) FROM transitions").fetchone()[
                    0
                ]

    def __repr__(self) -> str:
        return f"<Follower {self.ledger} after {self.seen}>"

    def new(self) -> Iterator[Step]:
        """Every transition written since the last call (or since construction), in order."""
        with queries.open_ledger(self.ledger) as conn, queries.errors(self.ledger):
            while True:
                rows = conn.execute(
                    "SELECT t.id, t.drop_id, t.at, t.from_state, t.to_state, t.detail, d.rule, "
                    "d.watch, d.path, d.settled_at, d.status_code FROM transitions t "
                    "JOIN drops d ON d.id = t.drop_id WHERE t.id > ? ORDER BY t.id LIMIT ?",
                    (self.seen, CHUNK_ROWS),
                ).fetchall()
                for row in rows:
                    step = Step(*row)
                    self.seen = step.id
                    yield step
                if len(rows) < CHUNK_ROWS:
                    return
