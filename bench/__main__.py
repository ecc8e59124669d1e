"""``python -m bench [NAME...] [--quick] [--size N] [--out FILE]``: run the benchmarks.

Prints one table line per benchmark as it finishes and, with ``--out``, writes the JSON
document: the machine (Python, CPU, cores), the command, and one record per benchmark
(name, size, figures, baseline figures, ratio, target, met).
"""

from __future__ import annotations

import argparse
import compileall
import importlib
import json
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .common import Result, machine

#: run order: cheapest first
BENCHMARKS = (
    "ledger_queries", "ledger_backends", "polling", "detection", "api_economy", "burst",
    "http_load", "reconcile", "failover", "hashing", "history", "soak", "scale_1m",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="CI sizes (under a minute in all)")
    parser.add_argument("--size", type=int, help="override the size of every benchmark run")
    parser.add_argument("--out", type=Path, help="write the JSON results there")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    # The package's bytecode, as an installed ingest has it: the benchmarks' children run
    # with PYTHONDONTWRITEBYTECODE, and a checkout that never ran (a fresh clone) would
    # otherwise compile every module of ingest in every process it times.
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "ingest", quiet=1)
    info = machine()
    print(f"# {info['cpu']}, {info['cores']} cores, Python {info['python']}", flush=True)
    results: list[dict[str, Any]] = []
    failed = 0
    began = time.perf_counter()
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        size = args.size or module.SIZES["quick" if args.quick else "full"]
        start = time.perf_counter()
        try:
            result: Result = module.run(size)
        except Exception as exc:
            failed += 1
            traceback.print_exc()
            result = Result(name, {"n": size}, {}, {}, None, "", None, [f"crashed: {exc!r}"])
        result.seconds = round(time.perf_counter() - start, 1)
        print(result.line(), flush=True)
        results.append(result.as_json())
    total = time.perf_counter() - began
    print(f"# {len(names)} benchmark(s) in {total:.0f} s", flush=True)
    if args.out:
        doc = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
            "machine": info,
            "seconds": round(total, 1),
            "results": results,
        }
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
