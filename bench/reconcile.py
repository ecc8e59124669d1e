"""3. Start-up reconcile at scale.

A tree of N files in N/100 folders, every file already in the ledger as COMPLETED with
its size and mtime (archived, source kept), so a start must read it all and submit
nothing. Wall time and peak RSS of ``ingest run --until-idle`` from start to exit, each
in a fresh process, against the same for a bare ``os.scandir`` + ``lstat`` walk and for
watchdog's ``DirectorySnapshot`` of the tree. The page cache is warm for all three (one
warm-up walk first); each figure is the median of five runs, taken in rounds of one run
of each (a shared host's drift then moves all three alike, not one more than another).
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys

from .common import (
    Result,
    deployment,
    fill_ledger_completed,
    make_tree,
    median,
    python_env,
    startup_profile,
    timed_child,
    workdir,
)

NAME = "reconcile"
SIZES = {"full": 200_000, "quick": 20_000}
RUNS = 5
TARGET_RATIO = 2.0  # issue 15
TARGET_RSS_MB = 150.0

BARE = """
import os, stat, sys
count, stack = 0, [sys.argv[1]]
while stack:
    with os.scandir(stack.pop()) as it:
        for entry in it:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
            elif stat.S_ISREG(st.st_mode):
                count += 1
print(count)
"""
SNAPSHOT = """
import sys
from watchdog.utils.dirsnapshot import DirectorySnapshot
print(len(DirectorySnapshot(sys.argv[1]).paths))
"""


def interleaved(cmds: list[list[str]], runs: int) -> list[tuple[float, float]]:
    """Each command's median wall time and peak RSS over ``runs`` rounds of one run each."""
    walls: list[list[float]] = [[] for _ in cmds]
    rss: list[list[float]] = [[] for _ in cmds]
    for _ in range(runs):
        for i, cmd in enumerate(cmds):
            wall, peak, _ = timed_child(cmd, env=python_env(), timeout=1800)
            walls[i].append(wall)
            rss[i].append(peak)
    return [(median(w), max(r)) for w, r in zip(walls, rss, strict=True)]


def run(size: int) -> Result:
    folders = max(1, size // 100)
    with workdir(NAME) as root:
        dep = deployment(root, "http://127.0.0.1:9", root / "nas")  # DIVA is never called
        tree = make_tree(dep.watch, size, folders)
        fill_ledger_completed(dep, tree)
        watch = str(dep.watch)
        interleaved([[sys.executable, "-c", BARE, watch]], 1)  # warm the page cache
        (bare_s, bare_mb), (snap_s, snap_mb), (ingest_s, ingest_mb) = interleaved(
            [
                [sys.executable, "-c", BARE, watch],
                [sys.executable, "-c", SNAPSHOT, watch],
                dep.run_command("--until-idle"),
            ],
            RUNS,
        )
        profile = startup_profile(dep)
        with contextlib.closing(sqlite3.connect(dep.ledger)) as db:
            rows = db.execute("SELECT count(*) FROM drops").fetchone()[0]
    ratio = ingest_s / bare_s
    met = (
        ratio <= TARGET_RATIO and ingest_mb < TARGET_RSS_MB and ingest_s < snap_s
        and ingest_mb < snap_mb and rows == size
    )  # fmt: skip
    return Result(
        name=NAME,
        size={"files": size, "folders": folders},
        figures={
            "ingest_s": round(ingest_s, 2),
            "ingest_peak_rss_mb": round(ingest_mb, 1),
            "ledger_rows_after": rows,
            "profile": profile,
        },
        baseline={
            "bare_walk_s": round(bare_s, 2),
            "bare_walk_peak_rss_mb": round(bare_mb, 1),
            "snapshot_s": round(snap_s, 2),
            "snapshot_peak_rss_mb": round(snap_mb, 1),
        },
        ratio=round(ratio, 2),
        target=(
            f"<= {TARGET_RATIO}x bare walk; RSS < {TARGET_RSS_MB:g} MB; "
            "faster and smaller than DirectorySnapshot; nothing submitted"
        ),
        met=met,
        notes=[
            "every figure is a whole process: Python start-up and imports included",
            "profile: one more start, from its INFO log (bench.common.startup_profile)",
        ],
    )
