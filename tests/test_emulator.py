"""The DIVA emulator over real HTTP: auth, roles, requests, objects, faults, guide examples.

All against the session's emulator subprocess on 127.0.0.1, reset before each test.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx

from .support.emulator import (
    DivaApi,
    Login,
    RunningEmulator,
    archive_body,
    example,
    faults,
    md5,
    put_file,
    refused,
    stored,
    submit,
)
from .support.wait import wait_for

# -- authentication and roles ---------------------------------------------------------------


def test_login_token_raw_and_bearer(emulator: RunningEmulator) -> None:
    with httpx.Client(base_url=emulator.url) as client:
        login = client.post(
            "/dataservice/users/login", json={"username": "operator", "password": "operator"}
        )
        token = login.json()["token"]
        assert token.count(".") == 2  # a JWT
        for header in (token, f"Bearer {token}"):
            profile = client.get("/dataservice/profile", headers={"Authorization": header})
            assert profile.status_code == 200
            assert profile.json()["username"] == "operator"
            assert profile.json()["role"] == "operator"


def test_bad_credentials_and_bad_tokens(emulator: RunningEmulator) -> None:
    with httpx.Client(base_url=emulator.url) as client:
        bad = client.post("/dataservice/users/login", json={"username": "admin", "password": "x"})
        assert bad.status_code == 401
        assert bad.json()["statusCode"] == 1035
        refused(client.get("/manager/arrays"), 1020, 403)
        refused(client.get("/manager/arrays", headers={"Authorization": "nonsense"}), 1020, 403)
        refused(client.post("/dataservice/users/login", json={"username": "admin"}), 1008, 400)


def test_token_expires(emulator: RunningEmulator) -> None:
    faults(emulator, token_ttl=1.5)
    api = DivaApi(emulator.url, "admin", "admin")
    try:
        assert api.get("/manager/arrays").status_code == 200
        expired = wait_for(lambda: (r := api.get("/manager/arrays")).status_code == 403 and r, 5)
        refused(expired, 1020, 403)
    finally:
        api.close()


def test_logout_revokes_the_token(diva: Login) -> None:
    api = diva("admin")
    assert api.post("/dataservice/users/logout").json()["statusCode"] == 1000
    refused(api.get("/manager/groups"), 1020, 403)
    other = diva("admin")  # a new login still works
    assert other.get("/manager/groups").status_code == 200


def test_role_matrix(emulator: RunningEmulator, diva: Login) -> None:
    put_file(emulator.servers["NAS"], "a.mov")
    user, operator, admin, sysadmin = (diva(n) for n in ("user", "operator", "admin", "sysadmin"))
    assert user.get("/manager/requests").status_code == 200
    refused(user.post("/manager/requests/archive", archive_body("a", ["a.mov"])), 1035, 403)
    rid = submit(operator, "archive", archive_body("a", ["a.mov"]))
    assert operator.wait(rid)["stateName"] == "DIVA_COMPLETED"
    delete = {"objectName": "a", "collectionName": "TEST"}
    refused(operator.post("/manager/requests/delete", delete), 1035, 403)
    refused(diva("advop").post("/manager/requests/delete", delete), 1035, 403)
    refused(admin.get("/dataservice/users"), 1035, 403)
    refused(admin.get("/dataservice/roles"), 1035, 403)
    assert admin.wait(submit(admin, "delete", delete))["stateName"] == "DIVA_COMPLETED"
    users = sysadmin.get("/dataservice/users").json()["users"]
    assert {u["username"] for u in users} >= {"user", "operator", "admin", "sysadmin"}
    assert all("password" not in json.dumps(u).lower() for u in users)
    roles = [r["name"] for r in sysadmin.get("/dataservice/roles").json()["roles"]]
    assert roles == ["user", "operator", "advoperator", "admin", "sysadmin"]
    new = {
        "username": "ingest",
        "password": "pw",
        "role": "operator",
        "emailAddress": "i@example.com",
        "sessionTimeout": 60,
    }
    refused(admin.post("/dataservice/users", new), 1035, 403)
    assert sysadmin.post("/dataservice/users", new).status_code == 200
    refused(sysadmin.post("/dataservice/users", new), 1008, 409)
    assert (
        diva("user")
        .client.post("/dataservice/users/login", json={"username": "ingest", "password": "pw"})
        .status_code
        == 200
    )


# -- archive -----------------------------------------------------------------------------------


def test_archive_stores_bytes_and_keeps_source(emulator: RunningEmulator, diva: Login) -> None:
    nas = emulator.servers["NAS"]
    src = put_file(nas, "news/clip.mov", 300_000)
    put_file(nas, "news/dpx/f1.dpx", 500, seed=1)
    put_file(nas, "news/dpx/sub/f2.dpx", 700, seed=2)
    api = diva("operator")
    rid = submit(api, "archive", archive_body("clip", ["clip.mov", "dpx"], filePathRoot="/news"))
    done = api.wait(rid)
    assert done["stateName"] == "DIVA_COMPLETED" and done["progress"] == 100
    assert done["statusCode"] == 1000 and done["abortReason"]["name"] == "DIVA_AR_NONE"
    assert done["type"] == "DIVA_ARCHIVE_REQUEST" and done["typeCode"] == 0
    assert done["completionDate"] >= done["submissionDate"] > 0
    obj = stored(api, "clip")
    assert obj is not None
    files = {c["fileName"]: c for c in obj["components"]}
    assert set(files) == {"clip.mov", "dpx/f1.dpx", "dpx/sub/f2.dpx"}
    assert files["clip.mov"]["checksum"] == md5(src) and files["clip.mov"]["size"] == 300_000
    assert files["clip.mov"]["checksumType"] == "MD5"
    assert obj["instances"][0]["media"] == "DISK1"
    # the bytes really are in the media storage
    copies = list((emulator.state / "media" / "DISK1").rglob("clip.mov"))
    assert len(copies) == 1 and md5(copies[0]) == md5(src)
    assert src.exists() and (nas / "news/dpx/sub/f2.dpx").exists()


def test_delete_on_source_only_after_success(emulator: RunningEmulator, diva: Login) -> None:
    nas = emulator.servers["NAS"]
    src = put_file(nas, "drop/big.mov", 400_000)
    put_file(nas, "drop/seq/f1.dpx", 100)
    keep = put_file(nas, "drop/other.txt", 10)
    digest = md5(src)
    faults(emulator, throughput=500_000)
    api = diva("operator")
    rid = submit(
        api, "archive", archive_body("big", ["big.mov", "seq"], filePathRoot="drop", qos=0x0103)
    )
    seen: set[str] = set()
    progress: set[int] = set()
    while True:
        existed = src.exists()
        info = api.request(rid)
        seen.add(info["stateName"])
        progress.add(info["progress"])
        if info["stateName"] in ("DIVA_PENDING", "DIVA_RUNNING"):
            assert existed, "source deleted while still copying"
        if not existed:
            assert stored(api, "big") is not None, "source deleted before the object was stored"
        if info["stateName"] == "DIVA_COMPLETED":
            break
        assert info["stateName"] in ("DIVA_PENDING", "DIVA_RUNNING", "DIVA_MIGRATING")
        time.sleep(0.03)
    assert "DIVA_RUNNING" in seen
    assert any(0 < p < 100 for p in progress), progress
    assert not src.exists() and not (nas / "drop/seq").exists()
    assert keep.exists() and (nas / "drop").is_dir()  # only what was archived goes
    obj = stored(api, "big")
    assert obj is not None and obj["components"][0]["checksum"] == digest


def test_missing_component_aborts_and_deletes_nothing(
    emulator: RunningEmulator, diva: Login
) -> None:
    present = put_file(emulator.servers["NAS"], "a.mov")
    api = diva("operator")
    rid = submit(api, "archive", archive_body("x", ["a.mov", "missing.mov"], qos=0x100))
    done = api.wait(rid)
    assert done["stateName"] == "DIVA_ABORTED"
    assert done["abortReason"]["name"] == "DIVA_AR_SOURCE_DEST"
    assert done["statusCode"] == 1038
    assert present.exists() and stored(api, "x") is None
    assert not list((emulator.state / "media" / "DISK1").rglob("a.mov"))


def test_archive_refusals(emulator: RunningEmulator, diva: Login) -> None:
    put_file(emulator.servers["NAS"], "a.mov", 200_000)
    api = diva("operator")

    def post(body: dict[str, Any]) -> httpx.Response:
        return api.post("/manager/requests/archive", body)

    refused(post({"objectName": "x"}), 1008, 400)
    refused(post(archive_body("x" * 193, ["a.mov"])), 1008, 400)
    refused(post(archive_body("x", [])), 1008, 400)
    refused(post(archive_body("x", ["../etc/passwd"])), 1008, 400)
    refused(post(archive_body("x", ["/etc/passwd"])), 1008, 400)
    refused(post(archive_body("x", ["a.mov"], filePathRoot="/../..")), 1008, 400)
    refused(post(archive_body("x", ["a.mov"], qos=7)), 1008, 400)
    refused(post(archive_body("x", ["a.mov"], media="NOPE")), 1017, 404)
    refused(post(archive_body("x", ["a.mov"], sourceServer="NOPE")), 1018, 404)
    bad_json = api.client.post(
        "/manager/requests/archive",
        content=b"{not json",
        headers={"Authorization": api.token, "Content-Type": "application/json"},
    )
    refused(bad_json, 1008, 400)
    faults(emulator, throughput=100_000)  # the first archive stays active for ~2 s
    rid = submit(api, "archive", archive_body("a", ["a.mov"]))
    refused(post(archive_body("a", ["a.mov"])), 1040, 409)
    faults(emulator, max_active=1)
    refused(post(archive_body("other", ["a.mov"])), 1032, 503)
    faults(emulator, throughput=0, max_active=300)
    assert api.wait(rid)["stateName"] == "DIVA_COMPLETED"
    refused(post(archive_body("a", ["a.mov"])), 1016, 409)
    refused(api.get("/manager/requests/999999"), 1011, 404)
    refused(api.get("/manager/requests/abc"), 1008, 400)


# -- requests and objects lists ----------------------------------------------------------------


def test_request_list_filters(emulator: RunningEmulator, diva: Login) -> None:
    put_file(emulator.servers["NAS"], "a.mov")
    api = diva("operator")
    first = submit(api, "archive", archive_body("a", ["a.mov"]))
    second = submit(api, "archive", {**archive_body("b", ["a.mov"]), "collectionName": "OTHER"})
    failed = submit(api, "archive", archive_body("c", ["gone.mov"]))
    for rid in (first, second, failed):
        api.wait(rid)
    restore = submit(
        api,
        "restore",
        {
            "objectName": "a",
            "collectionName": "TEST",
            "destinationServer": "OUT",
            "filePathRoot": "r",
        },
    )
    api.wait(restore)

    def ids(**params: Any) -> list[int]:
        response = api.get("/manager/requests", params=params)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()["requests"]]

    assert ids() == [first, second, failed, restore]
    assert ids(type="Archive") == [first, second, failed]
    assert ids(type="Restore") == [restore]
    assert ids(type="Archive", states=["Completed"]) == [first, second]
    assert ids(states=["Aborted", "Cancelled"]) == [failed]
    assert ids(states=["Pending", "Running", "Waiting for resources"]) == []
    assert ids(collectionName="OTHER") == [second]
    assert ids(objectName="a") == [first, restore]
    assert ids(objectName="a", collectionName="TEST", type="Archive") == [first]
    assert ids(sortField="ID", sortDirection="DESC") == [restore, failed, second, first]
    assert ids(startDateTime="2000-01-01 00:00:00") == [first, second, failed, restore]
    assert ids(startDateTime="2999-01-01 00:00:00") == []
    assert ids(page=2, size=2) == [failed, restore]
    refused(api.get("/manager/requests", params={"states": "Sleeping"}), 1008, 400)
    refused(api.get("/manager/requests", params={"startDateTime": "yesterday"}), 1008, 400)


def test_objects_info_and_list(emulator: RunningEmulator, diva: Login) -> None:
    put_file(emulator.servers["NAS"], "a.mov")
    api = diva("operator")
    for name, coll in (("a", "TEST"), ("b", "TEST"), ("c", "OTHER")):
        api.wait(submit(api, "archive", {**archive_body(name, ["a.mov"]), "collectionName": coll}))
    for path in ("/manager/objects/info", "/manager/object/info"):
        ok = api.get(path, params={"objectName": "a", "collectionName": "TEST"})
        assert ok.status_code == 200 and ok.json()["collectionName"] == "TEST"
        refused(api.get(path, params={"objectName": "zz", "collectionName": "TEST"}), 1009, 404)
    refused(api.get("/manager/objects/info", params={"objectName": "a"}), 1008, 400)

    def names(**params: Any) -> list[str]:
        response = api.get("/manager/objects/list", params=params)
        assert response.status_code == 200, response.text
        return [o["objectName"] for o in response.json()["objects"]]

    assert names() == ["a", "b", "c"]
    assert names(collectionName="TEST") == ["a", "b"]
    assert names(startDateTime="2000-01-01 00:00:00", collectionName="OTHER") == ["c"]
    assert names(startDateTime="2999-01-01 00:00:00") == []
    assert names(startDateTime=str(time.time() + 60)) == []
    assert names(size=1, page=2) == ["b"]


def test_resources(diva: Login) -> None:
    api = diva("user")
    arrays = [a["name"] for a in api.get("/manager/arrays").json()["arrays"]]
    assert "DISK1" in arrays and "TAPE1" not in arrays
    assert [g["name"] for g in api.get("/manager/groups").json()["groups"]] == ["TAPE1"]
    servers = [s["name"] for s in api.get("/manager/servers").json()["servers"]]
    assert "NAS" in servers and "sourcedest" in servers
    assert api.get("/manager/versions").json()["version"].startswith("9.")


# -- restore, partial restore, cancel, delete -------------------------------------------------


def test_restore_and_do_not_overwrite(emulator: RunningEmulator, diva: Login) -> None:
    src = put_file(emulator.servers["NAS"], "in/a.mov", 5000)
    put_file(emulator.servers["NAS"], "in/sub/b.txt", 10)
    api = diva("operator")
    api.wait(submit(api, "archive", archive_body("a", ["a.mov", "sub"], filePathRoot="in")))
    out = emulator.servers["OUT"]
    body = {
        "objectName": "a",
        "collectionName": "TEST",
        "destinationServer": "OUT",
        "filePathRoot": "back",
        "instance": -1,
        "qos": 0,
        "priority": -1,
        "options": "",
    }
    assert api.wait(submit(api, "restore", body))["stateName"] == "DIVA_COMPLETED"
    assert md5(out / "back/a.mov") == md5(src) and (out / "back/sub/b.txt").exists()
    (out / "back/a.mov").write_bytes(b"local edit")
    keep = {**body, "options": "-do_not_overwrite"}
    done = api.wait(submit(api, "restore", keep))
    assert done["stateName"] == "DIVA_ABORTED" and done["statusCode"] == 1026
    assert (out / "back/a.mov").read_bytes() == b"local edit"
    assert api.wait(submit(api, "restore", body))["stateName"] == "DIVA_COMPLETED"
    assert md5(out / "back/a.mov") == md5(src)
    refused(api.post("/manager/requests/restore", {**body, "objectName": "zz"}), 1009, 404)
    refused(api.post("/manager/requests/restore", {**body, "destinationServer": "X"}), 1018, 404)
    refused(api.post("/manager/requests/restore", {**body, "filePathRoot": "../x"}), 1008, 400)
    assert not [p for p in out.rglob("*") if "diva-restore" in p.name]


def test_partial_restore_guide_bodies(emulator: RunningEmulator, diva: Login) -> None:
    """The guide's four partial-restore bodies are accepted; bytes and file/folder restore."""
    src_root = emulator.servers["sourcedest"]
    names = ["DNxHD-mxf-wrap-conf.mov", "DNxHD_mxf_wrap_conf.mov", "test.mov", "Profile.gxf"]
    sources = {n: put_file(src_root, f"clips/{n}", 4096, seed=i) for i, n in enumerate(names)}
    api = diva("operator")
    api.wait(
        submit(
            api,
            "archive",
            {
                "objectName": "Partial File",
                "collectionName": "Restore All Basic PFR",
                "components": names,
                "media": "default",
                "sourceServer": "sourcedest",
                "filePathRoot": "clips",
            },
        )
    )
    out = src_root / "restore"
    results = {}
    for name in ("bytes", "file-folder", "gxf-timecode", "dpx-range"):
        rid = submit(api, "partialRestore", example(f"partial-restore-{name}.json"))
        results[name] = api.wait(rid)
        if name == "bytes":
            # offset pairs are half-open: [0, 1) + [1, 2) = the first two bytes
            data = sources["DNxHD-mxf-wrap-conf.mov"].read_bytes()
            assert (out / "DNxHD-mxf-wrap-conf.mov").read_bytes() == data[0:1] + data[1:2]
        if name == "file-folder":
            for n in ("DNxHD_mxf_wrap_conf.mov", "test.mov"):
                assert md5(out / n) == md5(sources[n])
    assert {r["stateName"] for r in results.values()} == {"DIVA_COMPLETED"}
    assert {r["typeCode"] for r in results.values()} == {13}
    body = example("partial-restore-bytes.json")
    body["offsets"][0]["offsetPairs"] = [{"bytesBegin": 5, "bytesEnd": 2, "timeCode": False}]
    refused(api.post("/manager/requests/partialRestore", body), 1008, 400)
    refused(api.post("/manager/requests/partialRestore", {**body, "format": 1}), 1008, 400)


