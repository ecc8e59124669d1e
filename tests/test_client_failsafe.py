"""The DIVA client fails safe: every rule of the fail-safe wire, against fake DIVAs.

Small fake DIVA apps behind :class:`httpx.MockTransport` (no network, no emulator) give
the answers a real DIVA, a gateway or a proxy might: each status code, Spring's bare
404s, lists paged from 0 or 1 (or not at all), early-expired tokens. Each test names the
rule it holds; each fails if the client reads an answer it does not understand as "DIVA
does not have it".
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, Literal

import httpx
import pytest

from ingest import auth as auth_module
from ingest import defaults
from ingest.client import DivaClient, RequestInfo
from ingest.engine import dispatch as tracking
from ingest.errors import (
    DivaAccessDenied,
    DivaBusy,
    DivaError,
    DivaNoRoute,
    DivaNotFound,
    DivaObjectExists,
    DivaProtocolError,
    DivaRefused,
    DivaStatusTransient,
    DivaTransientError,
    DivaUnconfirmed,
)
from ingest.protocol import STATUS, CodeKind, RequestState, code_kind

from .support.fake_diva import FakeDiva, make_client

NAME = "clip.mxf"
COLLECTION = "news"
OURS = ["clip.mxf", "clip.xml"]

#: Spring Boot's answer for a route it does not have: a 404 with no DIVA statusCode.
SPRING_404 = {"timestamp": "2024-05-01T10:00:00.000+00:00", "status": 404, "error": "Not Found"}


def spring_404(request: httpx.Request) -> httpx.Response:
    return httpx.Response(404, json={**SPRING_404, "path": request.url.path})


def diva_status(http: int, code: int, **extra: Any) -> httpx.Response:
    return httpx.Response(http, json={"statusCode": code, **extra})


def entry(
    rid: int,
    name: str | None = NAME,
    collection: str = COLLECTION,
    state: str = "DIVA_COMPLETED",
    submitted: datetime | None = None,
) -> dict[str, Any]:
    """One request as ``GET /requests`` lists it; ``name=None`` leaves out ``objectName``."""
    item: dict[str, Any] = {"id": rid, "stateName": state, "collectionName": collection}
    if name is not None:
        item["objectName"] = name
    if submitted is not None:
        item["submissionDate"] = int(submitted.timestamp())
    return item


def others(first_id: int, count: int) -> list[dict[str, Any]]:
    """Finished requests for other objects, filling pages before the one a test looks for."""
    return [entry(first_id + i, name=f"other-{first_id + i}.mxf") for i in range(count)]


def stored(files: list[Any], **extra: Any) -> dict[str, Any]:
    """An object as ``GET /object/info`` describes it."""
    return {"objectName": NAME, "collectionName": COLLECTION, "components": files, **extra}


@dataclass
class Diva:
    """A fake manager: a paged request list and object info, each shaped by its knobs.

    ``base`` is the number of the first page; a 1-based server answers page 0 as
    ``page0`` says. ``info_routes`` are the object-info routes it has (others get Spring's
    404); an object it does not hold is a 404 with DIVA's 1009.
    """

    queue: list[dict[str, Any]] = field(default_factory=list)
    base: int = 1
    page0: Literal["empty", "clamp", "refuse"] = "empty"
    filters: bool = False  # honour objectName / collectionName
    ignore_page: bool = False
    ignore_size: bool = False
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    info_routes: tuple[str, ...] = ("/object/info",)
    pages: list[int] = field(default_factory=list)
    list_params: list[dict[str, str]] = field(default_factory=list)
    info_calls: list[str] = field(default_factory=list)

    def __call__(self, request: httpx.Request, fake: FakeDiva) -> httpx.Response:
        path = request.url.path.removeprefix("/manager")
        if path == "/requests":
            return self.request_page(request)
        if path in ("/object/info", "/objects/info"):
            self.info_calls.append(path)
            if path not in self.info_routes:
                return spring_404(request)
            key = (request.url.params["objectName"], request.url.params["collectionName"])
            if key not in self.objects:
                return diva_status(404, 1009, statusName="DIVA_ERR_OBJECT_DOESNT_EXIST")
            return httpx.Response(200, json=self.objects[key])
        return spring_404(request)

    def request_page(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        self.list_params.append(params)
        page, size = int(params["page"]), int(params["size"])
        self.pages.append(page)
        items = self.queue
        if self.filters:
            items = [
                r
                for r in items
                if r.get("objectName") == params.get("objectName", r.get("objectName"))
                and r.get("collectionName") == params.get("collectionName", COLLECTION)
            ]
        if self.ignore_size:
            return httpx.Response(200, json={"requests": items})
        if self.ignore_page:
            index = 0
        else:
            if self.base == 1 and page == 0:
                if self.page0 == "refuse":
                    return diva_status(400, 1008, statusDescription="page must be >= 1")
                if self.page0 == "empty":
                    return httpx.Response(200, json={"requests": []})
                page = 1
            index = page - self.base
        return httpx.Response(200, json={"requests": items[index * size : (index + 1) * size]})


def diva_client(diva: Diva, **kwargs: Any) -> DivaClient:
    kwargs.setdefault("page_size", 2)
    return make_client(FakeDiva(diva), **kwargs)


# -- 1. the status-code table ----------------------------------------------------------

ISSUE_TRANSIENT = (1002, 1003, 1004, 1005, 1013, 1020, 1024, 1031, 1039)
ISSUE_PERMANENT = (1008, 1017, 1018, 1035, 1037)
ISSUE_CONFLICT = (1016, 1040)
ISSUE_NOT_FOUND = (1009, 1011)
ISSUE_SUCCESS = (1000, 1019)


def expected_error(code: int) -> type[DivaError]:
    """The exact class a refusal with ``code`` must raise."""
    if code == 1032:
        return DivaBusy
    if code == 1035:
        return DivaAccessDenied
    kind = code_kind(code)
    if kind is CodeKind.TRANSIENT:
        return DivaStatusTransient
    if kind is CodeKind.PERMANENT:
        return DivaRefused
    if kind is CodeKind.CONFLICT:
        return DivaObjectExists
    assert kind is CodeKind.NOT_FOUND
    return DivaNotFound


def post_archive(response: httpx.Response) -> int:
    with make_client(FakeDiva(lambda req, f: response)) as diva:
        return diva.archive({"objectName": NAME, "collectionName": COLLECTION})


def test_the_table_covers_every_documented_code() -> None:
    assert sorted(STATUS) == list(range(1000, 1041))


@pytest.mark.parametrize("http", [400, 200])
@pytest.mark.parametrize("code", sorted(STATUS))
def test_every_status_code_raises_its_kind(code: int, http: int) -> None:
    response = diva_status(http, code, requestId=77, statusDescription="whatever")
    if code_kind(code) is CodeKind.SUCCESS:
        if http == 200:
            assert post_archive(response) == 77
        else:  # DIVA's "OK" on an HTTP error: the two disagree, never a success
            with pytest.raises(DivaProtocolError):
                post_archive(response)
        return
    with pytest.raises(DivaError) as info:
        post_archive(response)
    error = info.value
    assert type(error) is expected_error(code), f"{code} on HTTP {http}: {error!r}"
    assert error.status_code == code
    assert error.transient == (code_kind(code) is CodeKind.TRANSIENT)
    assert isinstance(error, DivaTransientError) == error.transient
    # DIVA's own refusal: the archive was certainly not created, a resubmit is safe.
    assert not tracking.uncertain(error)


def test_the_codes_the_issue_names_have_the_kinds_it_asks_for() -> None:
    for code in (*ISSUE_TRANSIENT, 1032):
        assert code_kind(code) is CodeKind.TRANSIENT, code
    for code in ISSUE_PERMANENT:
        assert code_kind(code) is CodeKind.PERMANENT, code
    for code in ISSUE_CONFLICT:
        assert code_kind(code) is CodeKind.CONFLICT, code
    for code in ISSUE_NOT_FOUND:
        assert code_kind(code) is CodeKind.NOT_FOUND, code
    for code in ISSUE_SUCCESS:
        assert code_kind(code) is CodeKind.SUCCESS, code
    named = {*ISSUE_TRANSIENT, *ISSUE_PERMANENT, *ISSUE_CONFLICT, *ISSUE_NOT_FOUND}
    assert not named & set(ISSUE_SUCCESS)


@pytest.mark.parametrize("code", ISSUE_TRANSIENT)
def test_the_issues_transient_codes_are_retried_not_refused(code: int) -> None:
    with pytest.raises(DivaStatusTransient) as info:
        post_archive(diva_status(400, code))
    assert info.value.transient and info.value.exit_code == 4
    assert not isinstance(info.value, DivaRefused)


@pytest.mark.parametrize("code", ISSUE_PERMANENT)
def test_the_issues_permanent_codes_are_refusals(code: int) -> None:
    with pytest.raises(DivaRefused) as info:
        post_archive(diva_status(400, code))
    assert not info.value.transient and info.value.exit_code == 6
    assert isinstance(info.value, DivaAccessDenied) == (code == 1035)


def test_1032_is_busy_and_the_object_codes_are_what_they_say() -> None:
    with pytest.raises(DivaBusy):
        post_archive(diva_status(400, 1032))
    for code in ISSUE_CONFLICT:
        with pytest.raises(DivaObjectExists):
            post_archive(diva_status(400, code))
    for code in ISSUE_NOT_FOUND:
        with pytest.raises(DivaNotFound):
            post_archive(diva_status(400, code))


@pytest.mark.parametrize("http", [400, 200])
def test_an_undocumented_code_is_transient(http: int) -> None:
    assert code_kind(4242) is CodeKind.TRANSIENT
    with pytest.raises(DivaStatusTransient) as info:
        post_archive(diva_status(http, 4242))
    assert info.value.status_code == 4242
    assert info.value.status_name == "DIVA_ERR_4242"
    assert not tracking.uncertain(info.value)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, html="<html><body>Proxy login</body></html>"),
        httpx.Response(502, html="<html><body>Bad gateway</body></html>"),
        httpx.Response(200, content=b""),
        httpx.Response(200, text='{"requestId": 12, "statusCo'),
    ],
    ids=["html-200", "html-502", "empty-200", "truncated-json"],
)
def test_answers_that_are_not_divas_leave_the_drop_uncertain(response: httpx.Response) -> None:
    with pytest.raises(DivaError) as info:
        post_archive(response)
    assert not isinstance(info.value, DivaRefused | DivaStatusTransient)
    assert tracking.uncertain(info.value)


# -- 2. object info: the guide's route, then production's -------------------------------


def test_object_info_falls_back_on_a_spring_404_and_remembers_the_route() -> None:
    diva = Diva(info_routes=("/objects/info",), objects={(NAME, COLLECTION): stored(OURS)})
    with diva_client(diva) as client:
        assert client.object_info_path is None
        obj = client.object_info(NAME, COLLECTION)
        assert obj is not None and [c.name for c in obj.components] == OURS
        assert diva.info_calls == ["/object/info", "/objects/info"]
        assert client.object_info_path == "/objects/info"
        assert client.object_info("absent.mxf", COLLECTION) is None
        assert client.object_info(NAME, COLLECTION) is not None
        assert diva.info_calls == [
            "/object/info",
            "/objects/info",
            "/objects/info",
            "/objects/info",
        ]


def test_object_info_takes_1009_as_absent_without_falling_back() -> None:
    diva = Diva(info_routes=("/object/info", "/objects/info"))
    with diva_client(diva) as client:
        assert client.object_info(NAME, COLLECTION) is None
        assert diva.info_calls == ["/object/info"]
        assert client.object_info_path == "/object/info"


def test_object_info_with_no_route_at_all_raises_never_absent() -> None:
    diva = Diva(info_routes=())
    with diva_client(diva) as client:
        with pytest.raises(DivaNoRoute):
            client.object_info(NAME, COLLECTION)
        assert diva.info_calls == ["/object/info", "/objects/info"]
        assert client.object_info_path is None  # nothing answered: nothing learned
        with pytest.raises(DivaNoRoute):
            client.object_info(NAME, COLLECTION)


def test_a_pinned_route_is_the_only_one_tried() -> None:
    diva = Diva(info_routes=("/object/info",))
    with diva_client(diva, object_info_path="/objects/info") as client:
        for _ in range(2):
            with pytest.raises(DivaNoRoute):
                client.object_info(NAME, COLLECTION)
        assert diva.info_calls == ["/objects/info", "/objects/info"]
        assert client.object_info_path == "/objects/info"


def test_a_learned_route_that_disappears_raises_rather_than_concluding() -> None:
    diva = Diva(info_routes=("/objects/info",))
    with diva_client(diva) as client:
        assert client.object_info(NAME, COLLECTION) is None
        diva.info_routes = ()  # a gateway reconfigured under us
        with pytest.raises(DivaNoRoute):
            client.object_info(NAME, COLLECTION)


def test_1011_on_object_info_is_not_absence() -> None:
    calls: list[str] = []

    def answer(request: httpx.Request, fake: FakeDiva) -> httpx.Response:
        calls.append(request.url.path)
        return diva_status(404, 1011, statusName="DIVA_ERR_NO_SUCH_REQUEST")

    with make_client(FakeDiva(answer)) as client:
        with pytest.raises(DivaUnconfirmed, match="1011"):
            client.object_info(NAME, COLLECTION)
    assert calls == ["/manager/object/info"]


@pytest.mark.parametrize(
    ("code", "absent"),
    [(1009, True), (1011, False), (1002, False), (1035, False), (4242, False)],
)
def test_a_status_inside_a_200_object_info_is_read_as_diva_s_word(code: int, absent: bool) -> None:
    def answer(request: httpx.Request, fake: FakeDiva) -> httpx.Response:
        return diva_status(200, code)

    with make_client(FakeDiva(answer)) as client:
        if absent:
            assert client.object_info(NAME, COLLECTION) is None
        else:
            with pytest.raises(DivaUnconfirmed) as info:  # never absence, never an object
                client.object_info(NAME, COLLECTION)
            assert info.value.status_code == code


@pytest.mark.parametrize(
    "body",
    [
        {"objectName": NAME, "collectionName": COLLECTION},
        {"objectName": NAME, "collectionName": COLLECTION, "components": None},
        {"objectName": NAME, "collectionName": COLLECTION, "components": "clip.mxf"},
        {"objectName": NAME, "collectionName": COLLECTION, "files": {"clip.mxf": 1}},
        {"objectName": NAME, "collectionName": COLLECTION, "components": [42]},
        {"objectName": NAME, "collectionName": COLLECTION, "components": [{"size": 3}]},
        {"objectName": NAME, "collectionName": COLLECTION, "statusCode": 1000},
        {"requestId": 3, "statusCode": 1000},
    ],
    ids=["no-files", "null", "string", "mapping", "number", "unnamed-file", "ok", "not-object"],
)
def test_an_object_whose_files_cannot_be_read_is_a_protocol_error(body: dict[str, Any]) -> None:
    def answer(request: httpx.Request, fake: FakeDiva) -> httpx.Response:
        if request.url.path == "/manager/requests":
            return httpx.Response(200, json={"requests": []})
        return httpx.Response(200, json=body)

    with make_client(FakeDiva(answer)) as client:
        with pytest.raises(DivaProtocolError):
            client.object_info(NAME, COLLECTION)
        with pytest.raises(DivaProtocolError):  # neither ours, nor another's, nor absent
            tracking.reconcile(client, NAME, COLLECTION, OURS)


# -- 3. the request list, read to its end -----------------------------------------------


def test_a_one_based_list_is_read_past_its_first_page() -> None:
    target = entry(5, state="DIVA_RUNNING")
    diva = Diva(queue=[*others(1, 4), target])  # pages of 2: the target alone on page 3
    with diva_client(diva) as client:
        found = client.requests(object_name=NAME, collection=COLLECTION)
        assert [r.request_id for r in found] == [5]
    assert diva.pages == [0, 1, 2, 3]  # page 0 answers nothing: read from page 1
    assert all(p["size"] == "2" for p in diva.list_params)


def test_a_full_last_page_needs_one_more_page_to_end() -> None:
    diva = Diva(queue=[*others(1, 4), entry(5), entry(6)])  # 3 full pages
    with diva_client(diva) as client:
        assert [r.request_id for r in client.requests(object_name=NAME)] == [5, 6]
    assert diva.pages == [0, 1, 2, 3, 4]


def test_a_zero_based_list_is_detected_and_read_from_page_0() -> None:
    first = entry(1, state="DIVA_PENDING")
    diva = Diva(queue=[first, *others(2, 3), entry(5)], base=0)
    with diva_client(diva) as client:
        found = client.requests(object_name=NAME, collection=COLLECTION)
        assert [r.request_id for r in found] == [1, 5]
        assert client.page_base == 0
        assert diva.pages == [0, 1, 0, 1, 2]  # detection (0 differs from 1), then the walk
        diva.pages.clear()
        client.requests(object_name=NAME, collection=COLLECTION)
        assert diva.pages == [0, 1, 2]  # found out once


def test_a_zero_based_list_first_read_empty_is_not_fixed_as_one_based() -> None:
    diva = Diva(base=0, filters=True)
    with diva_client(diva) as client:
        assert tracking.reconcile(client, "first.mxf", COLLECTION, ["first.mxf"]).found == "absent"
        assert client.page_base is None  # an empty page 0 decided nothing
        diva.queue.append(entry(7, state="DIVA_RUNNING"))  # our archive, accepted, then a crash
        result = tracking.reconcile(client, NAME, COLLECTION, OURS)
        assert client.page_base == 0
    assert result.found == "request"  # not "absent": that would resubmit it blind


def test_a_one_based_server_that_clamps_page_0_stays_one_based() -> None:
    diva = Diva(queue=[entry(1), *others(2, 3), entry(5)], page0="clamp")
    with diva_client(diva) as client:
        found = client.requests(object_name=NAME, collection=COLLECTION)
        assert [r.request_id for r in found] == [1, 5]  # each once, page 3 reached
        assert client.page_base == 1
    assert diva.pages == [0, 1, 1, 2, 3]


def test_a_one_based_server_that_refuses_page_0_stays_one_based() -> None:
    diva = Diva(queue=[*others(1, 4), entry(5)], page0="refuse")
    with diva_client(diva) as client:
        assert [r.request_id for r in client.requests(object_name=NAME)] == [5]
        assert client.page_base == 1
    assert diva.pages == [0, 1, 2, 3]


def test_filters_are_hints_and_every_entry_is_checked_here() -> None:
    queue = [
        entry(1, name="other.mxf"),
        entry(2, collection="sport"),  # our name, another collection
        entry(3, name="clip.mxf.bak"),
        entry(4, name="clip"),
        entry(5, name="other2.mxf", collection="sport"),
        entry(6, state="DIVA_RUNNING"),
    ]
    diva = Diva(queue=queue)  # ignores the filters: answers every request
    with diva_client(diva) as client:
        found = client.requests(object_name=NAME, collection=COLLECTION)
    assert [r.request_id for r in found] == [6]
    walk = [p for p in diva.list_params if p["page"] != "0"]
    assert [p["page"] for p in walk] == ["1", "2", "3", "4"]
    assert all(p["objectName"] == NAME and p["collectionName"] == COLLECTION for p in walk)


def test_a_server_honouring_the_filters_is_read_the_same() -> None:
    diva = Diva(queue=[*others(1, 4), entry(5, collection="sport"), entry(6)], filters=True)
    with diva_client(diva) as client:
        assert [r.request_id for r in client.requests(object_name=NAME, collection=COLLECTION)] == [
            6
        ]


def test_a_list_still_full_after_max_pages_is_unconfirmed() -> None:
    diva = Diva(queue=[entry(1, state="DIVA_RUNNING"), *others(2, 100)])
    with diva_client(diva, max_pages=3) as client:
        with pytest.raises(DivaUnconfirmed, match="did not end within 3 pages"):
            client.requests(object_name=NAME, collection=COLLECTION)
    assert diva.pages == [0, 1, 2, 3]  # and no further


def test_a_list_whose_end_is_the_last_page_allowed_is_read() -> None:
    diva = Diva(queue=[*others(1, 5), entry(6)])  # page 3 is the last, and full
    with diva_client(diva, max_pages=4) as client:
        assert [r.request_id for r in client.requests(object_name=NAME)] == [6]


def test_a_server_that_ignores_page_is_unconfirmed_not_a_loop() -> None:
    diva = Diva(queue=[*others(1, 4), entry(5)], ignore_page=True)
    with diva_client(diva, max_pages=10) as client:
        with pytest.raises(DivaUnconfirmed, match="repeats page"):
            client.requests(object_name=NAME, collection=COLLECTION)
    assert diva.pages == [0, 1, 1, 2]


def test_a_server_that_ignores_size_is_read_as_the_whole_list() -> None:
    diva = Diva(queue=[*others(1, 6), entry(7)], ignore_size=True)
    with diva_client(diva) as client:
        found = client.requests(object_name=NAME, collection=COLLECTION)
        assert [r.request_id for r in found] == [7]
    assert diva.pages == [0, 1, 1]  # detection (same page twice), then one page is all


def test_entries_that_do_not_name_their_object_are_unconfirmed_when_nothing_matched() -> None:
    anonymous = [entry(i, name=None) for i in range(1, 4)]
    diva = Diva(queue=[*others(10, 2), *anonymous])
    with diva_client(diva) as client:
        with pytest.raises(DivaUnconfirmed, match="do not say which object"):
            client.requests(object_name=NAME, collection=COLLECTION)
        diva.queue.append(entry(20, state="DIVA_RUNNING"))
        assert [r.request_id for r in client.requests(object_name=NAME)] == [20]


def newest_first(since: datetime) -> Diva:
    """A newest-first list around ``since``: page 1 after it, page 2 and the first of
    page 3 within the margin before it (our request among them), then older ones."""
    margin = timedelta(seconds=defaults.DIVA_LIST_MARGIN_SECONDS)
    dates = [
        since + timedelta(minutes=5),
        since + timedelta(minutes=1),
        since - timedelta(minutes=1),
        since - timedelta(minutes=2),
        since - margin + timedelta(minutes=1),  # ours: a clock behind by nearly the margin
        since - margin - timedelta(minutes=1),
        *(since - margin - timedelta(hours=h) for h in range(1, 10)),
    ]
    ids = list(range(100, 100 - len(dates), -1))
    queue = [
        entry(rid, name=NAME if i == 4 else f"other-{rid}.mxf", submitted=d)
        for i, (rid, d) in enumerate(zip(ids, dates, strict=True))
    ]
    return Diva(queue=queue)


def test_a_newest_first_list_stops_below_since_less_the_margin() -> None:
    since = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    diva = newest_first(since)
    with diva_client(diva) as client:
        found = client.requests(object_name=NAME, collection=COLLECTION, since=since)
    assert [r.request_id for r in found] == [96]
    assert diva.pages == [0, 1, 2, 3, 4]  # page 4 is all older than the floor: the end
    diva.pages.clear()
    with diva_client(diva) as client:
        client.requests(object_name=NAME, collection=COLLECTION)
    assert diva.pages == [0, 1, 2, 3, 4, 5, 6, 7, 8]  # without `since`: to the very end


def test_an_oldest_first_list_is_walked_to_its_end() -> None:
    since = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    old = since - timedelta(days=3)
    queue = [
        entry(i, name=f"other-{i}.mxf", submitted=old + timedelta(minutes=i)) for i in range(1, 7)
    ]
    queue.append(entry(7, state="DIVA_RUNNING", submitted=since + timedelta(minutes=1)))
    diva = Diva(queue=queue)
    with diva_client(diva) as client:
        found = client.requests(object_name=NAME, collection=COLLECTION, since=since)
    assert [r.request_id for r in found] == [7]
    assert diva.pages == [0, 1, 2, 3, 4]


def test_a_newest_first_list_without_dates_is_walked_to_its_end() -> None:
    queue = [entry(i, name=f"other-{i}.mxf") for i in range(9, 1, -1)]
    queue.append(entry(1))
    diva = Diva(queue=queue)
    with diva_client(diva) as client:
        since = datetime(2030, 1, 1, tzinfo=UTC)
        assert [r.request_id for r in client.requests(object_name=NAME, since=since)] == [1]
    assert diva.pages == [0, 1, 2, 3, 4, 5]


# -- 4. reconcile and free_name -----------------------------------------------------------


def test_absent_needs_the_whole_list_and_a_1009() -> None:
    diva = Diva(queue=others(1, 5))
    with diva_client(diva) as client:
        result = tracking.reconcile(client, NAME, COLLECTION, OURS)
    assert result.found == "absent"
    assert diva.pages == [0, 1, 2, 3]
    assert diva.info_calls == ["/object/info"]


def test_no_object_info_route_is_never_absent() -> None:
    diva = Diva(queue=others(1, 5), info_routes=())
    with diva_client(diva) as client:
        with pytest.raises(DivaNoRoute):
            tracking.reconcile(client, NAME, COLLECTION, OURS)
    assert diva.info_calls == ["/object/info", "/objects/info"]


def test_an_unconfirmed_list_and_a_1009_is_unconfirmed() -> None:
    diva = Diva(queue=others(1, 4), ignore_page=True)
    with diva_client(diva) as client:
        with pytest.raises(DivaUnconfirmed):
            tracking.reconcile(client, NAME, COLLECTION, OURS)
    assert diva.info_calls == ["/object/info"]  # the object was asked, and said 1009


def test_an_unconfirmed_list_and_our_object_is_the_object() -> None:
    diva = Diva(queue=others(1, 4), ignore_page=True, objects={(NAME, COLLECTION): stored(OURS)})
    with diva_client(diva) as client:
        assert tracking.reconcile(client, NAME, COLLECTION, OURS).found == "object"


@pytest.mark.parametrize("with_since", [False, True])
@pytest.mark.parametrize("base", [0, 1])
def test_a_live_request_on_page_3_is_the_request(base: int, with_since: bool) -> None:
    since = datetime(2024, 5, 1, 12, 0, tzinfo=UTC) if with_since else None
    ours = entry(5, state="DIVA_WAITING_FOR_RESOURCES", submitted=since)
    queue = [*others(1, 4), ours, *others(6, 1)]
    diva = Diva(queue=queue, base=base, objects={(NAME, COLLECTION): stored(["x.mxf"])})
    with diva_client(diva) as client:
        result = tracking.reconcile(client, NAME, COLLECTION, OURS, since=since)
    assert result.found == "request"
    assert result.info is not None and result.info.request_id == 5
    assert diva.info_calls == []  # the request settles it


@pytest.mark.parametrize(
    ("obj", "found"),
    [
        (stored(OURS), "object"),
        (stored(["/clip.xml", "clip.mxf"]), "object"),
        (stored([{"name": "clip.mxf", "size": 3}, {"fileName": "clip.xml"}]), "object"),
        (
            stored(["/mnt/nas/in/clip.mxf", "/mnt/nas/in/clip.xml"], filePathRoot="/mnt/nas/in/"),
            "object",
        ),
        (stored(["in\\clip.mxf", "in\\clip.xml"], filePathRoot="in"), "object"),
        (stored(["clip.mxf"]), "conflict"),
        (stored([*OURS, "extra.wav"]), "conflict"),
        (stored(["other/clip.mxf", "other/clip.xml"], filePathRoot="/mnt/nas/in"), "conflict"),
        (stored(["a.mxf", "b.xml"]), "conflict"),
        (stored([]), "conflict"),
        (stored([], filePathRoot="/mnt/nas/in"), "conflict"),
    ],
    ids=[
        "same",
        "slashes",
        "mappings",
        "under-root",
        "windows-root",
        "fewer",
        "more",
        "another-root",
        "different",
        "empty",
        "empty-rooted",
    ],
)
def test_an_object_is_ours_only_with_our_components(obj: dict[str, Any], found: str) -> None:
    diva = Diva(queue=others(1, 3), objects={(NAME, COLLECTION): obj})
    with diva_client(diva) as client:
        assert tracking.reconcile(client, NAME, COLLECTION, OURS).found == found


def test_free_name_takes_a_name_only_on_1009() -> None:
    diva = Diva()
    with diva_client(diva) as client:
        assert tracking.free_name(client, NAME, COLLECTION) == f"{NAME}_2"
        diva.objects[(f"{NAME}_2", COLLECTION)] = stored(["a.mxf"])
        assert tracking.free_name(client, NAME, COLLECTION) == f"{NAME}_3"
    assert diva.info_calls == ["/object/info"] * 3


def test_free_name_without_an_object_info_route_takes_no_name() -> None:
    diva = Diva(info_routes=())
    with diva_client(diva) as client:
        with pytest.raises(DivaNoRoute):
            tracking.free_name(client, NAME, COLLECTION)
    assert diva.info_calls == ["/object/info", "/objects/info"]


# -- 5. one login ---------------------------------------------------------------------


def jwt(exp: float) -> str:
    """A JWT-shaped token (header.payload.signature, base64url, no padding)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = part(json.dumps({"sub": "ingest", "iat": int(exp) - 3600, "exp": int(exp)}).encode())
    return f"{header}.{payload}.{part(b'not-a-signature-only-diva-checks-it')}"


