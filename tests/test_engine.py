"""The engine end to end: real folders, the real emulator over loopback HTTP, the real ledger."""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest import defaults, watch
from ingest.client import DivaClient
from ingest.emulator.server import EmulatorProcess
from ingest.engine.core import Engine
from ingest.rules import RuleSet

from .support.deployment import DIVA_PASSWORD_ENV, Deployment
from .support.emulator import md5
from .support.wait import wait_for
from .support.watches import refuse_watches


def test_a_file_drop_is_archived_then_deleted_by_diva(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    (dep.watch / "sub").mkdir()
    source = dep.watch / "sub" / "clip.mxf"
    source.write_bytes(os.urandom(300_000))
    digest = md5(source)
    (dep.watch / "notes.txt").write_text("not matched")
    dep.start()
    row = dep.wait_state("sub/clip.mxf", "COMPLETED")
    assert row["object_name"] == "clip" and row["collection"] == "NEWS"
    assert row["qos"] == 0x100 and row["source_deleted"] == 1 and row["request_id"]
    assert json.loads(row["body"])["components"] == ["sub/clip.mxf"]
    assert dep.stored()["clip"] == {"sub/clip.mxf": digest}
    assert not source.exists()
    assert (dep.watch / "notes.txt").exists()
    steps = [(h["from_state"], h["to_state"]) for h in dep.history(row["id"])]
    assert steps[:3] == [(None, "DETECTED"), ("DETECTED", "SUBMITTING"),
                         ("SUBMITTING", "SUBMITTED")]  # fmt: skip
    assert steps[-1][1] == "COMPLETED"
    assert dep.rows("notes.txt") == []


def test_the_service_logs_in_at_start_and_its_first_drop_uses_that_login(
    deployment: Deployment,
) -> None:
    """A login hashes a password at DIVA (35-250 ms on the emulator): the service logs in
    as it starts, so its first drop does not wait for it, and the guide's one login per
    process still holds. A run ``--until-idle`` with nothing to do makes no call at all."""
    dep = deployment
    dep.rule()
    before = dep.emulator.stats()["logins"]
    dep.start(until_idle=True)
    assert dep.thread is not None
    dep.thread.join(timeout=30)
    dep.stop()
    assert dep.emulator.stats()["logins"] == before
    dep.start()
    wait_for(lambda: dep.emulator.stats()["logins"] == before + 1, 30)
    (dep.watch / "first.mxf").write_bytes(b"first")
    dep.wait_state("first.mxf", "COMPLETED")
    assert dep.emulator.stats()["logins"] == before + 1


def test_a_service_freezes_what_its_start_made_and_thaws_it_as_it_stops(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full collection walking every start-up object held a turn (and the drops due in
    it) for 20-70 ms: a service freezes them once started, and again once its login is
    over. Its engine thread, waiting for the GIL up to 5 ms each time it gave it up, held
    turns of 8-15 ms: a service switches threads ten times as often. An engine run inside
    a longer process (as here) leaves the interpreter as it found it; a batch run changes
    neither."""
    dep = deployment
    dep.rule()
    switch = sys.getswitchinterval()
    assert gc.get_freeze_count() == 0
    dep.start(until_idle=True)
    assert dep.thread is not None
    dep.thread.join(timeout=30)
    dep.stop()
    assert gc.get_freeze_count() == 0
    assert sys.getswitchinterval() == switch

    made = httpx.Client

    def first_made(*args: Any, **kwargs: Any) -> httpx.Client:
        """In a fresh process the pool's making imports httpcore (0.1 s): after the start."""
        time.sleep(0.2)
        return made(*args, **kwargs)

    monkeypatch.setattr(httpx, "Client", first_made)
    dep.start()
    (dep.watch / "after.mxf").write_bytes(b"after the start")
    dep.wait_state("after.mxf", "COMPLETED")
    frozen = gc.get_freeze_count()
    assert frozen > 1000, frozen
    # The DIVA client's pool, made by the login after the start (its first use imports
    # httpcore), is frozen too: the engine froze again once the login was over.
    engine = dep.engine
    assert engine is not None and engine.client._made is not None
    assert not any(o is engine.client._made for o in gc.get_objects())
    assert sys.getswitchinterval() == pytest.approx(defaults.ENGINE_GIL_SWITCH_SECONDS)
    assert switch > defaults.ENGINE_GIL_SWITCH_SECONDS
    dep.stop()
    assert gc.get_freeze_count() == 0
    assert sys.getswitchinterval() == switch


def test_a_new_files_events_in_one_turn_match_the_rules_once(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new file's create, writes and close reach the engine together. Each matched the
    rules (a realpath each) until the turn's look put the file in the settle timer: now
    one match per file and turn, then one as its drop is read, one before it is sent, and
    one for the event of DIVA deleting it."""
    dep = deployment
    dep.rule()
    matched: Counter[str] = Counter()
    match = RuleSet.match

    def counted(self: RuleSet, path: Path) -> Any:
        matched[path.name] += 1
        return match(self, path)

    monkeypatch.setattr(RuleSet, "match", counted)
    armed, holding, released = threading.Event(), threading.Event(), threading.Event()
    turn = Engine._turn

    def held(self: Engine) -> None:
        if armed.is_set() and not released.is_set():
            holding.set()
            released.wait(30)
        turn(self)

    monkeypatch.setattr(Engine, "_turn", held)
    engine = dep.start()
    wait_for(lambda: dep.watcher() is not None, 30)
    armed.set()
    wait_for(holding.is_set, 10)  # the next turn waits: the file's events queue up
    with open(dep.watch / "events.mxf", "wb") as f:
        for _ in range(4):
            f.write(b"x" * 1000)
            f.flush()
    # its create, writes and close (inotify may fold the writes into one event)
    wait_for(lambda: engine._queue.qsize() >= 3, 10)
    released.set()
    dep.wait_state("events.mxf", "COMPLETED")
    assert matched["events.mxf"] == 4


def test_a_service_stopped_during_its_login_leaves_no_connection_open(
    deployment: Deployment,
) -> None:
    """The login at start runs on a thread of its own: a stop in the middle of it waits
    for it, rather than closing its connection under it (a socket left open, which the
    suite's warnings-as-errors turn into a failure). Without the wait, about half of
    these stops left one."""
    dep = deployment
    dep.rule()
    for _ in range(8):
        dep.start()
        dep.stop()
        gc.collect()  # an unclosed socket warns as it is collected


def test_a_refused_login_at_start_is_said_at_once_without_the_password(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    dep = deployment
    dep.rule()
    monkeypatch.setenv(DIVA_PASSWORD_ENV, "Wr0ng-Secret")
    with caplog.at_level("INFO", logger="ingest"):
        dep.start()
        wait_for(lambda: "DIVA login at start failed" in caplog.text, 30)
    said = [r.getMessage() for r in caplog.records if "login at start" in r.getMessage()]
    assert said == [
        "DIVA login at start failed: DIVA refused the login of user 'operator' (HTTP 401): "
        "check the username and password"
    ], said
    assert [r.levelname for r in caplog.records if "login at start" in r.getMessage()] == [
        "WARNING"
    ]
    assert "Wr0ng-Secret" not in caplog.text


def test_without_delete_on_source_the_file_stays_and_is_not_archived_again(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.rule(delete_on_source=False)
    (dep.watch / "keep.mxf").write_bytes(b"keep me")
    dep.start()
    row = dep.wait_state("keep.mxf", "COMPLETED")
    assert row["qos"] == 0 and row["source_deleted"] == 0
    assert (dep.watch / "keep.mxf").exists()
    dep.wait_scan()
    assert len(dep.rows("keep.mxf")) == 1
    assert len(dep.archive_requests()) == 1


def test_a_start_says_what_its_first_scan_and_the_ledgers_read_cost(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    """An admin of a large tree reads in the log where a start's time went: the first
    scan of each folder (files, folders, seconds) and the read of what the ledger
    settled there. The scans after it (a rescan, a poll) say nothing at INFO."""
    dep = deployment
    dep.rule(delete_on_source=False)
    (dep.watch / "a").mkdir()
    for name in ("one.mxf", "a/two.mxf", "a/notes.txt"):
        (dep.watch / name).write_bytes(b"x")

    def first_scans() -> list[str]:
        return [r.getMessage() for r in caplog.records if "first scan" in r.getMessage()]

    with caplog.at_level("INFO", logger="ingest"):
        dep.start(until_idle=True)
        assert dep.thread is not None
        dep.thread.join(timeout=60)
        dep.stop()
        assert [len(dep.rows(p)) for p in ("one.mxf", "a/two.mxf")] == [1, 1]
        said = first_scans()
        assert len(said) == 1
        assert f"{dep.watch}: first scan: 3 files in 2 folders in " in said[0]
        assert "the ledger's 0 settled paths read in " in said[0]
        caplog.clear()
        dep.start()  # a service: its rescans come every 2 s
        dep.wait_scan()  # its first scan
        dep.wait_scan()  # and a rescan
        said = first_scans()
    assert len(said) == 1, said
    assert "the ledger's 2 settled paths read in " in said[0]


def test_files_dropped_while_the_daemon_was_down_are_found(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    for i in range(5):
        (dep.watch / f"early{i}.mxf").write_bytes(b"e" * (i + 1))
    dep.start()
    for i in range(5):
        dep.wait_state(f"early{i}.mxf", "COMPLETED")
    assert sorted(o["objectName"] for o in dep.objects()) == [f"early{i}" for i in range(5)]


#: The growing file's settle window: 20 times the copy's 0.1 s pace, so that a writer
#: held up by a loaded machine (both cores busy, the engine in this same process) still
#: writes within it; a pause as long as the window would make the engine right to go.
GROWING_SETTLE = 2.0


def test_a_growing_file_is_not_submitted_before_it_settles(deployment: Deployment) -> None:
    dep = deployment
    dep.rule(settle_seconds=GROWING_SETTLE)
    dep.start()
    path = dep.watch / "growing.mxf"
    last_write = 0.0
    longest = 0.0
    with path.open("wb") as fh:
        for _ in range(30):  # ~3 s of a slow copy, longer than the settle window
            fh.write(os.urandom(1000))
            fh.flush()
            if last_write:
                longest = max(longest, time.time() - last_write)
            last_write = time.time()
            states = [r["state"] for r in dep.rows("growing.mxf")]
            assert all(s == "DETECTED" for s in states), (states, f"longest pause {longest} s")
            time.sleep(0.1)  # the copy's pace, not a wait for a condition
    row = dep.wait_state("growing.mxf", "COMPLETED")
    submitting = [h for h in dep.history(row["id"]) if h["to_state"] == "SUBMITTING"]
    assert len(submitting) == 1
    assert submitting[0]["at"] >= last_write + GROWING_SETTLE
    [component] = next(o for o in dep.objects() if o["objectName"] == "growing")["components"]
    assert component["size"] == 30_000


def test_a_folder_drop_waits_for_its_marker(deployment: Deployment) -> None:
    dep = deployment
    dep.rule("dpx", mode="folder", match=["*"], ready_marker="_COMPLETE",
             object_name="{folder}", settle_seconds=0.5)  # fmt: skip
    dep.start()
    reel = dep.watch / "reel1"
    reel.mkdir()
    for i in range(30):
        (reel / f"frame{i:05d}.dpx").write_bytes(i.to_bytes(4, "big") * 100)
    (reel / ".DS_Store").write_bytes(b"litter")
    row = wait_for(
        lambda: (r := dep.rows("reel1")) and (r[-1]["error"] or "").startswith("waiting") and r[-1]
    )
    assert row["state"] == "DETECTED"
    assert dep.archive_requests() == []
    (reel / "_COMPLETE").touch()
    row = dep.wait_state("reel1", "COMPLETED")
    assert row["kind"] == "folder" and row["file_count"] == 30
    stored = dep.stored()["reel1"]
    assert sorted(stored) == [f"reel1/frame{i:05d}.dpx" for i in range(30)]
    assert "reel1/_COMPLETE" not in stored  # the marker is never archived...
    # ...and once DIVA deleted the reel, ingest removes the marker (a stale one would make
    # the next reel of that name ready at once), but nothing it was not asked to archive.
    wait_for(lambda: [p.name for p in reel.iterdir()] == [".DS_Store"])


def test_a_folder_moved_in_with_its_content_is_found(
    deployment: Deployment, tmp_path: Path
) -> None:
    dep = deployment
    dep.rule("dpx", mode="folder", match=["reel*"], object_name="{folder}")
    dep.start()
    staging = tmp_path / "staging" / "reel9"
    staging.mkdir(parents=True)
    for i in range(10):
        (staging / f"f{i}.dpx").write_bytes(b"x" * i)
    # Same filesystem as the watch folder? tmp_path and the emulator's servers both live
    # under pytest's base temp folder, so this is a rename: one event for the whole folder.
    staging.rename(dep.watch / "reel9")
    row = dep.wait_state("reel9", "COMPLETED")
    assert row["file_count"] == 10


@pytest.mark.parametrize(
    ("keys", "code"),
    [({"media": "NO_SUCH_MEDIA"}, 1017), ({"source_server": "NO_SUCH_SERVER"}, 1018)],
)
def test_permanent_refusals_are_rejected_and_leave_the_file(
    deployment: Deployment, keys: dict[str, str], code: int
) -> None:
    dep = deployment
    dep.rule(**keys)
    (dep.watch / "bad.mxf").write_bytes(b"bad")
    dep.start()
    row = dep.wait_state("bad.mxf", "REJECTED")
    assert row["status_code"] == code and str(code) in row["error"]
    assert (dep.watch / "bad.mxf").read_bytes() == b"bad"
    assert row["attempts"] == 1
    dep.wait_scan()
    assert len(dep.rows("bad.mxf")) == 1  # not submitted again until it changes


@pytest.mark.parametrize(
    ("on_conflict", "state", "name"),
    [("fail", "REJECTED", "dup"), ("skip", "SKIPPED", "dup"), ("suffix", "COMPLETED", "dup_2")],
)
def test_an_object_that_exists_in_diva(
    deployment: Deployment, on_conflict: str, state: str, name: str
) -> None:
    dep = deployment
    (dep.watch / "first.mxf").write_bytes(b"first")
    with DivaClient(dep.emulator.url, "operator", "operator") as diva:
        rid = diva.archive({"objectName": "dup", "collectionName": "NEWS", "media": "DISK1",
                            "components": ["first.mxf"], "sourceServer": "NAS",
                            "filePathRoot": "/news", "qos": 0})  # fmt: skip
        wait_for(lambda: diva.request(rid).state.finished)
    (dep.watch / "first.mxf").unlink()
    dep.rule(on_conflict=on_conflict)
    (dep.watch / "dup.mxf").write_bytes(b"second")
    dep.start()
    row = dep.wait_state("dup.mxf", state)
    assert row["object_name"] == name
    assert (dep.watch / "dup.mxf").exists() is (state != "COMPLETED")
    names = sorted(o["objectName"] for o in dep.objects())
    assert names == (["dup", "dup_2"] if on_conflict == "suffix" else ["dup"])


def test_aborted_requests_are_retried_then_failed_with_the_file_in_place(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.write_config(max_attempts=2)
    dep.rule()
    dep.knobs(abort_rate=1)
    (dep.watch / "doomed.mxf").write_bytes(b"doomed")
    dep.start()
    row = dep.wait_state("doomed.mxf", "FAILED", timeout=60)
    assert row["attempts"] == 2
    assert row["abort_reason"] in ("DIVA_AR_DRIVE", "DIVA_AR_RESOURCES")
    assert row["diva_state"] == "DIVA_ABORTED"
    assert (dep.watch / "doomed.mxf").read_bytes() == b"doomed"
    assert dep.objects() == []
    states = [h["to_state"] for h in dep.history(row["id"])]
    assert states.count("SUBMITTING") == 2 and "RETRY_WAIT" in states


def test_a_rule_added_while_running_is_watched(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    dep.start()
    other = dep.emulator.servers["NAS"] / "promos"
    other.mkdir()
    dep.rule("promos", watch=str(other), file_path_root="/promos", match=["*.mov"])
    wait_for(lambda: any(f == str(other) for f in dep.engine.folders))
    (other / "promo.mov").write_bytes(b"promo")
    row = dep.wait_state("promo.mov", "COMPLETED")
    assert row["rule"] == "promos"


def test_an_invalid_rule_edit_keeps_the_old_rules_working(deployment: Deployment) -> None:
    dep = deployment
    path = dep.rule()
    dep.start()
    path.write_text(path.read_text() + "settle_seconds = 'soon'\n")  # duplicate key: bad TOML
    (dep.watch / "still.mxf").write_bytes(b"still works")
    dep.wait_state("still.mxf", "COMPLETED")


def test_polling_mode(deployment: Deployment) -> None:
    dep = deployment
    dep.rule(observer="polling")
    dep.start()
    (dep.watch / "polled.mxf").write_bytes(b"p")
    dep.wait_state("polled.mxf", "COMPLETED")
    watcher = dep.watcher()
    assert watcher is not None and watcher["observer"] == "polling"
    assert dep.engine.folders[str(dep.watch)].watcher is None


def test_a_mount_blip_loses_nothing_and_archives_nothing_twice(deployment: Deployment) -> None:
    dep = deployment
    dep.rule(settle_seconds=1.0)
    dep.start()
    (dep.watch / "blip.mxf").write_bytes(b"blip")
    dep.wait_state("blip.mxf", "DETECTED")
    away = dep.watch.with_name("news.away")
    dep.watch.rename(away)
    wait_for(lambda: (w := dep.watcher()) and w["health"] == "paused")
    time.sleep(1.5)  # longer than the settle window: the drop must survive the absence
    away.rename(dep.watch)
    row = dep.wait_state("blip.mxf", "COMPLETED")
    assert [r["state"] for r in dep.rows("blip.mxf")] == ["COMPLETED"]
    assert row["id"] == dep.rows()[0]["id"]
    assert [o["objectName"] for o in dep.objects()] == ["blip"]
    assert wait_for(lambda: (w := dep.watcher()) and w["health"] == "ok")


def test_unsafe_object_names_are_rejected_with_a_reason(deployment: Deployment) -> None:
    dep = deployment
    dep.rule(object_name="{stem}")
    name = "line\nbreak.mxf"
    (dep.watch / name).write_bytes(b"x")
    dep.start()
    row = dep.wait_state(name, "REJECTED")
    assert "control character" in row["error"]
    assert (dep.watch / name).exists()
    assert dep.archive_requests() == []


def test_until_idle_exits_once_everything_is_final(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    (dep.watch / "a.mxf").write_bytes(b"a")
    engine = dep.start(until_idle=True)
    assert dep.thread is not None
    dep.thread.join(timeout=60)
    assert not dep.thread.is_alive()
    assert not engine.tracker.awaiting()
    assert [r["state"] for r in dep.rows()] == ["COMPLETED"]


def test_server_errors_are_retried_and_nothing_is_archived_twice(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.write_config(max_attempts=5)
    dep.rule()
    dep.knobs(http_error_rate=1)  # every call answered 503: DIVA is sick
    dep.start()
    for i in range(3):
        (dep.watch / f"o{i}.mxf").write_bytes(b"o")
    wait_for(lambda: any(r["state"] == "RETRY_WAIT" for r in dep.rows()))
    dep.knobs(http_error_rate=0)
    for i in range(3):
        dep.wait_state(f"o{i}.mxf", "COMPLETED", timeout=60)
    assert sorted(r["objectName"] for r in dep.archive_requests()) == ["o0", "o1", "o2"]


def test_diva_unreachable_fails_no_drop(deployment: Deployment, tmp_path: Path) -> None:
    dep = deployment
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["--port", str(port), "--server", f"NAS={dep.watch.parent}", "--media", "DISK1",
            "--user", "operator:operator:operator"]  # fmt: skip
    diva = EmulatorProcess(tmp_path / "diva", args).start()
    try:
        dep.write_config(url=diva.url, max_attempts=1)
        dep.rule()
        dep.start()
        (dep.watch / "before.mxf").write_bytes(b"b")
        dep.wait_state("before.mxf", "COMPLETED")
        diva.stop()
        for i in range(2):
            (dep.watch / f"during{i}.mxf").write_bytes(b"d")

        # Attempts pile up past max_attempts, and still nothing is FAILED: an outage is
        # DIVA's, not the drop's.
        def piled_up() -> bool:
            rows = dep.rows()[1:]  # read once: two reads could see two ledgers
            return len(rows) == 2 and all(r["attempts"] >= 2 for r in rows)

        wait_for(piled_up, timeout=60)
        assert {r["state"] for r in dep.rows()[1:]} <= {"RETRY_WAIT", "SUBMITTING"}
        diva.start()
        for i in range(2):
            dep.wait_state(f"during{i}.mxf", "COMPLETED", timeout=60)
        names = sorted(o["objectName"] for o in dep.objects_at(diva.url))
        assert names == ["before", "during0", "during1"]
    finally:
        diva.stop()


def test_logs_one_json_line_per_transition(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    (dep.watch / "logged.mxf").write_bytes(b"l")
    proc = dep.daemon("--log-format", "json")
    try:
        dep.wait_state("logged.mxf", "COMPLETED")
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    lines = (dep.root / "daemon.log").read_text().splitlines()
    docs = [json.loads(line) for line in lines]
    moves = [d for d in docs if d.get("drop_id") and d.get("to")]
    assert [d["to"] for d in moves][-1] == "COMPLETED"
    assert {"time", "level", "logger", "message"} <= set(docs[0])
    assert any("stopping" in d["message"] for d in docs)


def test_many_drops_settling_at_once(deployment: Deployment) -> None:
    dep = deployment
    dep.write_config(max_in_flight=20)
    dep.rule(settle_seconds=0.3)
    dep.start()

    def writer() -> None:
        for i in range(200):
            (dep.watch / f"m{i:03d}.mxf").write_bytes(b"m" * i)

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join()
    wait_for(lambda: sum(r["state"] == "COMPLETED" for r in dep.rows()) == 200, timeout=90)
    assert len({o["objectName"] for o in dep.objects()}) == 200
    assert len(dep.archive_requests()) == 200
    assert list(dep.watch.iterdir()) == []


def test_an_operator_retry_is_picked_up_by_the_running_engine(deployment: Deployment) -> None:
    dep = deployment
    path = dep.rule(media="NO_SUCH_MEDIA")
    (dep.watch / "fixme.mxf").write_bytes(b"fix me")
    dep.start()
    row = dep.wait_state("fixme.mxf", "REJECTED")
    dep.rule(media="DISK1")  # the admin mends the rule...
    wait_for(lambda: dep.engine.book.rules.get("news").media == "DISK1")
    assert path.exists()
    result = subprocess.run(  # ...and the operator asks for another go
        [sys.executable, "-m", "ingest", "retry", str(row["id"]), "--config",
         str(dep.config_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    done = dep.wait_state("fixme.mxf", "COMPLETED")
    assert done["id"] == row["id"] and done["media"] == "DISK1"
    assert [o["objectName"] for o in dep.objects()] == ["fixme"]


def test_a_dead_native_watcher_is_restarted(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    dep = deployment
    dep.rule()
    engine = dep.start()
    folder = wait_for(lambda: engine.folders.get(str(dep.watch)))
    first = wait_for(lambda: folder.watcher)
    first._observer.stop()  # the observer thread ends, as when a share goes away under it
    wait_for(lambda: folder.watcher is not first and folder.watcher and folder.watcher.alive)
    assert "died; restarting it" in caplog.text
    (dep.watch / "after.mxf").write_bytes(b"after")
    dep.wait_state("after.mxf", "COMPLETED")


def test_a_folder_below_that_cannot_be_watched_puts_the_folder_on_polling_with_backoff(
    deployment: Deployment, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start-up scan places the watches of the folders below; one refused for lack
    of inotify watches (ENOSPC) leaves the folder polled, not half-watched, and what is
    dropped in the unwatched folder is still archived."""
    refuse_watches(monkeypatch, b"/full")
    dep = deployment
    (dep.watch / "full").mkdir()
    dep.rule()
    engine = dep.start()
    folder = wait_for(lambda: engine.folders.get(str(dep.watch)))
    wait_for(lambda: folder.health == "down" and folder.watcher_failures >= 1)
    assert folder.polled
    assert "native watcher failed" in folder.detail and "No space left" in folder.detail
    (dep.watch / "full" / "late.mxf").write_bytes(b"late")
    dep.wait_state("full/late.mxf", "COMPLETED")
    assert "cannot watch" in caplog.text


def test_a_poll_that_lists_only_changed_folders_still_sees_a_file_rewritten_in_place(
    deployment: Deployment,
) -> None:
    """Polled on a local filesystem, an unchanged folder is not listed again, but every
    file in it is still lstat-ed: a file archived (and kept) that is then rewritten in
    place, which moves no folder's mtime, is a new drop."""
    dep = deployment
    (dep.watch / "sub").mkdir()
    (dep.watch / "sub" / "clip.mxf").write_bytes(b"first take")
    dep.rule(observer="polling", delete_on_source=False)
    engine = dep.start()
    dep.wait_state("sub/clip.mxf", "COMPLETED")
    folder = wait_for(lambda: engine.folders.get(str(dep.watch)))
    assert folder.fstype in watch.TRUSTED_FOLDER_MTIMES  # the test's tmp is local
    sub = str(dep.watch / "sub")
    wait_for(lambda: folder.listings and sub in folder.listings and folder.listings[sub][1])
    stamp = os.stat(sub).st_mtime_ns
    with open(dep.watch / "sub" / "clip.mxf", "ab") as fh:
        fh.write(b", and a second one appended")
    assert os.stat(sub).st_mtime_ns == stamp
    wait_for(lambda: len(dep.rows("sub/clip.mxf")) == 2, timeout=30)
    assert folder.listings is not None and folder.listings[sub][0][0] == stamp


def test_a_drop_finished_this_turn_is_not_taken_for_an_operator_retry(
    deployment: Deployment,
) -> None:
    """Seen in the fault suite: a drop reconciled to COMPLETED and, in the same turn,
    picked up again as "requeued by an operator" because another connection still saw it
    in RETRY_WAIT; it then 'vanished' and was marked SKIPPED over its COMPLETED."""
    from ingest.config import load_config
    from ingest.engine import Engine

    dep = deployment
    dep.rule()
    engine = Engine(load_config(dep.config_path))
    try:
        with engine.ledger.batch() as tx:
            drop_id = tx.add(rule="news", watch=str(dep.watch), path="x.mxf", state="RETRY_WAIT")
        with engine.ledger.batch() as tx:
            tx.transition(drop_id, "RETRY_WAIT", "COMPLETED", "reconciled: DIVA completed it")
            engine._adopt_external(tx, time.monotonic())
        assert all(tr.id != drop_id for tr in engine.tracker.drops.values())
        assert [r["state"] for r in dep.rows("x.mxf")] == ["COMPLETED"]
    finally:
        engine.client.close()
        engine.ledger.close()


def test_no_call_goes_out_when_the_turns_commit_fails(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule 1 when the ledger fails (disk full): a turn whose commit fails rolls back its
    intents, so none of the DIVA calls or folder removals it decided on may happen."""
    from collections.abc import Iterator
    from contextlib import contextmanager

    from ingest.config import load_config
    from ingest.engine import Engine
    from ingest.engine.dispatch import Job, Turn, archive
    from ingest.errors import LedgerError
    from ingest.ledger import Batch

    dep = deployment
    dep.rule()
    engine = Engine(load_config(dep.config_path))
    sent: list[Job[int]] = []
    removed: list[str] = []
    real_batch = engine.ledger.batch

    @contextmanager
    def failing_batch() -> Iterator[Batch]:
        with real_batch() as tx:
            yield tx
            raise LedgerError("database or disk is full (injected by the test)")

    def step(turn: Turn) -> None:
        turn.calls.append(archive(("w", "x.mxf"), 1, {"objectName": "x"}))
        turn.removals.append(lambda: removed.append("marker"))

    try:
        monkeypatch.setattr(engine.dispatcher, "run", sent.append)
        monkeypatch.setattr(engine.ledger, "batch", failing_batch)
        with pytest.raises(LedgerError):
            engine._commit(time.monotonic(), step)
        assert sent == [] and removed == []
        monkeypatch.setattr(engine.ledger, "batch", real_batch)
        engine._commit(time.monotonic(), step)  # the same turn, committed: both happen
        assert len(sent) == 1 and removed == ["marker"]
    finally:
        engine.client.close()
        engine.ledger.close()