def test_partial_restore_of_a_folder(emulator: RunningEmulator, diva: Login) -> None:
    nas = emulator.servers["NAS"]
    put_file(nas, "seq/f1.dpx", 10)
    put_file(nas, "seq/f2.dpx", 20)
    put_file(nas, "other.mov", 30)
    api = diva("operator")
    api.wait(submit(api, "archive", archive_body("s", ["seq", "other.mov"])))
    body = {
        "objectName": "s",
        "collectionName": "TEST",
        "destinationServer": "OUT",
        "filePathRoot": "",
        "format": 12,
        "offsets": [{"fileFolder": {"name": "seq", "option": ""}}],
    }
    assert api.wait(submit(api, "partialRestore", body))["stateName"] == "DIVA_COMPLETED"
    out = emulator.servers["OUT"]
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["f1.dpx", "f2.dpx"]
    body["offsets"] = [{"fileFolder": {"name": "nothere", "option": ""}}]
    assert api.wait(submit(api, "partialRestore", body))["stateName"] == "DIVA_ABORTED"


def test_cancel(emulator: RunningEmulator, diva: Login) -> None:
    src = put_file(emulator.servers["NAS"], "a.mov", 300_000)
    faults(emulator, throughput=50_000)
    api = diva("operator")
    rid = submit(api, "archive", archive_body("a", ["a.mov"], qos=0x100))
    wait_for(lambda: api.request(rid)["stateName"] == "DIVA_RUNNING")
    response = api.post("/manager/requests/cancel", {"requestId": rid})
    assert response.status_code == 200 and response.json()["statusCode"] == 1000
    assert api.wait(rid)["stateName"] == "DIVA_CANCELLED"
    refused(api.post("/manager/requests/cancel", {"requestId": rid}), 1012, 409)
    refused(api.post("/manager/requests/cancel", params={"requestId": 999999}), 1011, 404)
    refused(api.post("/manager/requests/cancel", {"requestId": "x"}), 1008, 400)
    assert src.exists() and stored(api, "a") is None
    # the cancelled copy leaves nothing in the media storage, and the name is free again
    assert not [p for p in (emulator.state / "media").rglob("*") if p.is_file()]
    faults(emulator, throughput=0)
    assert api.wait(submit(api, "archive", archive_body("a", ["a.mov"])))["stateCode"] == 3


