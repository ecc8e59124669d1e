"""An SQLite ledger takes one node: a second ``ingest run`` is refused, naming the first,
and a first one killed with SIGKILL does not block its restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from ingest.errors import LedgerError
from ingest.nodes import NodeLock, SingleNodeRefused, lock_path

from .support.deployment import Deployment
from .support.wait import wait_for


def test_a_second_lock_on_one_ledger_is_refused_naming_the_first(tmp_path: Path) -> None:
    ledger = tmp_path / "ingest.db"
    first = NodeLock.acquire(ledger, "alpha")
    with pytest.raises(SingleNodeRefused) as refused:
        NodeLock.acquire(ledger, "beta")
    message = str(refused.value)
    assert f'node "alpha" (pid {os.getpid()} on host {socket.gethostname()}' in message
    assert str(ledger) in message and "PostgreSQL" in message
    assert isinstance(refused.value, LedgerError)  # exit code 8, as any ledger refusal
    first.release()
    NodeLock.acquire(ledger, "beta").release()  # released: free for the next one
    assert oct(lock_path(ledger).stat().st_mode & 0o777) == "0o600"


def test_the_lock_makes_a_first_start_s_ledger_folder_private(tmp_path: Path) -> None:
    """The lock is taken before the ledger opens, so on a first start its folder does
    not exist yet (found by the disk-full chaos test, whose ledger sits in a new folder)."""
    ledger = tmp_path / "not" / "yet" / "ingest.db"
    NodeLock.acquire(ledger, "alpha").release()
    assert oct(ledger.parent.stat().st_mode & 0o777) == "0o700"
    assert lock_path(ledger).exists()


def _lock_holder_pid(dep: Deployment) -> int | None:
    path = lock_path(dep.ledger_path)
    return _pid_in(path.read_text()) if path.exists() else None


def _pid_in(text: str) -> int | None:
    import json

    try:
        return int(json.loads(text)["pid"])
    except (ValueError, KeyError):
        return None


def _refusal(dep: Deployment, log_name: str) -> tuple[int, str]:
    proc = dep.daemon(log_name=log_name)
    code = proc.wait(timeout=60)
    return code, (dep.root / log_name).read_text()


def test_second_daemon_refused_and_a_sigkilled_one_restarts(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = deployment
    dep.rule()
    dep.write_config()
    monkeypatch.setenv("INGEST_NODE", "edit-suite-1")
    first = dep.daemon(log_name="first.log")
    try:
        wait_for(lambda: _lock_holder_pid(dep) == first.pid, timeout=60)
        (dep.watch / "a.mxf").write_bytes(b"x" * 1000)
        wait_state = dep.wait_state("a.mxf", "COMPLETED", timeout=60)
        assert wait_state["state"] == "COMPLETED"

        monkeypatch.setenv("INGEST_NODE", "edit-suite-2")
        code, log = _refusal(dep, "second.log")
        assert code == 8, log
        assert f'node "edit-suite-1" (pid {first.pid} on host {socket.gethostname()}' in log
        assert first.poll() is None  # the first one runs on, untouched

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        # The dead one's file still names it, but its lock died with it.
        assert _lock_holder_pid(dep) == first.pid
        restarted = dep.daemon(log_name="restarted.log")
        try:
            wait_for(lambda: _lock_holder_pid(dep) == restarted.pid, timeout=60)
            (dep.watch / "b.mxf").write_bytes(b"y" * 1000)
            assert dep.wait_state("b.mxf", "COMPLETED", timeout=60)["state"] == "COMPLETED"
            assert restarted.poll() is None
        finally:
            _stop(restarted)
    finally:
        _stop(first)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
