"""``ingest retry``: failed drops back in the queue, in one transaction, said drop by drop."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from .support.ledgers import Setup, invoke, write_config


def row(setup: Setup, name: str) -> dict[str, Any]:
    conn = sqlite3.connect(setup.ledger)
    conn.row_factory = sqlite3.Row
    try:
        found = conn.execute("SELECT * FROM drops WHERE id = ?", (setup.ids[name],)).fetchone()
        return dict(found)
    finally:
        conn.close()


def last_step(setup: Setup, name: str) -> tuple[str, str, str]:
    conn = sqlite3.connect(setup.ledger)
    try:
        step: tuple[str, str, str] = conn.execute(
            "SELECT from_state, to_state, detail FROM transitions WHERE drop_id = ? "
            "ORDER BY id DESC LIMIT 1",
            (setup.ids[name],),
        ).fetchone()
        return step
    finally:
        conn.close()


def test_retry_by_id_requeues(setup: Setup) -> None:
    before = time.time()
    result = setup.run("retry", str(setup.ids["failed"]), str(setup.ids["rejected"]))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"requeued: drop {setup.ids['failed']} news b.mxf: requeued (was FAILED)"
    assert lines[1] == f"requeued: drop {setup.ids['rejected']} news c.mxf: requeued (was REJECTED)"
    assert lines[2] == "2 of 2 requeued"
    failed = row(setup, "failed")
    assert failed["state"] == "RETRY_WAIT"
    assert failed["attempts"] == 0
    assert failed["error"] is None
    assert before <= failed["next_attempt_at"] <= time.time()
    assert failed["updated_at"] == failed["next_attempt_at"]
    assert failed["request_id"] == 102  # the history of the old attempt stays
    assert last_step(setup, "failed") == ("FAILED", "RETRY_WAIT", "retry requested by an operator")
    assert last_step(setup, "rejected")[:2] == ("REJECTED", "RETRY_WAIT")
    # the requeued drops now show as waiting for their retry
    doc = json.loads(setup.run("status", "--json").stdout)
    assert doc["states"]["RETRY_WAIT"] == 3
    assert doc["failures_24h"]["count"] == 0


def test_retry_says_why_it_did_not(setup: Setup) -> None:
    (setup.news / "b.mxf").unlink()
    ids = [setup.ids[n] for n in ("done", "failed", "old_failed", "dup_failed")]
    result = setup.run("retry", *map(str, ids), "424242")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith(f"not retryable: drop {setup.ids['done']} news a.mxf: ")
    assert "not in a retryable state: COMPLETED" in lines[0]
    assert lines[1] == (
        f"files gone: drop {setup.ids['failed']} news b.mxf: the file {setup.news}/b.mxf is gone"
    )
    assert lines[2].startswith(f"files gone: drop {setup.ids['old_failed']} news old.mxf")
    assert lines[3] == (
        f"superseded: drop {setup.ids['dup_failed']} news dup.mxf: "
        f"a newer drop {setup.ids['dup_done']} (COMPLETED) exists for this path"
    )
    assert lines[4] == "not found: drop 424242: no such drop in the ledger"
    assert lines[5] == "0 of 5 requeued"
    assert row(setup, "failed")["state"] == "FAILED"  # nothing changed


def test_retry_mixed_is_exit_1_but_requeues_what_it_can(setup: Setup) -> None:
    result = setup.run("retry", str(setup.ids["failed"]), str(setup.ids["running"]))
    assert result.exit_code == 1
    assert row(setup, "failed")["state"] == "RETRY_WAIT"
    assert row(setup, "running")["state"] == "RUNNING"
    assert result.output.splitlines()[-1] == "1 of 2 requeued"


def test_skipped_only_by_id(setup: Setup) -> None:
    assert setup.run("retry", str(setup.ids["skipped"])).exit_code == 0
    assert row(setup, "skipped")["state"] == "RETRY_WAIT"


def test_folder_drops(setup: Setup, tmp_path: Path) -> None:
    conn = sqlite3.connect(setup.ledger)
    with conn:
        conn.execute(
            "UPDATE drops SET state = 'FAILED' WHERE id IN (?, ?)",
            (setup.ids["submitted"], setup.ids["marker"]),
        )
    conn.close()
    result = setup.run("retry", str(setup.ids["submitted"]), str(setup.ids["marker"]))
    assert result.exit_code == 1
    assert "requeued: drop" in result.output  # REEL_1 is there
    assert f"the folder {setup.dpx}/REEL_2 is gone" in result.output


def test_retry_failed(setup: Setup) -> None:
    result = setup.run("retry", "--failed", "--json")
    assert result.exit_code == 1  # old.mxf is gone
    doc = json.loads(result.stdout)
    outcomes = {d["id"]: d["outcome"] for d in doc["drops"]}
    # dup_failed is left out: a newer drop of that path completed since
    assert outcomes == {
        setup.ids["rejected"]: "requeued",
        setup.ids["failed"]: "requeued",
        setup.ids["old_failed"]: "files gone",
    }
    assert row(setup, "dup_failed")["state"] == "FAILED"
    assert row(setup, "skipped")["state"] == "SKIPPED"
    again = setup.run("retry", "--failed")
    assert again.exit_code == 1
    assert again.output.splitlines() == [
        f"files gone: drop {setup.ids['old_failed']} news old.mxf: "
        f"the file {setup.news}/old.mxf is gone",
        "0 of 1 requeued",
    ]


def test_retry_failed_by_rule(setup: Setup) -> None:
    result = setup.run("retry", "--failed", "--rule", "dpx")
    assert result.exit_code == 0
    assert result.output == "nothing to retry: no FAILED or REJECTED drops\n"
    (setup.news / "old.mxf").write_bytes(b"back")
    result = setup.run("retry", "--failed", "--rule", "news")
    assert result.exit_code == 0
    assert result.output.splitlines()[-1] == "3 of 3 requeued"


def test_dry_run_changes_nothing(setup: Setup) -> None:
    result = setup.run("retry", "--failed", "--dry-run")
    assert f"would requeue: drop {setup.ids['failed']} news b.mxf" in result.output
    assert result.exit_code == 1
    assert row(setup, "failed")["state"] == "FAILED"
    assert row(setup, "rejected")["state"] == "REJECTED"


def test_a_state_change_between_look_and_write_is_respected(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon may move a drop while retry checks files: the update then touches nothing."""
    from ingest.commands import retry as retry_module

    real_plan = retry_module._plan

    def plan_then_daemon_moves(*args: Any) -> Any:
        outcomes = real_plan(*args)
        conn = sqlite3.connect(setup.ledger)
        with conn:
            conn.execute(
                "UPDATE drops SET state = 'COMPLETED' WHERE id = ?", (setup.ids["failed"],)
            )
        conn.close()
        return outcomes

    monkeypatch.setattr(retry_module, "_plan", plan_then_daemon_moves)
    result = setup.run("retry", str(setup.ids["failed"]))
    assert result.exit_code == 1
    assert "changed: drop" in result.output
    assert "its state changed meanwhile" in result.output
    assert row(setup, "failed")["state"] == "COMPLETED"


@pytest.mark.parametrize(
    "args", [[], ["1", "--failed"], ["1", "--rule", "news"], ["--json", "1", "--nl"]]
)
def test_usage_errors(setup: Setup, args: list[str]) -> None:
    result = setup.run("retry", *args)
    assert result.exit_code == 2, result.output


def test_retry_without_a_ledger(tmp_path: Path) -> None:
    result = invoke("retry", "1", "--config", str(write_config(tmp_path)))
    assert result.exit_code == 8
    assert result.stderr.startswith("error: no ledger at")
