"""``ingest ledger prune``: old final drops whose files are gone leave the ledger, exported
first; active drops, drops whose files remain and open mismatches stay (issue 17)."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest import prune as retention
from ingest.config import load_config
from ingest.engine.retention import Retention
from ingest.ledger import Ledger

from .support.ledgers import invoke, write_config
from .support.postgres import PASSWORD_ENV
from .unprivileged import Unprivileged

DAY = 86_400.0


def _drop(ledger: Ledger, watch: Path, path: str, state: str, age_days: float, **kw: object) -> int:
    at = time.time() - age_days * DAY
    with ledger.batch(at) as tx:
        drop_id = tx.add(rule="news", watch=str(watch), path=path, size=1, mtime_ns=1)
        finished = {"finished_at": at} if state not in ("SUBMITTED", "RETRY_WAIT") else {}
        tx.transition(drop_id, "DETECTED", state, "done", **finished, **kw)
    return drop_id


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    write_config(tmp_path)
    store = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield store
    store.close()


def _ids(store: Ledger) -> set[int]:
    return {r["id"] for r in store.rows()}


def test_prune_removes_only_old_final_drops_whose_files_are_gone(
    ledger: Ledger, tmp_path: Path
) -> None:
    watch = tmp_path / "news"
    watch.mkdir()
    (watch / "refused.mxf").write_bytes(b"still here")
    old_done = _drop(ledger, watch, "a.mxf", "COMPLETED", 400, source_deleted=True)
    old_failed_gone = _drop(ledger, watch, "b.mxf", "FAILED", 400)
    # Refused, then dropped again: the file there now is the newer drop's.
    (watch / "redo.mxf").write_bytes(b"the second version")
    superseded = _drop(ledger, watch, "redo.mxf", "REJECTED", 400)
    keep = {
        _drop(ledger, watch, "redo.mxf", "COMPLETED", 1, source_deleted=False),
        _drop(ledger, watch, "new.mxf", "COMPLETED", 1, source_deleted=True),  # too new
        _drop(ledger, watch, "kept.mxf", "COMPLETED", 400, source_deleted=False),
        _drop(ledger, watch, "refused.mxf", "REJECTED", 400),  # its file is still there
        _drop(ledger, watch, "live.mxf", "SUBMITTED", 400),  # active
        _drop(
            ledger,
            watch,
            "odd.mxf",
            "COMPLETED",
            400,
            source_deleted=True,
            checksum_mismatch='{"x": 1}',
        ),
    }
    (watch / "kept.mxf").write_bytes(b"DIVA kept it")
    export = tmp_path / "pruned.jsonl"
    config = str(tmp_path / "ingest.toml")

    dry = invoke("ledger", "prune", "--before", "30d", "--dry-run", "--config", config)
    assert dry.exit_code == 0, dry.output
    assert "would prune 3 drops" in dry.stdout and not export.exists()

    done = invoke("ledger", "prune", "--before", "30d", "--export", str(export), "--config", config)
    assert done.exit_code == 0, done.output
    assert "removed 3 and 7 transitions" in done.stdout
    records = [json.loads(line) for line in export.read_text().splitlines()]
    assert [r["id"] for r in records] == [old_done, old_failed_gone, superseded]
    assert records[2]["transitions"][-1]["detail"].endswith("took its path")
    assert [t["to"] for t in records[0]["transitions"]] == ["DETECTED", "COMPLETED"]
    assert _ids(ledger) == keep
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        orphans = conn.execute(
            "SELECT count(*) FROM transitions WHERE drop_id NOT IN (SELECT id FROM drops)"
        ).fetchone()[0]
        assert orphans == 0
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental

    # An export file is never overwritten.
    again = invoke(
        "ledger", "prune", "--before", "30d", "--export", str(export), "--config", config
    )
    assert again.exit_code == 2 and "exists" in again.output


def test_prune_keeps_a_drop_whose_folder_it_cannot_search(unprivileged: Unprivileged) -> None:
    """Pruned as a user the folder's mode stops, a file that is there but hidden is not
    gone: its row stays. Pruned, the path would be forgotten, and the file (archived and
    kept by DIVA) a new drop, archived a second time, at the daemon's next start."""
    root = unprivileged.root
    config = write_config(root)
    watch = root / "news"
    (watch / "locked").mkdir(parents=True)
    (watch / "locked" / "kept.mxf").write_bytes(b"DIVA kept it")
    store = Ledger.open(f"sqlite:///{root / 'ledger.db'}")
    try:
        hidden = _drop(store, watch, "locked/kept.mxf", "COMPLETED", 400, source_deleted=False)
        gone = _drop(store, watch, "gone.mxf", "FAILED", 400)  # shows the prune ran
        unprivileged.give(root)
        (watch / "locked").chmod(0)
        prune = ["ledger", "prune", "--before", "30d", "--config", str(config), "--export"]
        done = unprivileged.run(*prune, str(root / "first.jsonl"), env={})
        (watch / "locked").chmod(0o755)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "removed 1 " in done.stdout, done.stdout
        assert _ids(store) == {hidden}
        assert json.loads((root / "first.jsonl").read_text())["id"] == gone
        # Once it has gone, it goes.
        (watch / "locked" / "kept.mxf").unlink()
        again = unprivileged.run(*prune, str(root / "second.jsonl"), env={})
        assert again.returncode == 0 and "removed 1 " in again.stdout, again.stdout
        assert _ids(store) == set()
    finally:
        store.close()