class JwtDiva(FakeDiva):
    """A FakeDiva whose logins hand out the given tokens, in order."""

    def __init__(self, handler: Any, tokens: list[str]) -> None:
        super().__init__(handler)
        self.tokens = tokens

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/dataservice/users/login":
            token = self.tokens[self.logins]
            self.logins += 1
            self.valid.add(token)
            return httpx.Response(200, json={"token": token})
        return super().__call__(request)


def versions(request: httpx.Request, fake: FakeDiva, refused: httpx.Response) -> httpx.Response:
    if not fake.token_ok(request):
        return refused
    return httpx.Response(200, json={"versions": []})


@pytest.mark.parametrize(
    "refused",
    [
        httpx.Response(401),
        httpx.Response(401, json={"statusCode": 1020}),
        httpx.Response(403, json={**SPRING_404, "status": 403, "error": "Forbidden"}),
        httpx.Response(403, text="Forbidden"),
        httpx.Response(403),
    ],
    ids=["401", "401-1020", "403-spring", "403-text", "403-empty"],
)
def test_a_refused_token_means_one_login_and_a_replay(refused: httpx.Response) -> None:
    fake = FakeDiva(lambda req, f: versions(req, f, refused))
    with make_client(fake) as diva:
        diva.versions()
        fake.valid.clear()  # DIVA invalidated the token early (a restart, an admin)
        diva.versions()
        diva.versions()
        assert diva.logins == 2
    assert fake.seen_auth == ["tok-1", "tok-1", "tok-2", "tok-2"]


