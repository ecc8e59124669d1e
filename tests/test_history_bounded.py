"""Memory and start-up bounded by the present (issue 17): a drop COMPLETED with its files
deleted leaves nothing in memory, and a start-up does not read it back."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.ledger import Ledger, settled_sql
from ingest.migrations import FILES_REMAIN
from ingest.watch import pack
from tests.support.postgres import PASSWORD

from .support.deployment import Deployment
from .support.wait import wait_for


def _drop(ledger: Ledger, path: str, state: str, *, deleted: bool | None, sig: int | None) -> int:
    with ledger.batch() as tx:
        return tx.add(
            rule="news", watch="/w", path=path, state=state, source_deleted=deleted,
            size=sig, mtime_ns=sig,
        )  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """A new, empty ledger on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("postgres").create_database()
    opened = Ledger.open(url, password=PASSWORD)
    yield opened
    opened.close()


def test_start_up_reads_only_drops_whose_files_remain(ledger: Ledger) -> None:
    _drop(ledger, "gone.mxf", "COMPLETED", deleted=True, sig=1)
    _drop(ledger, "kept.mxf", "COMPLETED", deleted=False, sig=2)
    _drop(ledger, "refused.mxf", "REJECTED", deleted=None, sig=3)
    _drop(ledger, "failed.mxf", "FAILED", deleted=None, sig=4)
    _drop(ledger, "skipped.mxf", "SKIPPED", deleted=None, sig=5)
    _drop(ledger, "live.mxf", "SUBMITTED", deleted=None, sig=6)
    # An older drop at a path whose newest drop took its files away is not on disk.
    _drop(ledger, "again.mxf", "REJECTED", deleted=None, sig=7)
    _drop(ledger, "again.mxf", "COMPLETED", deleted=True, sig=8)
    # Final without a size (it vanished before it settled): nothing a file found equals.
    _drop(ledger, "sizeless.mxf", "SKIPPED", deleted=None, sig=None)
    settled = ledger.settled_by_path("/w")
    assert settled == {
        "kept.mxf": pack(2, 2), "refused.mxf": pack(3, 3), "failed.mxf": pack(4, 4),
        "skipped.mxf": pack(5, 5), "live.mxf": None, "sizeless.mxf": -1,
    }  # fmt: skip
    assert all(pack(size, mtime) != -1 for size in (0, 2**62) for mtime in (-1, 0, 2**62))


def test_files_found_gone_leave_the_start_up_read_until_a_retry(ledger: Ledger) -> None:
    refused = _drop(ledger, "refused.mxf", "REJECTED", deleted=None, sig=1)
    _drop(ledger, "gone.mxf", "COMPLETED", deleted=True, sig=2)
    live = _drop(ledger, "live.mxf", "SUBMITTED", deleted=None, sig=3)
    with ledger.batch() as tx:
        assert tx.files_gone("/w", "refused.mxf", "removed from the folder") == [refused]
        # Nothing of these was thought to remain, or it is not final: untouched.
        assert tx.files_gone("/w", "gone.mxf", "removed") == []
        assert tx.files_gone("/w", "live.mxf", "removed") == []
    assert ledger.settled_by_path("/w") == {"live.mxf": None}
    row = ledger.get(refused)
    assert row is not None
    assert (row["state"], row["files_gone_at"] is not None) == ("REJECTED", True)
    last = ledger.history(refused)[-1]
    assert (last["from_state"], last["to_state"], last["detail"]) == (
        "REJECTED", "REJECTED", "removed from the folder",
    )  # fmt: skip
    assert ledger.get(live)["files_gone_at"] is None  # type: ignore[index]
    # An operator's retry puts it back among the drops whose files count.
    assert ledger.requeue({refused: "REJECTED"}, "retried") == {refused}
    assert ledger.settled_by_path("/w") == {"live.mxf": None, "refused.mxf": None}


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def test_the_start_up_read_on_postgresql_is_linear_before_any_analyze(
    postgres: Any,
) -> None:
    """Before its first ANALYZE, PostgreSQL guesses a table of a handful of rows. The
    read must not then compare every drop of the watch with every other (a nested loop:
    2,000 drops took 0.85 s, 200 times SQLite's time), whatever plan it picks."""
    count = 400
    ledger = Ledger.open(postgres.create_database(), password=PASSWORD)
    try:
        with ledger.batch() as tx:
            for i in range(count):
                tx.add(rule="r", watch="/w", path=f"f{i}", size=i, mtime_ns=i, state="FAILED")
        with ledger.connect() as conn:
            sql = "EXPLAIN (ANALYZE, FORMAT JSON) " + settled_sql(postgresql=True)
            (plan,) = conn.execute(sql, ("/w",)).fetchone()
        assert len(ledger.settled_by_path("/w")) == count
    finally:
        ledger.close()
    plan = plan if isinstance(plan, list) else json.loads(plan)
    nodes = list(_plan_nodes(plan[0]["Plan"]))
    compared = sum(
        n.get("Rows Removed by Join Filter", 0) + n.get("Rows Removed by Filter", 0) for n in nodes
    )
    assert compared < count, [n["Node Type"] for n in nodes]


