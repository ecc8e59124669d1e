"""Memory and start-up bounded by the present (issue 17): a drop COMPLETED with its files
deleted leaves nothing in memory, and a start-up does not read it back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ingest.ledger import Ledger
from ingest.schema import FILES_REMAIN

from .support.deployment import Deployment
from .support.wait import wait_for


def _drop(ledger: Ledger, path: str, state: str, *, deleted: bool | None, sig: int) -> int:
    with ledger.batch() as tx:
        return tx.add(
            rule="news", watch="/w", path=path, state=state, source_deleted=deleted,
            size=sig, mtime_ns=sig,
        )  # fmt: skip


def test_start_up_reads_only_drops_whose_files_remain(tmp_path: Path) -> None:
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        _drop(ledger, "gone.mxf", "COMPLETED", deleted=True, sig=1)
        _drop(ledger, "kept.mxf", "COMPLETED", deleted=False, sig=2)
        _drop(ledger, "refused.mxf", "REJECTED", deleted=None, sig=3)
        _drop(ledger, "failed.mxf", "FAILED", deleted=None, sig=4)
        _drop(ledger, "skipped.mxf", "SKIPPED", deleted=None, sig=5)
        _drop(ledger, "live.mxf", "SUBMITTED", deleted=None, sig=6)
        # An older drop at a path whose newest drop took its files away is not on disk.
        _drop(ledger, "again.mxf", "REJECTED", deleted=None, sig=7)
        _drop(ledger, "again.mxf", "COMPLETED", deleted=True, sig=8)
        settled = ledger.settled_by_path("/w")
    finally:
        ledger.close()
    assert settled == {
        "kept.mxf": (2, 2), "refused.mxf": (3, 3), "failed.mxf": (4, 4),
        "skipped.mxf": (5, 5), "live.mxf": None,
    }  # fmt: skip


def test_the_start_up_read_goes_through_the_partial_index(tmp_path: Path) -> None:
    Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}").close()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        plan = conn.execute(
            f"EXPLAIN QUERY PLAN SELECT path FROM drops d WHERE watch = ? AND ({FILES_REMAIN})",  # noqa: S608
            ("/w",),
        ).fetchall()
    assert "ix_drops_files_remain" in str(plan)


def test_caches_hold_nothing_of_drops_archived_and_deleted(deployment: Deployment) -> None:
    dep = deployment
    dep.rule(on_conflict="suffix")
    count = 12
    for i in range(count):
        (dep.watch / f"clip{i}.mxf").write_bytes(b"x" * (100 + i))
    (dep.watch / "notes.txt").write_text("matches no rule")
    engine = dep.start()
    for i in range(count):
        dep.wait_state(f"clip{i}.mxf", "COMPLETED")
    (dep.watch / "notes.txt").unlink()
    watch = str(dep.watch)
    folder = engine.folders[watch]
    # The next full scan after the last completion sees the folder empty.
    scanned = folder.next_scan
    wait_for(lambda: folder.next_scan > scanned and not folder.unmatched, timeout=30)
    assert engine.folders.settled[watch] == {}
    assert engine.tracker.drops == {}
    assert not engine.intake._hinted
    assert not engine.intake.waiting_sidecar and not engine.intake.hashing

    # A new file of an archived name is a new drop, with today's conflict handling.
    (dep.watch / "clip0.mxf").write_bytes(b"second take")
    wait_for(lambda: len(dep.rows("clip0.mxf")) == 2, timeout=30)
    row = dep.wait_state("clip0.mxf", "COMPLETED")
    assert row["object_name"] == "clip0_2"
    dep.stop()
    # Nor does a start-up read any of them back.
    engine = dep.start()
    wait_for(lambda: engine.folders.get(watch) is not None, timeout=30)
    assert engine.folders.settled[watch] == {}