def deny_archive(request: httpx.Request, fake: FakeDiva) -> httpx.Response:
    if not fake.token_ok(request):
        return httpx.Response(403, json={"statusCode": 1020})
    if request.url.path == "/manager/requests/archive":
        return diva_status(403, 1035, statusName="DIVA_ERR_ACCESS_DENIED")
    return httpx.Response(200, json={"versions": []})


def test_a_role_refusal_on_a_fresh_token_is_not_a_new_login() -> None:
    fake = FakeDiva(deny_archive)
    with make_client(fake) as diva:
        diva.versions()
        for _ in range(5):
            with pytest.raises(DivaAccessDenied):
                diva.archive({"objectName": NAME})
        diva.versions()
        assert diva.logins == 1
    assert fake.logins == 1
    assert fake.seen_auth == ["tok-1"] * 7


def test_a_role_refusal_on_a_fresh_jwt_is_not_a_new_login() -> None:
    now = time.time()
    fake = JwtDiva(deny_archive, [jwt(now + 3600), jwt(now + 7200)])
    with make_client(fake) as diva:
        for _ in range(5):
            with pytest.raises(DivaAccessDenied):
                diva.archive({"objectName": NAME})
        assert fake.logins == 1


def test_a_1035_on_a_jwt_past_its_exp_logs_in_again_once() -> None:
    now = time.time()
    stale, fresh = jwt(now - 60), jwt(now + 3600)

    def answer(request: httpx.Request, fake: FakeDiva) -> httpx.Response:
        # This DIVA says "access denied" to an expired token, not 1020.
        if request.headers["authorization"] == stale:
            return diva_status(403, 1035)
        return httpx.Response(200, json={"requestId": 41, "statusCode": 1000})

    fake = JwtDiva(answer, [stale, fresh])
    with make_client(fake) as diva:
        assert diva.archive({"objectName": NAME}) == 41
        assert diva.archive({"objectName": NAME}) == 41
        assert fake.logins == 2
    assert fake.seen_auth == [stale, fresh, fresh]


