"""``Ledger.requeue``: the one write to drop state outside the engine (``ingest retry``)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.errors import LedgerError
from ingest.ledger import Ledger, State


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    (tmp_path / "news").mkdir()
    (tmp_path / "ingest.toml").write_text('[ledger]\nurl = "sqlite:///ledger.db"\n')
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    with ledger.batch(now=1000.0) as tx:
        for name, state in [("running", State.RUNNING), ("failed", State.FAILED),
                            ("skipped", State.SKIPPED), ("done", State.COMPLETED)]:  # fmt: skip
            (tmp_path / "news" / f"{name}.mxf").write_bytes(b"x")
            tx.add(rule="news", watch=str(tmp_path / "news"), path=f"{name}.mxf", state=state,
                   attempts=3, error="DIVA said no")  # fmt: skip
    return ledger


def ids(ledger: Ledger) -> dict[str, int]:
    return {row["path"].removesuffix(".mxf"): row["id"] for row in ledger.rows()}


def test_requeue_takes_only_final_drops_as_seen(ledger: Ledger) -> None:
    drop = ids(ledger)
    try:
        with pytest.raises(LedgerError, match="RUNNING drops are not requeued"):
            ledger.requeue({drop["running"]: "RUNNING"}, "x")
        # seen as REJECTED, but it is FAILED: not touched
        assert ledger.requeue({drop["failed"]: "REJECTED"}, "x") == set()
        assert ledger.get(drop["failed"])["state"] == "FAILED"  # type: ignore[index]
        both = {drop["failed"]: "FAILED", drop["skipped"]: "SKIPPED"}
        assert ledger.requeue(both, "by hand") == set(both)
        for name in ("failed", "skipped"):
            row = ledger.get(drop[name])
            assert row is not None
            assert (row["state"], row["attempts"], row["error"]) == ("RETRY_WAIT", 0, None)
            assert row["next_attempt_at"] == row["updated_at"] > 1000.0
            step = ledger.history(drop[name])[-1]
            assert (step["from_state"], step["to_state"], step["detail"]) == (
                name.upper(), "RETRY_WAIT", "by hand"
            )  # fmt: skip
        assert ledger.get(drop["running"])["state"] == "RUNNING"  # type: ignore[index]
    finally:
        ledger.close()


def test_only_a_write_pays_for_sqlalchemy(ledger: Ledger) -> None:
    """A dry run, or a retry with nothing to requeue, reads with plain sqlite3 only:
    ``ingest retry`` imports the ledger module (and SQLAlchemy) only to write."""
    drop = ids(ledger)
    assert ledger.path is not None
    ledger.close()
    config = ["--config", str(ledger.path.parent / "ingest.toml")]
    code = (
        "import json, sys\n"
        "from ingest.cli import main\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sqlmodel', 'sqlalchemy') or m == 'ingest.ledger')\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )

    def run(*runs: list[str]) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", code, json.dumps(runs)]
        return subprocess.run(argv, capture_output=True, text=True, check=True)

    light = run(["retry", "--failed", "--dry-run", *config], ["retry", str(drop["done"]), *config])
    assert "HEAVY []" in light.stderr, light.stderr
    assert "would requeue" in light.stdout and "not retryable" in light.stdout
    heavy = run(["retry", str(drop["failed"]), *config])
    assert "'ingest.ledger'" in heavy.stderr  # the check above can see the import
    assert "requeued (was FAILED)" in heavy.stdout
    conn = sqlite3.connect(ledger.path)
    try:
        states = dict(conn.execute("SELECT path, state FROM drops").fetchall())
    finally:
        conn.close()
    assert states["failed.mxf"] == "RETRY_WAIT"
