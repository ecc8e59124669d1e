"""8. The ledger's hot paths on PostgreSQL against SQLite, in the same run.

Each backend as production runs it: SQLite in WAL with ``synchronous=FULL`` on a local
file, PostgreSQL 15 on loopback with fsync on (a throwaway server, started here). Through
:class:`ingest.ledger.Ledger`, as the engine calls it:

- intent commit: one transaction holding one drop's SUBMITTING transition (the write that
  must be durable before DIVA is called), committed alone, N times; p50 and p99;
- burst: N drops detected in one transaction (the engine's turn after a burst); drops/s;
- known-path load: ``settled_by_path`` over those N drops (a scan's start-up); seconds.

Baseline: SQLite's figures. The ratio is PostgreSQL's intent-commit p50 over SQLite's: a
commit on PostgreSQL is a round trip to the server plus its WAL flush, where SQLite's is a
local fsync. No target: the figures say what the backend allows on this machine.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from ingest.ledger import Ledger, State

from .common import Result, median, percentile, workdir

NAME = "ledger_backends"
SIZES = {"full": 2_000, "quick": 200}


def _measure(ledger: Ledger, n: int) -> dict[str, float]:
    watch = "/bench/watch"
    start = time.perf_counter()
    with ledger.batch() as tx:
        ids = [
            tx.add(rule="r", watch=watch, path=f"f{i:06d}.mxf", size=1000 + i, mtime_ns=i)
            for i in range(n)
        ]
    burst_s = time.perf_counter() - start
    commits: list[float] = []
    for drop_id in ids:
        start = time.perf_counter()
        with ledger.batch() as tx:
            tx.transition(drop_id, State.DETECTED, State.SUBMITTING, "intent", object_name="o")
        commits.append(time.perf_counter() - start)
    with ledger.batch() as tx:
        for drop_id in ids:
            tx.transition(drop_id, State.SUBMITTING, State.COMPLETED, "done")
    start = time.perf_counter()
    known = ledger.settled_by_path(watch)
    known_s = time.perf_counter() - start
    assert len(known) == n
    return {
        "intent_p50_ms": round(median(commits) * 1000, 3),
        "intent_p99_ms": round(percentile(commits, 99) * 1000, 3),
        "burst_drops_per_s": round(n / burst_s),
        "known_paths_s": round(known_s, 4),
    }


def run(size: int) -> Result:
    from tests.support.postgres import PASSWORD, server_bin, start_server

    notes: list[str] = []
    with workdir(NAME) as root:
        sqlite = Ledger.open(f"sqlite:///{root / 'ledger.db'}")
        try:
            base = _measure(sqlite, size)
        finally:
            sqlite.close()
        if server_bin() is None:
            if os.environ.get("CI") == "true":
                raise RuntimeError("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
            notes.append("no PostgreSQL server here: SQLite only")
            figures: dict[str, Any] = {}
        else:
            server = start_server(durable=True)
            try:
                ledger = Ledger.open(server.create_database(), password=PASSWORD)
                try:
                    figures = _measure(ledger, size)
                finally:
                    ledger.close()
            finally:
                server.stop("immediate")
                shutil.rmtree(server.root, ignore_errors=True)
            notes.append("PostgreSQL 15 on 127.0.0.1, fsync on; SQLite WAL, synchronous=FULL")
    ratio = None
    if figures and base["intent_p50_ms"]:
        ratio = round(figures["intent_p50_ms"] / base["intent_p50_ms"], 2)
    return Result(
        name=NAME,
        size={"drops": size},
        figures={f"pg_{k}": v for k, v in figures.items()},
        baseline={f"sqlite_{k}": v for k, v in base.items()},
        ratio=ratio,
        target="none: PostgreSQL against SQLite (ratio: intent-commit p50)",
        met=None,
        notes=notes,
    )
