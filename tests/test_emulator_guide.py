"""The emulator's guide profile (``--profile guide``): only what DIVA's REST API guide documents.

Against the session's guide emulator over loopback HTTP, reset before each test. Where a
test shows a difference from the lenient profile, it asks for ``emulator`` too.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from ingest.emulator.profiles import GUIDE_ROUTES

from .support.emulator import (
    Login,
    RunningEmulator,
    archive_body,
    example,
    faults,
    logins,
    put_file,
    refused,
    submit,
)
from .support.wait import wait_for


@pytest.fixture
def guide(emulator_guide: RunningEmulator) -> Iterator[Login]:
    """``guide("operator")`` logs in as that test user of the (freshly reset) guide emulator."""
    with logins(emulator_guide.url) as login:
        yield login


def spring(response: httpx.Response, status: int, path: str) -> None:
    """``response`` is Spring Boot's default error body, with no DIVA status code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"timestamp", "status", "error", "path"}, body
    assert body["status"] == status and body["path"] == path
    assert body["error"] == {403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}[status]
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None


def served(response: httpx.Response) -> None:
    """``response`` came from a DIVA route: a success, or a DIVA error body."""
    assert response.status_code == 200 or "statusCode" in response.json(), response.text


# -- 1. only the guide's routes ----------------------------------------------------------------


def test_only_the_guides_routes_are_served(emulator_guide: RunningEmulator, guide: Login) -> None:
    api = guide("sysadmin")
    # Every route in the table answers as DIVA (a DIVA error for these bare calls is fine).
    for method, template in sorted(GUIDE_ROUTES):
        if template == "/dataservice/users/logout":
            continue  # below, once the rest is done with this token
        path = template.replace("{requestId}", "1")
        response = api.client.request(method, path, headers={"Authorization": api.token})
        served(response)
    # The production route the lenient profile also serves, and routes the guide never names.
    params = {"objectName": "a", "collectionName": "TEST"}
    spring(api.get("/manager/objects/info", params=params), 404, "/manager/objects/info")
    spring(api.get("/manager/nothing"), 404, "/manager/nothing")
    spring(api.get("/divaconnect/arrays"), 404, "/divaconnect/arrays")
    spring(api.get("/manager/groups/"), 404, "/manager/groups/")  # no slash redirect
    # A served path with a method it is not served for.
    response = api.client.put("/dataservice/profile", headers={"Authorization": api.token})
    spring(response, 405, "/dataservice/profile")
    assert response.headers["allow"] == "GET"
    # The test endpoints and the Swagger page stay; Swagger lists only what is served.
    with httpx.Client(base_url=emulator_guide.url, follow_redirects=True) as client:
        assert client.get("/_emulator/stats").status_code == 200
        assert client.get("/webjars/swagger-ui/index.html").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
    assert "/manager/object/info" in paths and "/manager/objects/info" not in paths
    served(api.post("/dataservice/users/logout"))


def test_object_info_is_the_guides_route(emulator_guide: RunningEmulator, guide: Login) -> None:
    put_file(emulator_guide.servers["NAS"], "a.mov")
    api = guide("operator")
    assert api.wait(submit(api, "archive", archive_body("a", ["a.mov"])))["stateCode"] == 3
    found = api.get("/manager/object/info", params={"objectName": "a", "collectionName": "TEST"})
    assert found.status_code == 200 and found.json()["objectName"] == "a"
    missing = api.get("/manager/object/info", params={"objectName": "b", "collectionName": "TEST"})
    refused(missing, 1009, 404)  # a missing object is DIVA's 1009, not a missing route


# -- 2. no default sourceServer ----------------------------------------------------------------


def test_archive_needs_a_source_server(
    emulator_guide: RunningEmulator, guide: Login, emulator: RunningEmulator, diva: Login
) -> None:
    put_file(emulator_guide.servers["NAS"], "a.mov")
    put_file(emulator.servers["NAS"], "a.mov")
    api = guide("operator")
    body = archive_body("a", ["a.mov"])
    del body["sourceServer"]
    refused(api.post("/manager/requests/archive", body), 1018, 404)
    refused(api.post("/manager/requests/archive", {**body, "sourceServer": ""}), 1018, 404)
    assert api.wait(submit(api, "archive", {**body, "sourceServer": "NAS"}))["stateCode"] == 3
    # The lenient profile takes the first server instead.
    lenient = diva("operator")
    assert lenient.wait(submit(lenient, "archive", body))["stateCode"] == 3