def test_delete_removes_every_copy(emulator: RunningEmulator, diva: Login) -> None:
    put_file(emulator.servers["NAS"], "a.mov", 1000)
    api = diva("admin")
    api.wait(submit(api, "archive", archive_body("a", ["a.mov"])))
    media = emulator.state / "media" / "DISK1"
    assert list(media.rglob("a.mov"))
    done = api.wait(submit(api, "delete", {"objectName": "a", "collectionName": "TEST"}))
    assert done["stateName"] == "DIVA_COMPLETED" and done["type"] == "DIVA_DELETE_REQUEST"
    assert stored(api, "a") is None and not list(media.rglob("a.mov"))
    refused(
        api.post("/manager/requests/delete", {"objectName": "a", "collectionName": "TEST"}),
        1009,
        404,
    )


# -- fault knobs -----------------------------------------------------------------------------


def test_http_error_rate(emulator: RunningEmulator, diva: Login) -> None:
    api = diva("admin")
    faults(emulator, http_error_rate=1)
    for _ in range(3):
        refused(api.get("/manager/arrays"), 1002, 503)
    refused(api.client.post("/dataservice/users/login", json={}), 1002, 503)
    faults(emulator, http_error_status=500)
    response = api.get("/manager/arrays")
    assert response.status_code == 500 and "text/html" in response.headers["content-type"]
    with httpx.Client(base_url=emulator.url) as client:
        assert client.get("/_emulator/stats").json()["injectedErrors"] == 5
    faults(emulator, http_error_rate=0.5)
    codes = [api.get("/manager/arrays").status_code for _ in range(40)]
    assert 0 < codes.count(500) < 40 and set(codes) == {200, 500}
    faults(emulator, http_error_rate=0)
    assert api.get("/manager/arrays").status_code == 200


