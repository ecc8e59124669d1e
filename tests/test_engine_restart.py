"""Crash safety: ``ingest run`` killed with SIGKILL at the worst moments, then restarted.

After every restart each drop ends COMPLETED exactly once in DIVA: one archive request and
one object per drop, no ``_2`` suffix.
"""

from __future__ import annotations

import collections
import signal
import subprocess

from .conftest import Deployment, wait_for


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def finish(dep: Deployment, names: list[str]) -> None:
    """Restart the daemon and let it finish; then check exactly-once in DIVA."""
    proc = dep.daemon(log_name="restart.log")
    try:
        for name in names:
            dep.wait_state(f"{name}.mxf", "COMPLETED", timeout=60)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    requests = collections.Counter(r["objectName"] for r in dep.archive_requests())
    assert requests == collections.Counter(names), requests
    assert sorted(o["objectName"] for o in dep.objects()) == sorted(names)
    for name in names:
        assert [r["state"] for r in dep.rows(f"{name}.mxf")] == ["COMPLETED"]
        assert not (dep.watch / f"{name}.mxf").exists()


def test_killed_right_after_the_intent_commit(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    (dep.watch / "intent.mxf").write_bytes(b"intent")
    dep.knobs(reply_latency=30)  # DIVA takes the request, its answer is slow to come back
    proc = dep.daemon()
    dep.wait_state("intent.mxf", "SUBMITTING", timeout=60)
    wait_for(lambda: dep.archive_requests(), timeout=15)
    kill(proc)  # intent committed, request at DIVA, request id never recorded
    dep.knobs(reply_latency=0)
    finish(dep, ["intent"])
    history = [h["detail"] for h in dep.history(dep.rows("intent.mxf")[0]["id"])]
    assert any(d.startswith("reconciled") for d in history), history


def test_killed_right_after_the_archive_call(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    dep.knobs(request_seconds=3)
    (dep.watch / "called.mxf").write_bytes(b"called")
    proc = dep.daemon()
    dep.wait_state("called.mxf", "SUBMITTED", "RUNNING", timeout=60)
    kill(proc)
    finish(dep, ["called"])


def test_killed_while_requests_run(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    dep.knobs(request_seconds=2)
    names = [f"run{i}" for i in range(6)]
    for name in names:
        (dep.watch / f"{name}.mxf").write_bytes(name.encode())
    proc = dep.daemon()
    wait_for(lambda: any(r["state"] in ("SUBMITTED", "RUNNING") for r in dep.rows()), timeout=60)
    kill(proc)
    finish(dep, names)


def test_sigterm_stops_cleanly_and_the_next_start_resumes(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    dep.knobs(request_seconds=3)
    (dep.watch / "term.mxf").write_bytes(b"term")
    proc = dep.daemon()
    dep.wait_state("term.mxf", "SUBMITTED", "RUNNING", timeout=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    log = (dep.root / "daemon.log").read_text()
    assert "stopping after the step in hand" in log and "engine stopped" in log
    finish(dep, ["term"])
