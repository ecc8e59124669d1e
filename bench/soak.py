"""Soak: a sustained drop rate against the emulator for a set time (issue 17).

Small files arrive at ``RATE`` a second for ``size`` seconds while ``ingest run`` watches
the folder (native events, delete-on-source: the emulator deletes each file once archived).
Sampled every second: the daemon's resident memory (VmRSS) and the backlog (drops in the
ledger not yet final). Figures: RSS after the warm-up (the first fifth) and at the end,
each the median of its last samples; the slope between them per 1,000 drops archived;
the largest backlog and the backlog at the end of each fifth; the ledger's growth per drop
archived (its file once the daemon stopped, less an empty ledger's; each drop's row, its
transitions and their index entries). Targets: the slope under
0.05 KB per drop (50 KB per 1,000: flat within noise) and the backlog bounded (never more
than ``BACKLOG_SECONDS`` of arrivals).

The baseline is the daemon's own RSS after warm-up: the slope is what grows beyond it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

from ingest.ledger import Ledger

from .common import (
    Deployment,
    Result,
    daemon,
    daemon_log,
    deployment,
    emulator,
    median,
    wait_until,
    workdir,
)

NAME = "soak"
SIZES = {"full": 900, "quick": 20}  # seconds of arrivals
RATE = 20.0  # drops per second
SETTLE = 0.2
TARGET_KB_PER_DROP = 0.05
BACKLOG_SECONDS = 5.0
WINDOW = 5  # samples in a median


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _counts(dep: Deployment) -> tuple[int, int]:
    """(drops final, drops still active) in the ledger."""
    from ingest.states import FINAL_STATES

    if not dep.ledger.exists():
        return 0, 0
    final = ", ".join(f"'{s}'" for s in FINAL_STATES)
    with contextlib.closing(sqlite3.connect(dep.ledger, timeout=30)) as db:
        done, live = db.execute(
            f"SELECT count(*) FILTER (WHERE state IN ({final})),"  # noqa: S608
            f" count(*) FILTER (WHERE state NOT IN ({final})) FROM drops"
        ).fetchone()
    return int(done or 0), int(live or 0)


def _file_bytes(path: Path) -> int:
    """An SQLite file's bytes, with its write-ahead log if one is left."""
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _write(watch: str, i: int) -> None:
    tmp = os.path.join(watch, f".s{i:07d}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, b"s" * 256)
    os.close(fd)
    os.rename(tmp, os.path.join(watch, f"s{i:07d}.mxf"))


def run(size: int) -> Result:
    seconds = float(size)
    with workdir(NAME) as root, emulator(root, "--workers", "8") as emu:
        dep = deployment(root, emu.url, emu.nas, settle=SETTLE, poll_seconds=1.0,
                         max_in_flight=200, observer="native")  # fmt: skip
        with daemon(dep) as proc:
            try:
                wait_until(dep.watching, 60)
            except TimeoutError:
                raise RuntimeError("the daemon did not start:\n" + daemon_log(dep)) from None
            samples: list[tuple[float, float, int, int, int]] = []  # t, rss, written, done, live
            start = time.monotonic()
            next_sample = start
            written = 0
            while (now := time.monotonic()) - start < seconds:
                due = int((now - start) * RATE) + 1
                while written < due:
                    _write(str(dep.watch), written)
                    written += 1
                if now >= next_sample:
                    done, live = _counts(dep)
                    samples.append((now - start, _rss_mb(proc.pid), written, done, live))
                    next_sample += 1.0
                time.sleep(min(1.0 / RATE, max(0.0, next_sample - time.monotonic())))
            try:
                finished = wait_until(lambda: _counts(dep)[0] >= written, 120 + written / 50)
            except TimeoutError:
                finished = False
            end_rss = _rss_mb(proc.pid)
            if proc.poll() is not None:
                raise RuntimeError("the daemon died:\n" + daemon_log(dep))
        # The daemon is gone and its WAL checkpointed: what the ledger grew by per drop,
        # over the schema an empty ledger already holds.
        empty = root / "empty.db"
        Ledger.open(f"sqlite:///{empty}").close()
        grown = _file_bytes(dep.ledger) - _file_bytes(empty)
        done = _counts(dep)[0]
    warm_end = max(1, len(samples) // 5)
    warm = samples[max(0, warm_end - WINDOW) : warm_end]
    last = samples[-WINDOW:]
    rss_warm = median([s[1] for s in warm])
    rss_end = median([s[1] for s in last] + [end_rss])
    drops_between = max(1, last[-1][3] - warm[-1][3])
    kb_per_drop = (rss_end - rss_warm) * 1024 / drops_between
    backlog_max = max(s[4] for s in samples)
    at_fifths = [samples[min(len(samples) - 1, (k * len(samples)) // 5)] for k in range(1, 6)]
    fifths = [s[4] for s in at_fifths]
    bounded = backlog_max <= RATE * BACKLOG_SECONDS
    notes = [] if finished else ["not every drop was final within the wait"]
    return Result(
        NAME,
        {"seconds": size, "rate": RATE, "drops": written},
        {
            "rss_warm_mb": round(rss_warm, 1),
            "rss_end_mb": round(rss_end, 1),
            "kb_per_1000_drops": round(kb_per_drop * 1000, 1),
            "kb_per_drop": round(kb_per_drop, 4),
            "backlog_max": backlog_max,
            "backlog_by_fifth": fifths,
            # (a slope that is a step early on, then flat, is caches filling, not a leak)
            "rss_mb_by_fifth": [round(s[1], 1) for s in at_fifths],
            "ledger_bytes_per_drop": round(grown / done) if done else None,
        },
        {"rss_warm_mb": round(rss_warm, 1)},
        round(rss_end / rss_warm, 3) if rss_warm else None,
        f"slope < {TARGET_KB_PER_DROP} KB/drop; backlog <= {RATE * BACKLOG_SECONDS:.0f}",
        kb_per_drop < TARGET_KB_PER_DROP and bounded and bool(finished),
        notes,
    )