def test_a_1035_on_a_token_older_than_the_session_logs_in_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(
        auth_module, "time", SimpleNamespace(monotonic=lambda: clock[0], time=time.time)
    )

    def answer(request: httpx.Request, fake: FakeDiva) -> httpx.Response:
        if request.headers["authorization"] == "tok-1":
            return diva_status(403, 1035)
        return httpx.Response(200, json={"requestId": 41, "statusCode": 1000})

    fake = FakeDiva(answer)
    with make_client(fake, session_minutes=1) as diva:
        diva.login()  # at 1000
        clock[0] += 59  # within the session: the role's refusal
        with pytest.raises(DivaAccessDenied):
            diva.archive({"objectName": NAME})
        assert fake.logins == 1
        clock[0] += 1  # the session is over: the 1035 may be the token's
        assert diva.archive({"objectName": NAME}) == 41
        assert fake.logins == 2
        clock[0] += 59  # the new token is young again
        assert diva.archive({"objectName": NAME}) == 41
        assert fake.logins == 2
    assert fake.seen_auth == ["tok-1", "tok-1", "tok-2", "tok-2"]


def test_a_1035_even_after_a_new_login_is_access_denied_not_a_loop() -> None:
    now = time.time()
    fake = JwtDiva(
        lambda req, f: diva_status(403, 1035), [jwt(now - 60), jwt(now - 30), jwt(now - 1)]
    )
    with make_client(fake) as diva:
        with pytest.raises(DivaAccessDenied):
            diva.archive({"objectName": NAME})
        assert fake.logins == 2


