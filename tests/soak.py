"""Run timing-sensitive tests many times in a row under a CPU hog, and count failures.

The suite must pass on a loaded 2-core machine. This is the evidence: busy loops on every
core (``--hog``, default: one per core) while the chosen tests run ``--times`` times.

    python -m tests.soak                       # the default timing-sensitive set, 20 times
    python -m tests.soak --times 5 tests/test_settle.py
    python -m tests.soak --json                # one JSON document on stdout

Exit status: 0 when every run passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Tests that race a clock: settle windows against writes, kills against submissions.
#: Each entry is one pytest invocation's arguments.
TIMING_SENSITIVE = [
    ["tests/test_settle.py"],
    ["tests/test_engine.py::test_a_growing_file_is_not_submitted_before_it_settles"],
    ["tests/test_hostile.py::test_a_file_growing_one_byte_per_second"],
    ["tests/test_hostile.py", "-k", "between_settling or after_settling"],  # the queued fixture
    ["tests/test_engine_restart.py"],
]


def _burn(stop: multiprocessing.synchronize.Event) -> None:  # pragma: no cover - a hog
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 31 + 7) % 1_000_003


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "tests", nargs="*", help="pytest targets (default: the timing-sensitive set)"
    )
    parser.add_argument("--times", type=int, default=20, help="runs in a row (default 20)")
    parser.add_argument("--hog", type=int, default=os.cpu_count() or 2, help="busy processes")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    specs = [[t] for t in args.tests] or TIMING_SENSITIVE

    stop = multiprocessing.Event()
    hogs = [
        multiprocessing.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.hog)
    ]
    for hog in hogs:
        hog.start()
    runs: list[dict[str, object]] = []
    try:
        for i in range(1, args.times + 1):
            for spec in specs:
                started = time.monotonic()
                proc = subprocess.run(
                    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *spec],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                )
                seconds = round(time.monotonic() - started, 1)
                tail = proc.stdout.strip().splitlines()[-1:] or [""]
                run = {"run": i, "tests": " ".join(spec), "exit": proc.returncode}
                runs.append({**run, "seconds": seconds, "summary": tail[0]})
                if not args.json:
                    mark = "ok  " if proc.returncode == 0 else "FAIL"
                    print(
                        f"{mark} run {i:2d} {seconds:6.1f}s {' '.join(spec)}: {tail[0]}", flush=True
                    )
                if proc.returncode != 0 and not args.json:
                    print(proc.stdout[-4000:], flush=True)
    finally:
        stop.set()
        for hog in hogs:
            hog.join(timeout=5)
    failed = [r for r in runs if r["exit"] != 0]
    result = {"times": args.times, "hogs": args.hog, "runs": len(runs), "failed": len(failed),
              "tests": [" ".join(s) for s in specs], "failures": failed}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{len(runs)} runs ({args.times} x {len(specs)} targets) under {args.hog} hogs: "
              f"{len(failed)} failed")  # fmt: skip
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
