"""The engine against a DIVA that does only what the guide documents (the emulator's
``guide`` profile): each cause of issue 10 ("fail-safe DIVA wire") driven end to end.

Every test runs the real engine against the real emulator over loopback HTTP. Answers are
lost by making DIVA reply later than the client's timeout (``reply_latency``): DIVA does
the work, the client never hears of it, exactly as after a crash mid-call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest import defaults
from ingest.client import DivaClient
from ingest.config import load_config
from ingest.engine import Engine

from .support.deployment import DIVA_PASSWORD_ENV, Deployment, deployed
from .support.emulator import DivaApi, RunningEmulator
from .support.wait import wait_for


@pytest.fixture
def guide(
    emulator_guide: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    """A deployment against the guide-profile emulator, with quick retries."""
    monkeypatch.setenv(DIVA_PASSWORD_ENV, "operator")
    monkeypatch.setattr(defaults, "ENGINE_RETRY_BACKOFF_SECONDS", 0.2)
    monkeypatch.setattr(defaults, "ENGINE_RETRY_BACKOFF_MAX_SECONDS", 0.5)
    with deployed(emulator_guide, tmp_path) as dep:
        yield dep


def calls(dep: Deployment, call: str = "POST /manager/requests/archive") -> int:
    return int(dep.emulator.stats()["calls"].get(call, 0))


def logins(dep: Deployment) -> int:
    return int(dep.emulator.stats()["logins"])


def start_with(dep: Deployment, client: DivaClient) -> Engine:
    """Run the engine in a thread with a client of the test's making."""
    engine = Engine(load_config(dep.config_path), client=client, seed=7)
    dep.engine = engine
    dep.thread = threading.Thread(target=engine.run, daemon=True)
    dep.thread.start()
    return engine


def details(dep: Deployment, row: dict[str, Any]) -> str:
    return "\n".join(h["detail"] for h in dep.history(row["id"]))


def archive_other(dep: Deployment, api: DivaApi, name: str, *, priority: int = 50) -> int:
    """Archive an object of someone else's (a file outside the watch folder)."""
    other = dep.emulator.servers["NAS"] / "other"
    other.mkdir(exist_ok=True)
    (other / f"{name}.mxf").write_bytes(b"not ours " + name.encode())
    response = api.post(
        "/manager/requests/archive",
        {"objectName": name, "collectionName": "NEWS", "components": [f"{name}.mxf"],
         "media": "DISK1", "sourceServer": "NAS", "filePathRoot": "/other", "qos": 0,
         "priority": priority},
    )  # fmt: skip
    response.raise_for_status()
    return int(response.json()["requestId"])


# --- 1 and 3: object info at the guide's route; a vanished drop is reconciled -------------


def test_lost_answer_then_forgotten_request_is_completed_not_skipped_nor_resent(
    guide: Deployment,
) -> None:
    dep = guide
    # DIVA archives at once, deletes the source, forgets the finished request almost at
    # once; its answer to the archive call comes after the client has given up.
    dep.knobs(reply_latency=2.5, forget_after=0.05)
    dep.write_config(timeout_seconds=1, max_attempts=3)
    dep.rule()
    source = dep.watch / "clip.mxf"
    source.write_bytes(os.urandom(50_000))
    dep.start()
    row = dep.wait_state("clip.mxf", "COMPLETED", "SKIPPED", "FAILED", timeout=30)
    assert row["state"] == "COMPLETED", details(dep, row)
    assert row["source_deleted"] == 1
    assert "holds the object with our components" in details(dep, row)
    assert not source.exists()
    assert calls(dep) == 1, "the archive request was sent again"
    assert calls(dep, "GET /manager/object/info") >= 1  # the guide's route, not /objects/info