def test_latency(emulator: RunningEmulator, diva: Login) -> None:
    api = diva("admin")
    faults(emulator, latency=0.4)
    started = time.monotonic()
    assert api.get("/manager/arrays").status_code == 200
    assert time.monotonic() - started >= 0.4
    faults(emulator, latency=0)
    started = time.monotonic()
    api.get("/manager/arrays")
    assert time.monotonic() - started < 0.4


def test_an_archive_call_is_stamped_on_arrival_before_any_of_its_work(
    emulator: RunningEmulator, diva: Login
) -> None:
    """The benchmarks' arrival stamp is taken before the emulator's own work: here an
    injected 0.3 s delay stands for that work, and falls between the two stamps."""
    put_file(emulator.servers["NAS"], "a.mov", 10)
    put_file(emulator.servers["NAS"], "b.mov", 10)
    api = diva("operator")
    sent = time.time()
    submit(api, "archive", archive_body("a", ["a.mov"]))
    faults(emulator, latency=0.3)
    submit(api, "archive", archive_body("b", ["b.mov"]))
    faults(emulator, latency=0)
    arrived, submitted = emulator.arrivals(), emulator.submitted()
    assert sent <= arrived["a"] <= submitted["a"]
    assert submitted["b"] - arrived["b"] >= 0.3


