"""The benchmark suite must not rot: one cheap benchmark through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_entry_point_writes_a_result_per_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "ledger_queries", "--size", "2000", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ledger_queries" in proc.stdout
    doc = json.loads(out.read_text())
    assert set(doc) >= {"date", "command", "machine", "results"}
    assert {"python", "cpu", "cores"} <= set(doc["machine"])
    [result] = doc["results"]
    assert set(result) >= {"name", "size", "figures", "baseline", "ratio", "target", "met"}
    assert result["name"] == "ledger_queries"
    assert result["size"]["drops"] == 2000
    assert result["figures"]["status_s"] > 0 and result["baseline"]["sqlite3_list_s"] > 0
    assert isinstance(result["met"], bool)


def test_bench_refuses_an_unknown_name() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "nonsense"], cwd=ROOT, capture_output=True, timeout=60
    )
    assert proc.returncode == 2
