"""The emulator's later fault knobs and per-user session timeouts, in both profiles.

Knobs: ``wait_rate``/``wait_seconds``, ``partial_rate``, ``late_conflict_rate``,
``forget_after``. Each test runs against the lenient and the guide session emulators
(reset before the test), over loopback HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from ingest.emulator.server import EmulatorProcess

from .support.emulator import (
    DivaApi,
    Login,
    RunningEmulator,
    archive_body,
    emulator_args,
    faults,
    logins,
    make_servers,
    md5,
    put_file,
    refused,
    submit,
)
from .support.wait import wait_for

WAITING = {8: "DIVA_WAITING_FOR_RESOURCES", 9: "DIVA_WAITING_FOR_OPERATOR"}


@pytest.fixture(params=["lenient", "guide"])
def emu(request: pytest.FixtureRequest) -> RunningEmulator:
    """The lenient or the guide session emulator, reset."""
    name = "emulator" if request.param == "lenient" else "emulator_guide"
    found: RunningEmulator = request.getfixturevalue(name)
    return found


@pytest.fixture
def login(emu: RunningEmulator) -> Iterator[Login]:
    with logins(emu.url) as log_in:
        yield log_in


def guide(emu: RunningEmulator) -> bool:
    return emu.process is not None and emu.process.profile == "guide"


def info(api: DivaApi, name: str) -> httpx.Response:
    # /object/info: the route both profiles serve
    return api.get("/manager/object/info", params={"objectName": name, "collectionName": "TEST"})


# -- wait_rate, wait_seconds -------------------------------------------------------------------


def test_wait_rate_holds_requests_waiting(emu: RunningEmulator, login: Login) -> None:
    put_file(emu.servers["NAS"], "a.mov")
    faults(emu, wait_rate=1, wait_seconds=0.6)
    api = login("operator")
    started = time.monotonic()
    rids = [submit(api, "archive", archive_body(f"w{i}", ["a.mov"])) for i in range(6)]
    states = [api.request(rid) for rid in rids]
    assert all(WAITING[s["stateCode"]] == s["stateName"] for s in states), states
    assert all(s["stateDescription"].startswith("Waiting for") for s in states)
    for rid in rids:
        assert api.wait(rid)["stateCode"] == 3
    assert time.monotonic() - started >= 0.6  # none ran before its wait was over
    # A waiting request can be cancelled, and never runs.
    src = put_file(emu.servers["NAS"], "keep.mov")
    faults(emu, wait_seconds=30)
    rid = submit(api, "archive", archive_body("c", ["keep.mov"], qos=0x100))
    assert api.post("/manager/requests/cancel", {"requestId": rid}).status_code == 200
    assert api.wait(rid)["stateName"] == "DIVA_CANCELLED" and src.exists()


def test_waiting_states_are_drawn_from_the_seed(emulator_guide: RunningEmulator) -> None:
    """The guide emulator has a fixed seed: the same calls draw the same waiting states."""
    put_file(emulator_guide.servers["NAS"], "a.mov")

    def draw() -> list[int]:
        faults(emulator_guide, wait_rate=1, wait_seconds=30)
        with DivaApi(emulator_guide.url, "operator", "operator") as api:
            rids = [submit(api, "archive", archive_body(f"w{i}", ["a.mov"])) for i in range(8)]
            return [api.request(rid)["stateCode"] for rid in rids]

    first = draw()
    emulator_guide.reset()
    assert draw() == first and set(first) == {8, 9}


# -- partial_rate ------------------------------------------------------------------------------


def test_partial_rate_stores_the_first_half(emu: RunningEmulator, login: Login) -> None:
    nas = emu.servers["NAS"]
    files = [put_file(nas, f"drop/seq/f{i}.dpx", 100 + i, seed=i) for i in range(4)]
    digests = [md5(f) for f in files]
    faults(emu, partial_rate=1)
    api = login("operator")
    done = api.wait(submit(api, "archive", archive_body("seq", ["seq"], filePathRoot="drop",
                                                        qos=0x103)))  # fmt: skip
    assert done["stateCode"] == 11
    name = "DIVA_PARTIALLY_COMPLETED" if guide(emu) else "DIVA_PARTIALLY_ABORTED"
    assert done["stateName"] == name  # 9. the guide's name for a partially aborted request
    assert done["statusCode"] == 1002 and done["statusName"] == "DIVA_ERR_INTERNAL"
    assert done["abortReason"]["name"] == "DIVA_AR_DISK" and done["abortReason"]["code"] == 4
    assert done["completionDate"] > 0 and "2 of 4" in done["additionalInfo"]
    # The first half was stored, and only that half deleted from the source.
    assert [f.exists() for f in files] == [False, False, True, True]
    on_media = sorted(p.name for p in (emu.state / "media" / "DISK1").rglob("*.dpx"))
    assert on_media == ["f0.dpx", "f1.dpx"]
    # No object is recorded, so the name is free for another archive.
    refused(info(api, "seq"), 1009, 404)
    for i, f in enumerate(files[:2]):
        put_file(nas, f"drop/seq/{f.name}", 100 + i, seed=i)
    faults(emu, partial_rate=0)
    again = api.wait(submit(api, "archive", archive_body("seq", ["seq"], filePathRoot="drop")))
    assert again["stateCode"] == 3
    stored = info(api, "seq").json()
    assert [c["checksum"] for c in stored["components"]] == digests


def test_partial_rate_with_one_or_two_files(emu: RunningEmulator, login: Login) -> None:
    nas = emu.servers["NAS"]
    one = put_file(nas, "one.mov")
    first, second = put_file(nas, "a.mov"), put_file(nas, "b.mov")
    faults(emu, partial_rate=1)
    api = login("operator")
    single = api.wait(submit(api, "archive", archive_body("one", ["one.mov"], qos=0x100)))
    assert single["stateCode"] == 11 and one.exists()  # of one file, none is stored
    pair = api.wait(submit(api, "archive", archive_body("pair", ["a.mov", "b.mov"], qos=0x100)))
    assert pair["stateCode"] == 11 and not first.exists() and second.exists()
    kept = api.wait(submit(api, "archive", archive_body("kept", ["b.mov", "one.mov"])))
    assert kept["stateCode"] == 11 and second.exists() and one.exists()  # no delete-on-source
    faults(emu, partial_rate=0)
    # Restores are not affected.
    assert api.wait(submit(api, "archive", archive_body("whole", ["b.mov"])))["stateCode"] == 3
    back = {"objectName": "whole", "collectionName": "TEST", "destinationServer": "OUT"}
    faults(emu, partial_rate=1)
    assert api.wait(submit(api, "restore", back))["stateCode"] == 3


# -- late_conflict_rate ------------------------------------------------------------------------


def test_late_conflicts_abort_when_the_request_runs(emu: RunningEmulator, login: Login) -> None:
    src = put_file(emu.servers["NAS"], "a.mov", 5000)
    faults(emu, late_conflict_rate=1, request_seconds=1)
    api = login("operator")
    first = submit(api, "archive", archive_body("a", ["a.mov"], qos=0x100))
    # Accepted although the first is still being archived; aborted once it runs.
    second = api.wait(submit(api, "archive", archive_body("a", ["a.mov"], qos=0x100)))
    assert second["stateName"] == "DIVA_ABORTED" and second["statusCode"] == 1040
    assert second["statusName"] == "DIVA_ERR_OBJECT_BEING_ARCHIVED"
    assert second["abortReason"]["name"] == "DIVA_AR_PARAMETERS"
    assert api.request(first)["stateCode"] not in (3, 4)  # the first went on
    assert api.wait(first)["stateCode"] == 3 and not src.exists()
    archived = info(api, "a").json()
    # Accepted although the object exists; aborted once it runs, touching nothing.
    src = put_file(emu.servers["NAS"], "a.mov", 5000, seed=9)
    third = api.wait(submit(api, "archive", archive_body("a", ["a.mov"], qos=0x100)))
    assert third["stateName"] == "DIVA_ABORTED" and third["statusCode"] == 1016
    assert third["abortReason"]["name"] == "DIVA_AR_PARAMETERS"
    assert src.exists() and info(api, "a").json() == archived
    # Without the knob the same conflicts are refused at submission.
    faults(emu, late_conflict_rate=0)
    refused(api.post("/manager/requests/archive", archive_body("a", ["a.mov"])), 1016, 409)


# -- forget_after ------------------------------------------------------------------------------


def test_finished_requests_leave_the_queue(emu: RunningEmulator, login: Login) -> None:
    put_file(emu.servers["NAS"], "a.mov")
    api = login("operator")
    faults(emu, wait_rate=1, wait_seconds=30)
    queued = submit(api, "archive", archive_body("q", ["a.mov"]))  # unfinished: stays
    faults(emu, wait_rate=0)
    done = submit(api, "archive", archive_body("d", ["a.mov"]))
    api.wait(done)

    def listed() -> list[int]:
        return [r["id"] for r in api.get("/manager/requests").json()["requests"]]

    assert listed() == [queued, done]  # kept for ever by default
    faults(emu, forget_after=0.5)
    gone = wait_for(lambda: (r := api.get(f"/manager/requests/{done}")).status_code == 404 and r)
    refused(gone, 1011, 404)
    assert listed() == [queued]
    refused(api.post("/manager/requests/cancel", {"requestId": done}), 1011, 404)
    assert api.request(queued)["stateCode"] in WAITING
    faults(emu, forget_after=0)
    assert listed() == [queued, done]  # hidden, not deleted


# -- knob validation, and the command line -----------------------------------------------------


def test_new_knobs_are_checked(emu: RunningEmulator) -> None:
    with httpx.Client(base_url=emu.url) as client:
        for bad in (
            {"wait_rate": 1.5},
            {"partial_rate": -0.1},
            {"late_conflict_rate": 2},
            {"wait_seconds": -1},
            {"forget_after": -1},
        ):
            refused(client.put("/_emulator/faults", json=bad), 1008, 400)
        knobs = client.get("/_emulator/faults").json()
    for name in ("wait_rate", "wait_seconds", "partial_rate", "late_conflict_rate", "forget_after"):
        assert knobs[name] == 0


def test_command_line_profile_and_knobs(tmp_path: Path) -> None:
    servers = make_servers(tmp_path / "servers")
    flags = {"forget-after": "60", "wait-rate": "0.25", "wait-seconds": "2",
             "partial-rate": "0.5", "late-conflict-rate": "0.75"}  # fmt: skip
    args = emulator_args(servers) + [a for k, v in flags.items() for a in (f"--{k}", v)]
    with EmulatorProcess(tmp_path / "state", args, profile="guide") as process:
        knobs = httpx.get(f"{process.url}/_emulator/faults").json()
        with DivaApi(process.url, "user", "user") as api:
            missing = api.get("/manager/objects/info", params={"objectName": "a"})
    assert missing.status_code == 404 and "statusCode" not in missing.json()
    expected = {"forget_after": 60, "wait_rate": 0.25, "wait_seconds": 2, "partial_rate": 0.5,
                "late_conflict_rate": 0.75}  # fmt: skip
    assert {k: knobs[k] for k in expected} == expected
    line = f"DIVA emulator listening on {process.url} (profile guide)"
    wait_for(lambda: line in (tmp_path / "state" / "emulator.log").read_text())


def test_startup_line_names_the_profile(emu: RunningEmulator) -> None:
    line = f"listening on {emu.url} (profile {'guide' if guide(emu) else 'lenient'})"
    wait_for(lambda: line in (emu.state / "emulator.log").read_text())


# -- per-user session timeout ------------------------------------------------------------------


def lifetime(token: str) -> float:
    """A token's ``exp - iat``: its TTL, plus up to a second (``iat`` is whole seconds,
    ``exp`` to the millisecond, rounded: 604800.9996 s after a whole second is 604801.0)."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return float(claims["exp"]) - float(claims["iat"])