# -- 3. priority 1..100 or -1 ------------------------------------------------------------------


def test_priority_is_one_to_a_hundred(emulator_guide: RunningEmulator, guide: Login) -> None:
    put_file(emulator_guide.servers["NAS"], "a.mov")
    api = guide("operator")
    for bad in (0, 101, -2):
        response = api.post("/manager/requests/archive", archive_body("a", ["a.mov"], priority=bad))
        refused(response, 1008, 400)
    for i, good in enumerate((1, 100, -1, None)):
        body = archive_body(f"ok{i}", ["a.mov"], priority=good)
        if good is None:
            del body["priority"]
        assert api.wait(submit(api, "archive", body))["stateCode"] == 3
    restore = {"objectName": "ok0", "collectionName": "TEST", "destinationServer": "OUT"}
    refused(api.post("/manager/requests/restore", {**restore, "priority": 0}), 1008, 400)
    assert api.wait(submit(api, "restore", {**restore, "priority": 50}))["stateCode"] == 3


def test_lenient_still_takes_priority_zero(emulator: RunningEmulator, diva: Login) -> None:
    put_file(emulator.servers["NAS"], "a.mov")
    api = diva("operator")
    assert (
        api.wait(submit(api, "archive", archive_body("a", ["a.mov"], priority=0)))["stateCode"] == 3
    )
    refused(api.post("/manager/requests/archive", archive_body("b", ["a.mov"], priority=101)),
            1008, 400)  # fmt: skip


# -- 4. roles ----------------------------------------------------------------------------------


def test_roles_as_the_guide_gives_them(emulator_guide: RunningEmulator, guide: Login) -> None:
    put_file(emulator_guide.servers["NAS"], "clip.mov", 100_000)
    user, operator, advop, admin, sysadmin = (
        guide(n) for n in ("user", "operator", "advop", "admin", "sysadmin")
    )
    body = archive_body("clip", ["clip.mov"])
    assert user.get("/manager/requests").status_code == 200
    refused(user.post("/manager/requests/archive", body), 1035, 403)
    assert operator.wait(submit(operator, "archive", body))["stateCode"] == 3
    restore = {"objectName": "clip", "collectionName": "TEST", "destinationServer": "OUT"}
    refused(user.post("/manager/requests/restore", restore), 1035, 403)
    assert operator.wait(submit(operator, "restore", restore))["stateCode"] == 3
    partial = {
        **restore,
        "format": 12,
        "offsets": [{"fileFolder": {"name": "clip.mov", "option": ""}}],
    }
    assert operator.wait(submit(operator, "partialRestore", partial))["stateCode"] == 3
    faults(emulator_guide, wait_rate=1, wait_seconds=30)  # one to cancel, still queued
    waiting = submit(operator, "restore", restore)
    refused(user.post("/manager/requests/cancel", {"requestId": waiting}), 1035, 403)
    assert operator.post("/manager/requests/cancel", {"requestId": waiting}).status_code == 200
    faults(emulator_guide, wait_rate=0)
    delete = {"objectName": "clip", "collectionName": "TEST"}
    for caller in (operator, advop):
        refused(caller.post("/manager/requests/delete", delete), 1035, 403)
    assert admin.wait(submit(admin, "delete", delete))["stateCode"] == 3
    new_user = {"username": "new", "password": "pw", "role": "user"}
    for caller in (admin, operator):
        refused(caller.get("/dataservice/users"), 1035, 403)
        refused(caller.get("/dataservice/roles"), 1035, 403)
        refused(caller.post("/dataservice/users", new_user), 1035, 403)
        gone = caller.client.delete(
            "/dataservice/users",
            params={"username": "user"},
            headers={"Authorization": caller.token},
        )
        refused(gone, 1035, 403)
    assert sysadmin.get("/dataservice/users").status_code == 200
    assert sysadmin.get("/dataservice/roles").status_code == 200
    assert sysadmin.post("/dataservice/users", new_user).status_code == 200
    gone = sysadmin.client.delete(
        "/dataservice/users", params={"username": "new"}, headers={"Authorization": sysadmin.token}
    )
    assert gone.status_code == 200


