"""The README's first command: ``ingest demo`` runs the whole product end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_archives_every_sample_and_says_where_to_look(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "ingest", "demo", str(target)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Ledger summary: 4 COMPLETED" in out
    assert re.search(r"status page at http://127\.0\.0\.1:\d+/ ", out), out
    assert "Left in the drop folders: nothing" in out
    assert "Traceback" not in result.stderr
    assert f"ingest ledger list --config {target / 'ingest.toml'}" in out
    assert "demo-password" not in out + result.stderr
    # A second run replaces the first demo's folder...
    again = subprocess.run(
        [sys.executable, "-m", "ingest", "demo", str(target)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    # ...but never a folder it did not make.
    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    refused = subprocess.run(
        [sys.executable, "-m", "ingest", "demo", str(other)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "not an earlier demo's folder" in refused.stderr
    assert (other / "keep.txt").read_text() == "mine"
