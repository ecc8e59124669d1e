"""8. The ledger's hot paths on PostgreSQL against SQLite, in the same run.

Each backend as production runs it: SQLite in WAL with ``synchronous=FULL`` on a local
file, PostgreSQL 15 on loopback with fsync on (a throwaway server, started here). Through
:class:`ingest.ledger.Ledger`, as the engine calls it:

- intent commit: one transaction holding one drop's SUBMITTING transition (the write that
  must be durable before DIVA is called), committed alone, N times; p50 and p99;
- burst: N drops detected in one transaction (the engine's turn after a burst); drops/s;
- known-path load: ``settled_by_path`` over those N drops (a scan's start-up); seconds;
- engine burst: the real engine (in a thread) against the emulator, N files renamed into
  its watch folder at once, as the ``burst`` benchmark does; from the files being stable
  to the last archive request reaching DIVA, in submissions per second.

Baseline: SQLite's figures. The ratio is PostgreSQL's intent-commit p50 over SQLite's: a
commit on PostgreSQL is a round trip to the server plus its WAL flush, where SQLite's is a
local fsync. No target: the figures say what the backend allows on this machine.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from ingest.ledger import Ledger, State

from .burst import SETTLE, _stage
from .common import (
    PASSWORD_ENV,
    USER,
    Result,
    deployment,
    emulator,
    median,
    percentile,
    wait_until,
    workdir,
)

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


def _engine_burst(root: Path, size: int, url: str | None, password: str | None) -> float:
    """Submissions per second of the real engine after ``size`` files appear at once, on
    the ledger at ``url`` (None: the deployment's SQLite file)."""
    from ingest.config import load_config
    from ingest.engine import Engine

    args = ["--max-active", str(size * 3), "--workers", "16"]
    with emulator(root, *args) as emu:
        dep = deployment(root, emu.url, emu.nas, settle=SETTLE, max_in_flight=size,
                         observer="native")  # fmt: skip
        os.environ.setdefault(PASSWORD_ENV, USER)
        if url is not None:
            text = dep.config.read_text()
            table = f'[ledger]\nurl = "{url}"\npassword_env = "INGEST_BENCH_PG_PASSWORD"\n'
            dep.config.write_text(re.sub(r"\[ledger\]\nurl = [^\n]*\n", table, text))
            os.environ["INGEST_BENCH_PG_PASSWORD"] = password or ""
        staging = emu.nas / "staging"
        names = _stage(staging, "drop", size)
        engine = Engine(load_config(dep.config), seed=2)
        thread = threading.Thread(target=engine.run, name="bench-engine", daemon=True)
        thread.start()
        try:
            wait_until(lambda: any(w["last_scan_at"] for w in engine.ledger.watchers()), 30)
            for name in names:
                os.rename(staging / name, dep.watch / name)
            stable = time.time() + SETTLE
            wait_until(lambda: emu.count_requests() >= size, 120 + size / 20, 0.1)
            last = max(emu.submitted().values())
        finally:
            engine.stop()
            thread.join(60)
    return round(size / (last - stable), 1)


def run(size: int) -> Result:
    from tests.support.postgres import PASSWORD, server_bin, start_server

    notes: list[str] = []
    with workdir(NAME) as root:
        logging.getLogger("ingest").setLevel(logging.WARNING)
        sqlite = Ledger.open(f"sqlite:///{root / 'ledger.db'}")
        try:
            base = _measure(sqlite, size)
        finally:
            sqlite.close()
        base["engine_burst_per_s"] = _engine_burst(root / "sqlite", size, None, None)
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
                url = server.create_database()
                figures["engine_burst_per_s"] = _engine_burst(root / "pg", size, url, PASSWORD)
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
