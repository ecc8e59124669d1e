"""Start-up over years of history (issue 17).

An empty watch folder; a ledger holding N historical COMPLETED drops whose files DIVA
deleted long ago (built straight into SQLite with ``executemany``, not through the engine),
against the same start-up with an empty ledger. Figures: ``ingest run --until-idle``'s
wall time and peak RSS in both: the fastest of five interleaved runs each, after one
warm-up run (the medians are shown too), and the start-up's read of the settled paths,
timed in-process. Target: within +10 MB and +0.2 s of the empty ledger: a start-up reads
the drops whose files remain, not history.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time

from .common import (
    Deployment,
    Result,
    deployment,
    emulator,
    fold_counts,
    median,
    python_env,
    timed_child,
    workdir,
)

NAME = "history"
SIZES = {"full": 1_000_000, "quick": 100_000}
RUNS = 5
RUNS_QUICK = 2  # below FULL_FROM historical drops (the CI size): enough to show it works
FULL_FROM = 500_000
TARGET_MB = 10.0
TARGET_SECONDS = 0.2


def fill_history(dep: Deployment, n: int) -> None:
    """``n`` COMPLETED drops with their sources deleted, two transitions each, in SQLite."""
    from ingest.ledger import Ledger

    Ledger.open(dep.ledger_url).close()  # the schema, by the engine's own migrations
    rng = random.Random(17)
    start = time.time() - 3 * 365 * 86_400
    watch = str(dep.watch)
    with contextlib.closing(sqlite3.connect(dep.ledger)) as db:
        db.execute("PRAGMA synchronous=OFF")
        step = 10_000
        for base in range(0, n, step):
            rows = []
            for i in range(base, min(n, base + step)):
                at = start + i * 90.0
                rows.append(("bench", watch, f"d{i // 1000:05d}/clip{i:08d}.mxf", "file",
                             "COMPLETED", f"clip{i:08d}", "BENCH", 1, True,
                             rng.randrange(1 << 20, 1 << 30), int(at * 1e9), 1, at, at + 60,
                             at + 60))  # fmt: skip
            with db:
                db.executemany(
                    "INSERT INTO drops (rule, watch, path, kind, state, object_name, collection,"
                    " attempts, source_deleted, size, mtime_ns, file_count, detected_at,"
                    " finished_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
                db.execute(
                    "INSERT INTO transitions (drop_id, at, from_state, to_state, detail) "
                    "SELECT id, detected_at, NULL, 'DETECTED', 'detected' FROM drops "
                    "WHERE id > ?",
                    (base,),
                )
                db.execute(
                    "INSERT INTO transitions (drop_id, at, from_state, to_state, detail) "
                    "SELECT id, finished_at, 'RUNNING', 'COMPLETED', 'archived' FROM drops "
                    "WHERE id > ?",
                    (base,),
                )
    fold_counts(dep)


def _start_ups(deps: list[Deployment], runs: int) -> list[tuple[list[float], list[float]]]:
    """Each deployment's ``ingest run --until-idle`` wall seconds and peak RSS (MB), the
    runs interleaved (so a neighbour's load falls on both alike), after one untimed run
    each (the page cache warm, as for any daemon restart)."""
    env = python_env()
    for dep in deps:
        timed_child(dep.run_command("--until-idle"), env=env)
    out: list[tuple[list[float], list[float]]] = [([], []) for _ in deps]
    for _ in range(runs):
        for dep, (walls, peaks) in zip(deps, out, strict=True):
            wall, rss, _ = timed_child(dep.run_command("--until-idle"), env=env)
            walls.append(wall)
            peaks.append(rss)
    return out


def _read_ms(dep: Deployment) -> tuple[float, int]:
    """The start-up's read of the settled paths, in this process: (ms, entries)."""
    from ingest.ledger import Ledger

    ledger = Ledger.open(dep.ledger_url, migrate=False)
    try:
        began = time.perf_counter()
        entries = len(ledger.settled_by_path(str(dep.watch)))
        return (time.perf_counter() - began) * 1000, entries
    finally:
        ledger.close()


def run(size: int) -> Result:
    with workdir(NAME) as root, emulator(root) as emu:
        (root / "empty").mkdir()
        (root / "full").mkdir()
        empty = deployment(root / "empty", emu.url, emu.nas / "empty")
        fill_history(empty, 0)  # the schema only: neither start-up runs the migrations
        full = deployment(root / "full", emu.url, emu.nas / "full")
        began = time.perf_counter()
        fill_history(full, size)
        build = time.perf_counter() - began
        ledger_mb = full.ledger.stat().st_size / 1e6
        runs = RUNS if size >= FULL_FROM else RUNS_QUICK
        (base_walls, base_peaks), (walls, peaks) = _start_ups([empty, full], runs)
        read_ms, entries = _read_ms(full)
    # The fastest run is the least disturbed by a loaded machine; the medians are shown.
    base_wall, base_rss, wall, rss = min(base_walls), min(base_peaks), min(walls), min(peaks)
    extra_mb, extra_s = rss - base_rss, wall - base_wall
    met = extra_mb <= TARGET_MB and extra_s <= TARGET_SECONDS
    return Result(
        NAME,
        {"historical_drops": size, "runs": runs},
        {
            "start_up_s": round(wall, 3),
            "peak_rss_mb": round(rss, 1),
            "extra_s": round(extra_s, 3),
            "extra_mb": round(extra_mb, 1),
            "ledger_mb": round(ledger_mb, 1),
            "build_s": round(build, 1),
            "median_s": round(median(walls), 3),
            "settled_read_ms": round(read_ms, 1),
            "settled_entries": entries,
        },
        {
            "start_up_s": round(base_wall, 3),
            "peak_rss_mb": round(base_rss, 1),
            "median_s": round(median(base_walls), 3),
        },
        round(wall / base_wall, 3) if base_wall else None,
        f"<= +{TARGET_MB:g} MB and +{TARGET_SECONDS:g} s over an empty ledger",
        met,
    )
