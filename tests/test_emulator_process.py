"""The emulator as a process of its own: restart persistence, crash recovery, HTTPS, in-process.

Each test here starts its own emulator (the session one cannot be killed).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from ingest.emulator.config import EmulatorConfig
from ingest.emulator.server import EmulatorProcess, EmulatorThread
from ingest.emulator.store import Store
from ingest.protocol import RequestState

from .support.emulator import DivaApi, emulator_args, make_servers, md5, throwaway_ca
from .support.wait import wait_for


def test_restart_keeps_state_and_finishes_interrupted_requests(tmp_path: Path) -> None:
    servers = make_servers(tmp_path)
    nas = servers["NAS"]
    (nas / "small.mov").write_bytes(b"small" * 100)
    big = nas / "big.mov"
    big.write_bytes(bytes(range(256)) * 2000)  # 512 kB: ~5 s at the throttled rate
    digest = md5(big)
    args = emulator_args(servers)
    process = EmulatorProcess(tmp_path / "state", [*args, "--throughput", "100000"]).start()
    try:
        api = DivaApi(process.url, "sysadmin", "sysadmin")
        body = {"collectionName": "C", "media": "DISK1", "sourceServer": "NAS"}
        done = api.post(
            "/manager/requests/archive",
            {**body, "objectName": "small", "components": ["small.mov"]},
        )
        api.wait(done.json()["requestId"])
        new_user = {"username": "late", "password": "pw", "role": "operator"}
        assert api.post("/dataservice/users", new_user).status_code == 200
        logged_out = DivaApi(process.url, "admin", "admin")
        logged_out.post("/dataservice/users/logout")
        logged_out.close()
        rid = api.post(
            "/manager/requests/archive",
            {**body, "objectName": "big", "components": ["big.mov"], "qos": 0x100},
        ).json()["requestId"]
        wait_for(lambda: api.request(rid)["progress"] > 0)
        process.kill()  # SIGKILL mid-copy
        api.close()
        assert big.exists()

        process.args = args  # restart at full speed
        process.start()
        api = DivaApi(process.url, "late", "pw")  # a user added at runtime survived
        done_info = api.wait(rid)
        assert done_info["stateName"] == "DIVA_COMPLETED"
        info = api.get("/manager/objects/info", params={"objectName": "big", "collectionName": "C"})
        assert info.json()["components"][0]["checksum"] == digest
        assert not big.exists()  # delete-on-source done once the object was stored
        small = api.get(
            "/manager/objects/info", params={"objectName": "small", "collectionName": "C"}
        )
        assert small.status_code == 200
        # the revoked token stays revoked; a fresh token from before the restart is honoured
        with httpx.Client(base_url=process.url) as client:
            headers = {"Authorization": logged_out.token}
            assert client.get("/manager/arrays", headers=headers).status_code == 403
            headers = {"Authorization": api.token}
            assert client.get("/manager/arrays", headers=headers).status_code == 200
        copies = list((tmp_path / "state" / "media").rglob("big.mov"))
        assert len(copies) == 1 and md5(copies[0]) == digest
        api.close()
    finally:
        process.stop()


def test_committed_request_is_finished_on_start(tmp_path: Path) -> None:
    """A crash after the object was stored, before COMPLETED: the next start completes it."""
    servers = make_servers(tmp_path / "servers")
    src = servers["NAS"] / "a.mov"
    src.write_bytes(b"abc")
    config = EmulatorConfig(state=tmp_path / "state", servers=servers, media={"DISK1": "disk"})
    store = Store(config.db_path)
    body = {
        "objectName": "a",
        "collectionName": "C",
        "components": ["a.mov"],
        "media": "DISK1",
        "sourceServer": "NAS",
        "filePathRoot": "",
        "qos": 0x100,
    }
    rid = store.submit(
        type_="archive",
        object_name="a",
        collection="C",
        body=body,
        priority=-1,
        max_active=10,
        fate="",
        min_seconds=0,
    )
    store.update(
        rid,
        state=int(RequestState.MIGRATING),
        committed=1,
        result={"components": [{"fileName": "a.mov", "size": 3, "md5": md5(src)}]},
    )
    store.close()
    with EmulatorThread(config) as emulator:
        api = DivaApi(emulator.url, "admin", "admin")
        try:
            assert api.wait(rid)["stateName"] == "DIVA_COMPLETED"
        finally:
            api.close()
    assert not src.exists()


def test_https_with_a_test_ca(tmp_path: Path) -> None:
    certfile, keyfile, cafile = throwaway_ca(tmp_path)
    args = ["--certfile", str(certfile), "--keyfile", str(keyfile)]
    with EmulatorProcess(tmp_path / "state", args) as process:
        assert process.url.startswith("https://127.0.0.1:")
        login = {"username": "admin", "password": "admin"}
        with httpx.Client(base_url=process.url) as client, pytest.raises(httpx.ConnectError):
            client.post("/dataservice/users/login", json=login)
        trusted = ssl.create_default_context(cafile=str(cafile))
        with httpx.Client(base_url=process.url, verify=trusted) as client:
            token = client.post("/dataservice/users/login", json=login).json()["token"]
            groups = client.get("/manager/groups", headers={"Authorization": f"Bearer {token}"})
            assert groups.status_code == 200


def test_emulator_in_a_thread(tmp_path: Path) -> None:
    config = EmulatorConfig(state=tmp_path / "state")
    with EmulatorThread(config) as emulator:
        assert emulator.url.startswith("http://127.0.0.1:")
        api = DivaApi(emulator.url, "admin", "admin")
        try:
            assert [a["name"] for a in api.get("/manager/arrays").json()["arrays"]] == ["default"]
            assert api.get("/manager/servers").json() == {"servers": []}
        finally:
            api.close()


def test_bad_command_lines(tmp_path: Path) -> None:
    for args in (["--server", "NAS"], ["--user", "bob:secret:king"], ["--media", "a/b"]):
        process = EmulatorProcess(tmp_path / "state", args)
        with pytest.raises(RuntimeError, match="did not start") as failure:
            process.start()
        assert "secret" not in str(failure.value)