def test_the_last_attempt_whose_answer_is_lost_is_reconciled_not_failed(
    guide: Deployment,
) -> None:
    dep = guide
    # Attempts are used up by the only attempt; DIVA archives it, the answer is lost.
    dep.knobs(reply_latency=2.5, forget_after=0.05)
    dep.write_config(timeout_seconds=1, max_attempts=1)
    dep.rule()
    source = dep.watch / "last.mxf"
    source.write_bytes(b"the last try")
    dep.start()
    row = dep.wait_state("last.mxf", "COMPLETED", "FAILED", "SKIPPED", timeout=30)
    assert row["state"] == "COMPLETED", details(dep, row)
    assert row["source_deleted"] == 1
    assert calls(dep) == 1


def test_an_object_info_route_that_does_not_exist_is_cannot_confirm_never_absent(
    guide: Deployment,
) -> None:
    dep = guide
    # The route pinned to one the server lacks: every answer is a Spring 404 without a
    # DIVA code, which must never read as "DIVA has no such object".
    dep.knobs(reply_latency=2.5, forget_after=0.05)
    dep.write_config(timeout_seconds=1, max_attempts=3, object_info_path="/objects/info")
    dep.rule(delete_on_source=False)
    source = dep.watch / "keep.mxf"
    source.write_bytes(b"stays put")
    dep.start()
    row = dep.wait_state("keep.mxf", "COMPLETED", "SKIPPED", "FAILED", timeout=30)
    assert row["state"] == "FAILED", details(dep, row)
    assert "cannot confirm with DIVA" in row["error"]
    assert source.exists()
    assert calls(dep) == 1, "resubmitted blind"
    assert calls(dep, "GET /manager/objects/info") == 3  # one per try, then it gave up