# -- 6. edge answers ------------------------------------------------------------------


@pytest.mark.parametrize("http", [200, 201, 202, 204])
def test_an_accepted_archive_without_a_body_is_a_protocol_error(http: int) -> None:
    with pytest.raises(DivaProtocolError, match="empty body") as info:
        post_archive(httpx.Response(http))
    assert tracking.uncertain(info.value)  # the archive may well exist: never resubmit blind


@pytest.mark.parametrize(
    ("wire", "state"),
    [
        ({"stateCode": "3"}, RequestState.COMPLETED),
        ({"stateCode": " 12 "}, RequestState.RUNNING),
        ({"stateCode": 11}, RequestState.PARTIALLY_ABORTED),
        ({"stateName": "DIVA_PARTIALLY_COMPLETED"}, RequestState.PARTIALLY_ABORTED),
        ({"stateName": "PARTIALLY_COMPLETED"}, RequestState.PARTIALLY_ABORTED),
        ({"stateName": "Partially completed", "stateCode": 3}, RequestState.PARTIALLY_ABORTED),
        ({"stateName": "DIVA_WAITING_FOR_OPERATOR"}, RequestState.WAITING_FOR_OPERATOR),
        ({"stateName": "no such state", "stateCode": "8"}, RequestState.WAITING_FOR_RESOURCES),
        ({"stateCode": "3.5"}, RequestState.UNKNOWN_STATE),
        ({"stateCode": True}, RequestState.UNKNOWN_STATE),
    ],
)
def test_request_states_are_read_the_tolerant_way(
    wire: dict[str, Any], state: RequestState
) -> None:
    info = RequestInfo.from_wire({"id": 9, **wire})
    assert info.state is state


def test_partially_completed_is_finished() -> None:
    state = RequestInfo.from_wire({"id": 9, "stateName": "DIVA_PARTIALLY_COMPLETED"}).state
    assert state.finished and not state.waiting


@pytest.mark.parametrize(
    ("state", "waiting"),
    [
        (RequestState.PENDING, True),
        (RequestState.WAITING_FOR_RESOURCES, True),
        (RequestState.WAITING_FOR_OPERATOR, True),
        (RequestState.ASSIGNING_POOL, True),
        (RequestState.RUNNING, False),
        (RequestState.TRANSFERRING, False),
        (RequestState.MIGRATING, False),
        (RequestState.COMPLETED, False),
        (RequestState.DELETING, False),
    ],
)
def test_waiting_states(state: RequestState, waiting: bool) -> None:
    assert state.waiting is waiting