def test_session_timeout_bounds_the_token(emu: RunningEmulator, login: Login) -> None:
    sysadmin = login("sysadmin")
    for name, minutes in (("brief", 1), ("huge", 99_999_999)):
        user = {"username": name, "password": "pw", "role": "operator", "sessionTimeout": minutes}
        assert sysadmin.post("/dataservice/users", user).status_code == 200
    assert 86400 <= lifetime(sysadmin.token) <= 86401  # 1440 minutes, the default
    with DivaApi(emu.url, "brief", "pw") as brief:
        assert 60 <= lifetime(brief.token) <= 61
    faults(emu, token_ttl=30)
    with DivaApi(emu.url, "brief", "pw") as brief:
        assert 30 <= lifetime(brief.token) <= 31  # the knob when it is shorter
    faults(emu, token_ttl=10**7)
    with DivaApi(emu.url, "huge", "pw") as huge:
        assert 604800 <= lifetime(huge.token) <= 604801  # at most 10080 minutes


def test_help_documents_the_profile_and_knobs() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "ingest", "emulator", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    assert "--profile [lenient|guide]" in help_text
    for flag in ("--partial-rate", "--late-conflict-rate", "--wait-rate", "--wait-seconds",
                 "--forget-after"):  # fmt: skip
        assert flag in help_text