def test_an_operator_retry_of_a_drop_diva_archived_meanwhile_completes_it(
    guide: Deployment,
) -> None:
    dep = guide
    dep.knobs(reply_latency=2.5, forget_after=0.05)
    dep.write_config(timeout_seconds=1, max_attempts=2, object_info_path="/objects/info")
    dep.rule()
    source = dep.watch / "gone.mxf"
    source.write_bytes(b"DIVA takes it")
    dep.start()
    row = dep.wait_state("gone.mxf", "FAILED", "COMPLETED", "SKIPPED", timeout=30)
    assert row["state"] == "FAILED" and "cannot confirm" in row["error"]
    assert not source.exists()  # DIVA archived it and deleted it; we could not tell
    dep.stop()
    dep.write_config(timeout_seconds=5, max_attempts=2)  # the admin mends the config
    dep.start()
    cmd = [sys.executable, "-m", "ingest", "retry", str(row["id"]), "--config",
           str(dep.config_path)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "DIVA will be asked whether it archived it" in done.stdout
    row = dep.wait_state("gone.mxf", "COMPLETED", "SKIPPED", timeout=30)
    assert row["state"] == "COMPLETED", details(dep, row)
    assert row["source_deleted"] == 1
    assert calls(dep) == 1


# --- 2: the request list, paged and unfiltered -------------------------------------------


def test_a_live_request_on_a_later_page_is_adopted(guide: Deployment) -> None:
    dep = guide
    with DivaApi(dep.emulator.url, "admin", "admin") as api:
        for i in range(12):
            archive_other(dep, api, f"older{i}")
    # Ours runs long (it is live when reconciled), and its answer is lost.
    dep.knobs(reply_latency=2.5, request_seconds=4.0)
    dep.write_config(timeout_seconds=1, max_attempts=3)
    dep.rule()
    (dep.watch / "late.mxf").write_bytes(b"late page")
    client = DivaClient(dep.emulator.url, "operator", "operator", timeout=1, page_size=5)
    start_with(dep, client)
    row = dep.wait_state("late.mxf", "COMPLETED", "FAILED", "SKIPPED", timeout=40)
    assert row["state"] == "COMPLETED", details(dep, row)
    assert "reconciled: DIVA is running request" in details(dep, row)
    assert calls(dep) == 13  # twelve others, ours once
    assert calls(dep, "GET /manager/requests") >= 3  # 13 requests in pages of 5


# --- 4: transient status codes are retried, never REJECTED -------------------------------


class RefuseFirstArchive(httpx.HTTPTransport):
    """The real emulator, except that the first archive call is refused with a code."""

    def __init__(self, status: int, code: int) -> None:
        super().__init__()
        self.status, self.code, self.refused = status, code, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/requests/archive") and not self.refused:
            self.refused += 1
            body = {"statusCode": self.code, "statusDescription": "injected by the test"}
            return httpx.Response(self.status, json=body, request=request)
        return super().handle_request(request)


@pytest.mark.parametrize("code", [1002, 1003, 1031, 1039])
def test_a_transient_status_on_archive_is_retried(guide: Deployment, code: int) -> None:
    dep = guide
    dep.rule()
    (dep.watch / "retry.mxf").write_bytes(b"try again")
    transport = RefuseFirstArchive(400, code)
    client = DivaClient(dep.emulator.url, "operator", "operator", transport=transport)
    start_with(dep, client)
    row = dep.wait_state("retry.mxf", "COMPLETED", "REJECTED", "FAILED", timeout=30)
    assert row["state"] == "COMPLETED", details(dep, row)
    assert row["attempts"] == 2 and transport.refused == 1
    assert f"({code})" in details(dep, row)


def test_a_permanent_status_on_archive_is_rejected_at_once(guide: Deployment) -> None:
    dep = guide
    dep.rule(media="NO_SUCH_MEDIA")
    source = dep.watch / "bad.mxf"
    source.write_bytes(b"bad media")
    dep.start()
    row = dep.wait_state("bad.mxf", "COMPLETED", "REJECTED", "FAILED", timeout=30)
    assert row["state"] == "REJECTED" and row["status_code"] == 1017
    assert row["attempts"] == 1 and source.exists()


# --- 5: a refusal for the role costs no login ----------------------------------------------


def test_a_role_refusal_is_rejected_without_logging_in_again(guide: Deployment) -> None:
    dep = guide
    dep.rule()
    for name in ("a", "b", "c"):
        (dep.watch / f"{name}.mxf").write_bytes(name.encode())
    before = logins(dep)
    # DIVA's "user" role may read, not archive.
    client = DivaClient(dep.emulator.url, "user", "user")
    start_with(dep, client)
    for name in ("a", "b", "c"):
        row = dep.wait_state(f"{name}.mxf", "REJECTED", "COMPLETED", "FAILED", timeout=30)
        assert row["state"] == "REJECTED" and row["status_code"] == 1035
    assert logins(dep) - before == 1
    assert client.logins == 1


# --- 6: a conflict DIVA finds late goes through reconciliation, then on_conflict ------------


@pytest.mark.parametrize("on_conflict", ["suffix", "fail"])
def test_a_late_conflict_follows_on_conflict(guide: Deployment, on_conflict: str) -> None:
    dep = guide
    with DivaApi(dep.emulator.url, "admin", "admin") as api:
        rid = archive_other(dep, api, "clip")
        wait_for(lambda: api.request(rid)["stateCode"] == 3, timeout=15)
    dep.knobs(late_conflict_rate=1.0)
    dep.rule(on_conflict=on_conflict)
    source = dep.watch / "clip.mxf"
    source.write_bytes(b"ours, same name")
    dep.start()
    row = dep.wait_state("clip.mxf", "COMPLETED", "REJECTED", "FAILED", timeout=30)
    text = details(dep, row)
    assert "1016" in text and "DIVA holds another object named 'clip'" in text
    if on_conflict == "suffix":
        assert row["state"] == "COMPLETED", text
        assert row["object_name"] == "clip_2"
        assert not source.exists()
    else:
        assert row["state"] == "REJECTED", text
        assert row["status_code"] == 1016
        assert source.exists()


# --- 7: edge answers -------------------------------------------------------------------------


def test_partially_completed_is_failed_with_the_files_that_remain(guide: Deployment) -> None:
    dep = guide
    dep.knobs(partial_rate=1.0)
    dep.rule("reels", mode="folder", match=["*"], object_name="{folder}")
    reel = dep.watch / "reel1"
    reel.mkdir()
    for i in range(4):
        (reel / f"f{i}.dpx").write_bytes(os.urandom(1000))
    dep.start()
    row = dep.wait_state("reel1", "COMPLETED", "FAILED", "REJECTED", timeout=30)
    assert row["state"] == "FAILED", details(dep, row)
    remain = sorted(p.name for p in reel.iterdir())
    assert len(remain) == 2  # DIVA stored (and deleted) only the first half
    assert f"2 of 4 file(s) remain in the drop folder: reel1/{remain[0]}" in row["error"]
    assert row["diva_state"] == "DIVA_PARTIALLY_ABORTED"
    assert calls(dep) == 1


def test_a_request_kept_waiting_is_stuck_in_status_and_never_resubmitted(
    guide: Deployment,
) -> None:
    dep = guide
    dep.knobs(wait_rate=1.0, wait_seconds=60)
    dep.write_config(stuck_after_seconds=0.5)
    dep.rule()
    (dep.watch / "queued.mxf").write_bytes(b"waits")
    dep.start()

    def waiting() -> dict[str, Any] | None:
        rows = dep.rows("queued.mxf")
        return rows[-1] if rows and rows[-1]["waiting_since"] else None

    row = wait_for(waiting, timeout=30)
    assert row["state"] == "RUNNING"
    assert row["diva_state"] in ("DIVA_WAITING_FOR_RESOURCES", "DIVA_WAITING_FOR_OPERATOR")

    def status() -> subprocess.CompletedProcess[str] | None:
        cmd = [sys.executable, "-m", "ingest", "status", "--config", str(dep.config_path)]
        done = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=60)
        return done if json.loads(done.stdout)["stuck"]["count"] else None

    done = wait_for(status, timeout=15, interval=0.3)
    assert done.returncode == 1
    doc = json.loads(done.stdout)
    assert doc["stuck"]["requests"][0]["path"] == "queued.mxf"
    assert any("kept waiting by DIVA" in p for p in doc["problems"])
    assert calls(dep) == 1