def test_abort_rate(emulator: RunningEmulator, diva: Login) -> None:
    src = put_file(emulator.servers["NAS"], "a.mov", 10_000)
    faults(emulator, abort_rate=1)
    api = diva("operator")
    done = api.wait(submit(api, "archive", archive_body("a", ["a.mov"], qos=0x103)))
    assert done["stateName"] == "DIVA_ABORTED"
    assert done["abortReason"]["name"] in ("DIVA_AR_DRIVE", "DIVA_AR_RESOURCES")
    assert done["abortReason"]["code"] in (1, 7)
    assert src.exists() and stored(api, "a") is None
    assert not [p for p in (emulator.state / "media").rglob("*") if p.is_file()]


def test_request_seconds_and_stats(emulator: RunningEmulator, diva: Login) -> None:
    put_file(emulator.servers["NAS"], "a.mov", 100)
    faults(emulator, request_seconds=1.0)
    api = diva("operator")
    started = time.monotonic()
    rid = submit(api, "archive", archive_body("a", ["a.mov"]))
    polls = 1
    while (info := api.request(rid))["stateName"] != "DIVA_COMPLETED":
        assert info["progress"] < 100
        polls += 1
        time.sleep(0.1)
    assert time.monotonic() - started >= 0.9
    with httpx.Client(base_url=emulator.url) as client:
        stats = client.get("/_emulator/stats").json()
    assert stats["logins"] == 1
    assert stats["polls"][str(rid)]["count"] == polls
    assert stats["polls"][str(rid)]["minInterval"] >= 0.05
    assert stats["calls"]["GET /manager/requests/{requestId}"] == polls
    assert stats["requests"] == {"DIVA_COMPLETED": 1} and stats["objects"] == 1


