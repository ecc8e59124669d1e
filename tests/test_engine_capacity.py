"""In-flight places: a drop that already holds one never waits for another.

When DIVA forgets the requests in flight (a finished request leaves its queue) while the
daemon is down, every drop holding a place at the restart must be asked about, though no
place is free: else a full house of them waits for ever, and nothing behind them moves.
"""

from __future__ import annotations

import pytest

from ingest import defaults

from .support.deployment import Deployment
from .support.wait import wait_for


def test_drops_holding_every_place_are_reconciled_after_diva_forgot_them(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.write_config(max_in_flight=2)
    dep.knobs(request_seconds=2.0)
    dep.rule()
    names = [f"c{i}.mxf" for i in range(4)]
    for name in names:
        (dep.watch / name).write_bytes(name.encode() * 100)
    dep.start()

    def two_running() -> list[dict[str, object]] | None:
        rows = [r for r in dep.rows() if r["state"] == "RUNNING"]
        return rows if len(rows) == 2 else None

    running = wait_for(two_running, timeout=30)
    # DIVA finishes them while the daemon is away, and forgets them at once.
    dep.knobs(forget_after=0.01)
    dep.stop()
    wait_for(lambda: len(dep.objects()) == 2, timeout=30)
    dep.start()
    for name in names:
        row = dep.wait_state(name, "COMPLETED", "FAILED", "SKIPPED", timeout=40)
        assert row["state"] == "COMPLETED", row
    for r in running:
        assert "holds the object with our components" in " ".join(
            h["detail"] for h in dep.history(int(str(r["id"])))
        )


def test_drops_restarted_mid_submission_in_every_place_are_reconciled(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = deployment
    monkeypatch.setattr(defaults, "ENGINE_STOP_GRACE_SECONDS", 0.2)
    dep.write_config(max_in_flight=2)
    # DIVA takes each archive at once and answers it only after the daemon has gone.
    dep.knobs(reply_latency=8.0)
    dep.rule()
    names = [f"s{i}.mxf" for i in range(4)]
    for name in names:
        (dep.watch / name).write_bytes(name.encode() * 100)
    dep.start()

    def two_submitting() -> list[dict[str, object]] | None:
        rows = [r for r in dep.rows() if r["state"] == "SUBMITTING"]
        return rows if len(rows) == 2 else None

    wait_for(two_submitting, timeout=30)
    wait_for(lambda: len(dep.archive_requests()) == 2, timeout=30)
    dep.stop()
    assert len([r for r in dep.rows() if r["state"] == "SUBMITTING"]) == 2
    dep.knobs(reply_latency=0.0)
    dep.start()
    for name in names:
        row = dep.wait_state(name, "COMPLETED", "FAILED", "SKIPPED", timeout=40)
        assert row["state"] == "COMPLETED", row
    assert len(dep.archive_requests()) == 4  # the two in doubt were not sent again