def test_the_start_up_read_goes_through_the_partial_index(tmp_path: Path) -> None:
    """In the index's own order: no sort, and no per-row look for a newer drop."""
    Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}").close()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN " + settled_sql(postgresql=False), ("/w",)
        ).fetchall()
    steps = [row[-1] for row in plan]
    assert steps == ["SEARCH drops USING INDEX ix_drops_files_remain (watch=?)"], steps
    assert FILES_REMAIN in settled_sql(postgresql=False)  # word for word, or no index


def test_a_new_drop_takes_its_paths_older_final_drops_out(ledger: Ledger) -> None:
    refused = _drop(ledger, "a.mxf", "REJECTED", deleted=None, sig=1)
    live = _drop(ledger, "b.mxf", "SUBMITTED", deleted=None, sig=2)
    newer = _drop(ledger, "a.mxf", "DETECTED", deleted=None, sig=3)
    row = ledger.get(refused)
    assert row is not None and row["state"] == "REJECTED" and row["files_gone_at"] is not None
    last = ledger.history(refused)[-1]
    assert (last["to_state"], last["detail"]) == ("REJECTED", f"drop {newer} took its path")
    # An older drop still active stays (it is not final); the newest one is what counts.
    newest_b = _drop(ledger, "b.mxf", "FAILED", deleted=None, sig=4)
    assert ledger.get(live)["files_gone_at"] is None  # type: ignore[index]
    assert ledger.settled_by_path("/w") == {"a.mxf": None, "b.mxf": pack(4, 4)}
    # A superseded drop is not requeued, even by a retry that raced the new drop.
    assert ledger.requeue({refused: "REJECTED"}, "retried") == set()
    assert ledger.get(refused)["state"] == "REJECTED"  # type: ignore[index]
    assert ledger.requeue({newest_b: "FAILED"}, "retried") == {newest_b}


def test_migration_0014_takes_older_drops_out_of_a_ledger_made_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingest import ledger as ledger_module
    from ingest.migrations import MIGRATIONS

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert MIGRATIONS[-1][0] == "0014_drops_superseded"
    with monkeypatch.context() as patch:
        patch.setattr(ledger_module, "MIGRATIONS", MIGRATIONS[:-1])
        Ledger.open(url).close()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:  # as the engine wrote them then
        conn.executemany(
            "INSERT INTO drops (rule, watch, path, state, source_deleted, size, mtime_ns, "
            "detected_at, updated_at) VALUES ('r', '/w', ?, ?, ?, ?, ?, ?, ?)",
            [
                ("a.mxf", "REJECTED", None, 1, 1, 10.0, 10.0),
                ("a.mxf", "COMPLETED", True, 2, 2, 20.0, 20.0),  # archived and deleted
                ("b.mxf", "FAILED", None, 3, 3, 30.0, 30.0),
                ("b.mxf", "REJECTED", None, 4, 4, 40.0, 40.0),
                ("c.mxf", "COMPLETED", False, 5, 5, 50.0, 50.0),
            ],
        )
    ledger = Ledger.open(url)
    try:
        assert ledger.settled_by_path("/w") == {"b.mxf": pack(4, 4), "c.mxf": pack(5, 5)}
        gone = {r["id"]: r["files_gone_at"] for r in ledger.rows()}
        assert gone == {1: 20.0, 2: None, 3: 40.0, 4: None, 5: None}
    finally:
        ledger.close()


def _scanned(engine: Any, watch: str) -> bool:
    """Whether a started engine read back its settled paths and scanned ``watch`` once."""
    folder = engine.folders.get(watch)
    return folder is not None and bool(folder.scanned)


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
    assert not engine.intake.waits.sidecar and not engine.intake.waits.hashing

    # A new file of an archived name is a new drop, with today's conflict handling.
    (dep.watch / "clip0.mxf").write_bytes(b"second take")
    wait_for(lambda: len(dep.rows("clip0.mxf")) == 2, timeout=30)
    row = dep.wait_state("clip0.mxf", "COMPLETED")
    assert row["object_name"] == "clip0_2"
    dep.stop()
    # Nor does a start-up read any of them back.
    engine = dep.start()
    wait_for(lambda: _scanned(engine, watch), timeout=30)
    assert engine.folders.settled[watch] == {}