# -- 5. a bad token is Spring's 403, a role refusal DIVA's -------------------------------------


def test_bad_tokens_get_springs_403(emulator_guide: RunningEmulator, guide: Login) -> None:
    path = "/manager/arrays"
    with httpx.Client(base_url=emulator_guide.url) as client:
        spring(client.get(path), 403, path)
        spring(client.get(path, headers={"Authorization": "Bearer nonsense"}), 403, path)
        bad = client.post("/dataservice/users/login", json={"username": "admin", "password": "x"})
        refused(bad, 1035, 401)  # a login refusal stays DIVA's
    api = guide("operator")
    refused(api.post("/manager/requests/delete", {"objectName": "a", "collectionName": "B"}),
            1035, 403)  # fmt: skip
    assert api.post("/dataservice/users/logout").status_code == 200
    spring(api.get(path), 403, path)
    faults(emulator_guide, token_ttl=1)
    short = guide("user")
    assert short.get(path).status_code == 200
    expired = wait_for(lambda: (r := short.get(path)).status_code == 403 and r, 5)
    spring(expired, 403, path)


# -- 7. the request list pages, oldest first, and ignores filters ------------------------------


def test_request_list_pages_and_ignores_filters(guide: Login) -> None:
    api = guide("operator")
    # Archives of a missing file: accepted, quickly aborted, all listed.
    rids = [submit(api, "archive", archive_body(f"o{i}", ["gone.mov"])) for i in range(25)]
    for rid in rids:
        api.wait(rid)

    def page(**params: Any) -> dict[str, Any]:
        response = api.get("/manager/requests", params=params)
        assert response.status_code == 200, response.text
        doc: dict[str, Any] = response.json()
        assert set(doc) <= {"requests", "page", "size"}
        return doc

    def ids(**params: Any) -> list[int]:
        return [r["id"] for r in page(**params)["requests"]]

    assert ids() == rids[:20]  # 20 a page by default, ascending id
    assert ids(page=2) == rids[20:]
    assert ids(page=3) == []
    assert ids(page=2, size=10) == rids[10:20]
    assert ids(page=0) == ids(page=-4) == rids[:20]  # below 1 reads as the first page
    assert ids(size=1000) == rids and page(size=1000)["size"] == 500
    ignored = {
        "type": "Restore",
        "states": ["Sleeping", "Completed"],
        "objectName": "o3",
        "collectionName": "NONE",
        "startDateTime": "yesterday",
        "sortField": "bogus",
        "sortDirection": "DESC",
    }
    assert ids(**ignored) == rids[:20]
    assert ids(**ignored, page=2, size=5) == rids[5:10]


# -- 6, 8, 9 and the new knobs: see test_emulator_knobs.py (both profiles) ----------------------


def test_guide_bodies_are_accepted(emulator_guide: RunningEmulator, guide: Login) -> None:
    """The guide's own archive and partial-restore samples pass the stricter checks."""
    put_file(emulator_guide.servers["wfm_ftp_sd_for_diva_test"], "1.txt", 10)
    names = ["DNxHD_mxf_wrap_conf.mov", "test.mov"]
    for name in names:
        put_file(emulator_guide.servers["sourcedest"], f"clips/{name}", 100)
    api = guide("operator")
    rid = submit(api, "archive", {**example("archive-curl.json"), "collectionName": "guide"})
    assert api.wait(rid)["stateCode"] == 3
    body = {
        "objectName": "Partial File",
        "collectionName": "Restore All Basic PFR",
        "components": names,
        "media": "default",
        "sourceServer": "sourcedest",
        "filePathRoot": "clips",
    }
    assert api.wait(submit(api, "archive", body))["stateCode"] == 3
    rid = submit(api, "partialRestore", example("partial-restore-file-folder.json"))
    assert api.wait(rid)["stateCode"] == 3
