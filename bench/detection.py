"""1. Detection overhead with native events.

Small files are written into the watch folder at a steady rate while ``ingest run`` watches
it (inotify). For each drop: overhead = the time its archive request reached the emulator
(``submitted``, recorded by the emulator at full resolution) minus (the moment its last
write closed + the rule's settle window). What is left is ingest's own latency: the event
path, the settle timer's wake-up, the intent's ledger commit (``synchronous=FULL``: one
fsync) and the HTTP call.
"""

from __future__ import annotations

import os
import time

from .common import (
    Result,
    daemon,
    daemon_log,
    deployment,
    emulator,
    percentile,
    wait_until,
    workdir,
)
from .common import median as med

NAME = "detection"
SIZES = {"full": 300, "quick": 40}
RATE = 20.0  # drops per second
SETTLE = 0.2  # seconds
TARGET_P99_MS = 50.0


def run(size: int) -> Result:
    with workdir(NAME) as root, emulator(root, "--workers", "8") as emu:
        dep = deployment(root, emu.url, emu.nas, settle=SETTLE, poll_seconds=1.0,
                         max_in_flight=200, observer="native")  # fmt: skip
        with daemon(dep) as proc:
            try:
                wait_until(dep.watching, 30)
            except TimeoutError:
                raise RuntimeError(f"ingest did not start:\n{daemon_log(dep)}") from None
            written: dict[str, float] = {}
            interval = 1.0 / RATE
            start = time.perf_counter()
            for i in range(size):
                target = start + i * interval
                delay = target - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                name = f"det{i:05d}"
                fd = os.open(dep.watch / f"{name}.mxf", os.O_WRONLY | os.O_CREAT, 0o644)
                os.write(fd, b"x" * 4096)
                os.close(fd)
                written[name] = time.time()
            try:
                wait_until(lambda: len(emu.submitted()) >= size, 60 + size / RATE, 0.2)
            except TimeoutError:
                raise RuntimeError(f"not every drop was submitted:\n{daemon_log(dep)}") from None
            assert proc.poll() is None, daemon_log(dep)
        submitted = emu.submitted()
    overhead_ms = [(submitted[n] - (t + SETTLE)) * 1000 for n, t in written.items()]
    p99 = percentile(overhead_ms, 99)
    return Result(
        name=NAME,
        size={"drops": size, "rate_per_s": RATE, "settle_s": SETTLE, "file_bytes": 4096},
        figures={
            "p50_ms": round(med(overhead_ms), 2),
            "p99_ms": round(p99, 2),
            "max_ms": round(max(overhead_ms), 2),
            "min_ms": round(min(overhead_ms), 2),
        },
        baseline={"settle_window_ms": SETTLE * 1000},
        ratio=None,
        target=f"p99 < {TARGET_P99_MS:g} ms",
        met=p99 < TARGET_P99_MS,
    )