def test_a_refused_file_an_operator_removes_leaves_memory_and_the_start_up(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.rule(media="NO_SUCH_MEDIA")  # DIVA refuses both: REJECTED, the files stay
    for name in ("removed.mxf", "kept.mxf"):
        (dep.watch / name).write_bytes(name.encode())
    engine = dep.start()
    refused = dep.wait_state("removed.mxf", "REJECTED")
    dep.wait_state("kept.mxf", "REJECTED")
    watch = str(dep.watch)
    wait_for(lambda: {"removed.mxf", "kept.mxf"} <= engine.folders.settled[watch].keys())

    (dep.watch / "removed.mxf").unlink()
    wait_for(lambda: dep.rows("removed.mxf")[-1]["files_gone_at"] is not None, timeout=30)
    assert "removed.mxf" not in engine.folders.settled[watch]
    row = dep.rows("removed.mxf")[-1]
    assert (row["id"], row["state"]) == (refused["id"], "REJECTED")
    assert row["files_gone_at"] is not None
    assert engine.ledger.history(refused["id"])[-1]["detail"] == (
        "its files are no longer in the watch folder"
    )
    assert "kept.mxf" in engine.folders.settled[watch]  # still there: still remembered
    dep.stop()

    engine = dep.start()  # a start-up reads back only the file still there
    wait_for(lambda: _scanned(engine, watch), timeout=30)
    assert set(engine.folders.settled[watch]) == {"kept.mxf"}
    # The same name again is a new drop, refused again, on a row of its own.
    (dep.watch / "removed.mxf").write_bytes(b"removed.mxf")
    wait_for(lambda: len(dep.rows("removed.mxf")) == 2, timeout=30)
    assert dep.wait_state("removed.mxf", "REJECTED")["id"] != refused["id"]
    assert len(dep.rows("kept.mxf")) == 1


def test_a_file_missing_for_one_sweep_only_is_not_forgotten(deployment: Deployment) -> None:
    """A share that read without a file for a moment: the file it kept, back as it was,
    is not a new drop (archived without delete-on-source, it would be archived again)."""
    dep = deployment
    text = dep.config_path.read_text()
    dep.config_path.write_text(text.replace("rescan_seconds = 2", "rescan_seconds = 5"))
    dep.rule(media="NO_SUCH_MEDIA")
    path = dep.watch / "blip.mxf"
    path.write_bytes(b"blip")
    engine = dep.start()
    dep.wait_state("blip.mxf", "REJECTED")
    watch = str(dep.watch)
    wait_for(lambda: "blip.mxf" in engine.folders.settled[watch])
    stamp = path.stat().st_mtime_ns

    path.unlink()
    wait_for(lambda: "blip.mxf" in engine.intake._missed.get(watch, {}), timeout=30)
    back = dep.watch / "blip.tmp"  # back as it was, before the next sweep
    back.write_bytes(b"blip")
    os.utime(back, ns=(stamp, stamp))
    back.rename(path)
    swept = engine.intake._swept[watch]
    wait_for(lambda: engine.intake._swept[watch] > swept, timeout=30)
    swept = engine.intake._swept[watch]
    wait_for(lambda: engine.intake._swept[watch] > swept, timeout=30)
    assert "blip.mxf" in engine.folders.settled[watch]
    assert "blip.mxf" not in engine.intake._missed[watch]
    rows = dep.rows("blip.mxf")
    assert len(rows) == 1 and rows[0]["files_gone_at"] is None


def test_the_engine_folds_the_count_changes_into_totals(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``ingest status`` sums stays a row per (state, rule), not a row per write."""
    from ingest import defaults

    monkeypatch.setattr(defaults, "LEDGER_COUNTS_FOLD_SECONDS", 0.2)
    monkeypatch.setattr(defaults, "LEDGER_COUNTS_FOLD_LEAST", 1)
    dep = deployment
    dep.rule()
    for i in range(6):
        (dep.watch / f"clip{i}.mxf").write_bytes(b"x" * (10 + i))
    dep.start()
    for i in range(6):
        dep.wait_state(f"clip{i}.mxf", "COMPLETED")

    def tables() -> tuple[int, list[tuple[str, str, int]]]:
        with sqlite3.connect(dep.ledger_path) as db:
            left = db.execute("SELECT count(*) FROM drop_counts").fetchone()[0]
            return left, db.execute("SELECT * FROM drop_totals").fetchall()

    wait_for(lambda: tables()[0] == 0, timeout=30)
    assert tables()[1] == [("COMPLETED", "news", 6)]