def test_prune_exports_csv_in_batches_and_narrows_by_state(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH_SIZE", 3)
    watch = tmp_path / "news"
    watch.mkdir()
    done = [_drop(ledger, watch, f"c{i}.mxf", "COMPLETED", 100, source_deleted=True)
            for i in range(8)]  # fmt: skip
    skipped = _drop(ledger, watch, "s.mxf", "SKIPPED", 100)
    export = tmp_path / "done.csv"
    result = retention.prune(ledger, before=time.time() - DAY, export=export, states=["COMPLETED"])
    assert (result.exported, result.deleted, result.transitions) == (8, 8, 16)
    with export.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["id"]) for r in rows] == done
    assert json.loads(rows[0]["transitions"])[-1]["to"] == "COMPLETED"
    assert _ids(ledger) == {skipped}


def test_a_drop_requeued_after_the_export_is_not_deleted(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = tmp_path / "news"
    watch.mkdir()
    failed = _drop(ledger, watch, "f.mxf", "FAILED", 100)
    real_write = retention._write_export

    def export_then_requeue(*args: object) -> int:
        count = real_write(*args)  # type: ignore[arg-type]
        ledger.requeue({failed: "FAILED"}, "operator retry")
        return count

    monkeypatch.setattr(retention, "_write_export", export_then_requeue)
    result = retention.prune(ledger, before=time.time(), export=tmp_path / "x.jsonl")
    assert (result.exported, result.deleted) == (1, 0)
    assert _ids(ledger) == {failed}


def test_status_shows_the_ledger_size_and_rows(ledger: Ledger, tmp_path: Path) -> None:
    _drop(ledger, tmp_path, "a.mxf", "COMPLETED", 1, source_deleted=True)
    size, drops, steps = retention.ledger_size(ledger)
    assert size > 0 and (drops, steps) == (1, 2)


def test_keep_days_needs_an_export_dir(tmp_path: Path) -> None:
    config = write_config(tmp_path, "keep_days = 90\n")
    result = invoke("status", "--config", str(config))
    assert result.exit_code != 0 and "keep_export_dir" in result.output


def test_the_daemon_prunes_by_keep_days(ledger: Ledger, tmp_path: Path) -> None:
    write_config(tmp_path, 'keep_days = 30\nkeep_export_dir = "pruned"\n')
    config = load_config(tmp_path / "ingest.toml")
    assert config.ledger.keep_days == 30 and config.ledger.keep_export_dir == tmp_path / "pruned"
    old = _drop(ledger, tmp_path, "old.mxf", "COMPLETED", 40, source_deleted=True)
    recent = _drop(ledger, tmp_path, "new.mxf", "COMPLETED", 10, source_deleted=True)
    keeper = Retention(config.ledger, now=0.0, first=5.0, every=100.0)
    keeper.tick(4.0)
    keeper.join()
    assert keeper.last is None  # not yet due
    keeper.tick(5.0)
    keeper.join()
    assert keeper.last == "removed 1"
    [export] = (tmp_path / "pruned").iterdir()
    assert [json.loads(line)["id"] for line in export.read_text().splitlines()] == [old]
    assert _ids(ledger) == {recent}
    keeper.tick(50.0)  # the next is a period later
    keeper.join()
    assert len(list((tmp_path / "pruned").iterdir())) == 1


def test_prune_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    store = Ledger.open(pg_url, password=os.environ[PASSWORD_ENV])
    try:
        old = _drop(store, tmp_path, "old.mxf", "COMPLETED", 40, source_deleted=True)
        kept = _drop(store, tmp_path, "kept.mxf", "COMPLETED", 40, source_deleted=False)
        (tmp_path / "kept.mxf").write_bytes(b"DIVA kept it")
        assert set(store.settled_by_path(str(tmp_path))) == {"kept.mxf"}
        export = tmp_path / "out.jsonl"
        done = retention.prune(store, before=time.time() - DAY, export=export)
        assert (done.exported, done.deleted, done.transitions) == (1, 1, 2)
        assert done.vacuum == "VACUUM"
        assert json.loads(export.read_text())["id"] == old
        assert _ids(store) == {kept}
        size, drops, steps = retention.ledger_size(store)
        assert size > 0 and (drops, steps) == (1, 2)
    finally:
        store.close()