def test_faults_endpoint_validates(emulator: RunningEmulator) -> None:
    with httpx.Client(base_url=emulator.url) as client:
        refused(client.put("/_emulator/faults", json={"abort_rate": 2}), 1008, 400)
        refused(client.put("/_emulator/faults", json={"nope": 1}), 1008, 400)
        knobs = client.put("/_emulator/faults", json={"latency-rate": 0.5}).json()
        assert knobs["latency_rate"] == 0.5
        client.post("/_emulator/reset").raise_for_status()
        assert client.get("/_emulator/faults").json()["latency_rate"] == 1.0


# -- the vendor guide's own examples ------------------------------------------------------------


def test_guide_sample_program(emulator: RunningEmulator) -> None:
    with httpx.Client(base_url=emulator.url) as client:
        login = client.post(
            "/dataservice/users/login",
            content=json.dumps({"username": "admin", "password": "admin"}),
            headers={"Content-Type": "application/json; utf-8", "Accept": "application/json"},
        )
        token = login.json()["token"]
        actors = client.get(
            "/manager/actors?page=1&size=5",
            headers={"Accept": "application/json", "Authorization": token},
        )
        assert actors.status_code == 200
        assert 0 < len(actors.json()["actors"]) <= 5


def test_guide_archive_bodies(emulator: RunningEmulator, diva: Login) -> None:
    put_file(emulator.servers["wfm_ftp_sd_for_diva_test"], "1.txt", 10)
    put_file(emulator.servers["A Valid Source Server Name, ex: ftproot"], "string/string", 10)
    api = diva("operator")
    curl = example("archive-curl.json")
    refused(api.post("/manager/requests/archive", curl), 1008, 400)
    rid = submit(api, "archive", {**curl, "collectionName": "guide"})
    assert api.wait(rid)["stateName"] == "DIVA_COMPLETED"
    model = submit(api, "archive", example("archive-model-example.json"))
    assert api.wait(model)["stateName"] == "DIVA_COMPLETED"


def test_swagger_and_error_shapes(emulator: RunningEmulator) -> None:
    with httpx.Client(base_url=emulator.url, follow_redirects=True) as client:
        docs = client.get("/webjars/swagger-ui/index.html")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        assert "/manager/requests/archive" in client.get("/openapi.json").json()["paths"]
        refused(client.get("/manager/nothing"), 1001, 404)


def test_command_stays_light_and_documented() -> None:
    import subprocess
    import sys

    code = "import sys, ingest.cli, ingest.commands.emulator; print('fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    help_text = subprocess.run(
        [sys.executable, "-m", "ingest", "emulator", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "100"},
    ).stdout
    assert "Example:" in help_text and "ingest emulator --port" in help_text
    for flag in ("--server", "--media", "--user", "--certfile", "--abort-rate", "--ready-file"):
        assert flag in help_text
