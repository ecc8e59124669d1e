"""Crash safety: ``ingest run`` killed with SIGKILL at the worst moments, then restarted.

After every restart each drop ends COMPLETED exactly once in DIVA: one archive request and
one object per drop, no ``_2`` suffix.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
from collections.abc import Callable

from .support.deployment import Deployment
from .support.wait import wait_for

#: DIVA's request states that end a request.
FINISHED = {"DIVA_COMPLETED", "DIVA_ABORTED", "DIVA_CANCELLED", "DIVA_PARTIALLY_ABORTED",
            "DIVA_PARTIALLY_COMPLETED"}  # fmt: skip


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


def held(dep: Deployment, name: str) -> None:
    """Write ``name``.mxf big enough that DIVA copies it for a minute: DIVA is held to
    1 KiB/s (``release`` lifts it), so a request stays in flight for as long as the test
    needs, however slow the machine."""
    dep.knobs(throughput=1024)
    (dep.watch / f"{name}.mxf").write_bytes(os.urandom(64 * 1024))


def release(dep: Deployment) -> None:
    dep.knobs(throughput=0)  # read at every chunk: held copies finish at once


def until_landed(attempt: Callable[[int], bool], tries: int = 3) -> None:
    """Run the set-up and kill, ``attempt(n)``, until the kill lands where the test means
    it to (``attempt`` says, from the ledger the killed daemon left): a kill that came
    too late would leave a restart with nothing to do, and the test would pass on less."""
    for n in range(tries):
        if attempt(n):
            return
    raise AssertionError(f"the kill never landed mid-submission in {tries} tries")


def test_killed_right_after_the_intent_commit(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    names: list[str] = []

    def attempt(n: int) -> bool:
        name = f"intent{n}"
        names.append(name)
        (dep.watch / f"{name}.mxf").write_bytes(b"intent")
        dep.knobs(reply_latency=30)  # DIVA takes the request, its answer is slow to come back
        proc = dep.daemon()
        dep.wait_state(f"{name}.mxf", "SUBMITTING", timeout=60)
        wait_for(lambda: name in {r["objectName"] for r in dep.archive_requests()}, timeout=15)
        kill(proc)  # intent committed, request at DIVA, request id never recorded
        dep.knobs(reply_latency=0)
        [row] = dep.rows(f"{name}.mxf")
        return row["state"] == "SUBMITTING" and row["request_id"] is None

    until_landed(attempt)
    finish(dep, names)
    history = [h["detail"] for h in dep.history(dep.rows(f"{names[-1]}.mxf")[0]["id"])]
    assert any(d.startswith("reconciled") for d in history), history


def test_killed_right_after_the_archive_call(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    names: list[str] = []

    def attempt(n: int) -> bool:
        name = f"called{n}"
        names.append(name)
        held(dep, name)
        proc = dep.daemon()
        dep.wait_state(f"{name}.mxf", "SUBMITTED", "RUNNING", timeout=60)
        kill(proc)
        [row] = dep.rows(f"{name}.mxf")
        running = [r for r in dep.archive_requests() if r["objectName"] == name]
        release(dep)
        # The daemon died knowing the request id, and DIVA was still at work on it.
        unfinished = [r["stateName"] not in FINISHED for r in running] == [True]
        return row["state"] in ("SUBMITTED", "RUNNING") and unfinished

    until_landed(attempt)
    finish(dep, names)


def test_killed_while_requests_run(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    names: list[str] = []

    def attempt(n: int) -> bool:
        batch = [f"run{n}_{i}" for i in range(6)]
        names.extend(batch)
        for name in batch:
            held(dep, name)
        proc = dep.daemon()
        wait_for(
            lambda: any(r["state"] in ("SUBMITTED", "RUNNING") for r in dep.rows()), timeout=60
        )
        kill(proc)
        release(dep)
        return any(
            r["state"] in ("SUBMITTED", "RUNNING")
            for name in batch
            for r in dep.rows(f"{name}.mxf")
        )

    until_landed(attempt)
    finish(dep, names)


def test_sigterm_stops_cleanly_and_the_next_start_resumes(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    held(dep, "term")
    proc = dep.daemon()
    dep.wait_state("term.mxf", "SUBMITTED", "RUNNING", timeout=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    # Stopped with its request still in flight at DIVA: the next start has it to resume.
    assert [r["state"] for r in dep.rows("term.mxf")] in (["SUBMITTED"], ["RUNNING"])
    release(dep)
    log = (dep.root / "daemon.log").read_text()
    assert "stopping after the step in hand" in log and "engine stopped" in log
    finish(dep, ["term"])