class CutFirstArchive(httpx.HTTPTransport):
    """The real emulator, except that our first archive call never reaches it: while it is
    on its way another user archives an object of the same name, and our reply is cut
    off (so our call may have reached DIVA, as far as the engine can tell)."""

    def __init__(self, dep: Deployment, name: str) -> None:
        super().__init__()
        self.dep, self.name, self.cut = dep, name, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/requests/archive") and not self.cut:
            self.cut += 1
            with DivaApi(self.dep.emulator.url, "admin", "admin") as api:
                archive_other(self.dep, api, self.name)
            raise httpx.ReadError("connection reset mid-reply (injected by the test)")
        return super().handle_request(request)


def test_a_request_adopted_by_name_completes_only_if_the_object_is_ours(
    guide: Deployment,
) -> None:
    """A live request found by the object's name is followed, but its completion proves
    nothing: only the object it made, holding our files, makes the drop COMPLETED."""
    dep = guide
    dep.knobs(request_seconds=2.0)  # the other's request is still running when found
    dep.rule()
    source = dep.watch / "clip.mxf"
    source.write_bytes(b"ours, same name")
    transport = CutFirstArchive(dep, "clip")
    start_with(dep, DivaClient(dep.emulator.url, "operator", "operator", transport=transport))
    row = dep.wait_state("clip.mxf", "COMPLETED", "REJECTED", "FAILED", timeout=40)
    text = details(dep, row)
    assert "reconciled: DIVA is running request" in text  # it was adopted, then...
    assert row["state"] == "REJECTED", text  # ...found to be another's (on_conflict = fail)
    assert "checking the object is ours" in text
    assert "DIVA holds another object named 'clip'" in text
    assert source.read_bytes() == b"ours, same name"
    assert transport.cut == 1 and calls(dep) == 1  # the other's call only
