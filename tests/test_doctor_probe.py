"""``ingest doctor --probe``: how a DIVA's API compares with the guide, asked read-only.

Through the real CLI against both emulator profiles over loopback: the lenient one (what
production clients were seen doing) and the guide one (only what the vendor's guide
documents). Servers neither profile imitates (pages from 0, newest first, object info only
at ``/objects/info``, capped pages, missing routes) are faked with an httpx transport.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.client import DivaClient
from ingest.commands import doctor as doctor_module
from ingest.commands import probe as probe_module
from ingest.config import DivaConfig

from .support.emulator import DivaApi, RunningEmulator, archive_body, put_file, submit
from .support.ledgers import Result
from .support.sites import Site


def stats(emulator: RunningEmulator) -> dict[str, Any]:
    with httpx.Client(base_url=emulator.url, timeout=10) as client:
        doc: dict[str, Any] = client.get("/_emulator/stats").json()
    return doc


def archive(emulator: RunningEmulator, count: int) -> list[int]:
    """``count`` archive requests in DIVA's queue, finished, so the queue holds still."""
    ids = []
    with DivaApi(emulator.url, "operator", "operator") as api:
        for i in range(count):
            put_file(emulator.servers["NAS"], f"clip{i}.mov")
            ids.append(submit(api, "archive", archive_body(f"clip{i}", [f"clip{i}.mov"])))
        for rid in ids:
            assert api.wait(rid)["stateName"] == "DIVA_COMPLETED"
    return ids


class Probed:
    """One ``ingest doctor --probe`` run, and what it did to the emulator."""

    def __init__(self, site: Site, emulator: RunningEmulator, *args: str) -> None:
        before = stats(emulator)
        self.result: Result = site.run("--probe", *args)
        after = stats(emulator)
        self.requests_before, self.requests_after = before["requests"], after["requests"]
        self.objects = (before["objects"], after["objects"])
        self.logins = after["logins"] - before["logins"]
        self.calls = {
            call: n - before["calls"].get(call, 0)
            for call, n in after["calls"].items()
            if n != before["calls"].get(call, 0)
        }

    def read_only(self) -> None:
        """Nothing written to DIVA: no request, no object, only GETs besides the session."""
        assert self.requests_after == self.requests_before
        assert self.objects[0] == self.objects[1]
        session = {"POST /dataservice/users/login", "POST /dataservice/users/logout"}
        writes = [c for c in self.calls if not c.startswith("GET ") and c not in session]
        assert writes == [], self.calls
        assert self.logins == 1 and self.calls["POST /dataservice/users/login"] == 1


def probe_json(site: Site, emulator: RunningEmulator, *args: str) -> tuple[Probed, dict[str, Any]]:
    run = Probed(site, emulator, "--json", *args)
    run.read_only()
    doc = json.loads(run.result.stdout)
    assert doc["probe"]["logins"] == 1
    return run, doc


def lines(checks: list[dict[str, Any]], prefix: str = "diva ") -> list[str]:
    return [
        f"{c['level']} {c['check']}: {c['message']}"
        for c in checks
        if c["check"].startswith(prefix) and c["check"] not in ("diva", "diva login")
    ]


@pytest.fixture
def guide_site(tmp_path: Path, emulator_guide: RunningEmulator) -> Site:
    return Site(tmp_path, emulator_guide)


@pytest.fixture
def lenient_site(tmp_path: Path, emulator: RunningEmulator) -> Site:
    return Site(tmp_path, emulator)


def test_guide_profile(guide_site: Site, emulator_guide: RunningEmulator) -> None:
    archive(emulator_guide, 3)
    run, doc = probe_json(guide_site, emulator_guide)
    assert run.result.exit_code == 0, run.result.output
    probe = doc["probe"]
    assert probe["object_info"]["route"] == "/object/info"
    assert probe["object_info"]["routes"] == {
        "/object/info": {"answer": "1009", "detail": "DIVA's 1009 (object does not exist)"},
        "/objects/info": {"answer": "no route", "detail": "HTTP 404 without a DIVA status"},
    }
    requests = probe["requests"]
    assert requests["route"] is True and requests["shape"] == '{"requests": [...]}'
    assert requests["page_base"] == 1 and requests["page_base_detected"] is True
    assert requests["order"] == "oldest-first"
    assert requests["size"] == {"1": "honoured", "2": "honoured"}
    assert requests["pages_advance"] is True and requests["page_cap"] is None
    assert requests["filters"] == {"objectName": "ignored", "collectionName": "ignored"}
    assert requests["complete"] is True
    assert probe["versions"]["version"]
    assert lines(doc["checks"]) == [
        "OK diva object info: GET /object/info works: a made-up object gets DIVA's 1009 "
        "(object does not exist)",
        "INFO diva object info: GET /objects/info: no such route (HTTP 404 without a DIVA status)",
        'OK diva request list: GET /requests answers {"requests": [...]}, pages numbered '
        "from 1, oldest first",
        "OK diva request list: honours size=1 and size=2, and page 2 follows page 1",
        "INFO diva request list: ignores the objectName and collectionName filters: fine, "
        "the client checks every entry itself",
        "OK diva request list: the client reads it to its end",
        "OK diva versions: 9.0.0 (Manager 9.0.0, Data Service 9.0.0, REST API Gateway 9.0.0)",
        "OK diva session: one login for the whole probe, as the guide asks",
        "OK diva logout: logged out",
    ]


def test_lenient_profile(lenient_site: Site, emulator: RunningEmulator) -> None:
    archive(emulator, 3)
    run, doc = probe_json(lenient_site, emulator)
    assert run.result.exit_code == 0, run.result.output
    probe = doc["probe"]
    assert probe["object_info"]["route"] == "/object/info"
    assert {p: r["answer"] for p, r in probe["object_info"]["routes"].items()} == {
        "/object/info": "1009",
        "/objects/info": "1009",
    }
    requests = probe["requests"]
    assert (requests["page_base"], requests["order"]) == (1, "oldest-first")
    assert requests["filters"] == {"objectName": "honoured", "collectionName": "honoured"}
    assert requests["complete"] is True
    assert "OK diva request list: honours the objectName and collectionName filters" in lines(
        doc["checks"]
    )


def test_human_output(guide_site: Site, emulator_guide: RunningEmulator) -> None:
    archive(emulator_guide, 3)
    run = Probed(guide_site, emulator_guide)
    run.read_only()
    out = run.result.output
    assert run.result.exit_code == 0, out
    assert "OK   diva object info: GET /object/info works" in out
    assert "INFO diva object info: GET /objects/info: no such route" in out
    assert "pages numbered from 1, oldest first" in out
    assert "INFO diva request list: ignores the objectName and collectionName filters" in out
    assert out.splitlines()[-1] == "all checks OK"  # INFO lines are not problems


def test_pinned_route_missing_fails(guide_site: Site, emulator_guide: RunningEmulator) -> None:
    guide_site.write_config(diva_extra='object_info_path = "/objects/info"')
    run, doc = probe_json(guide_site, emulator_guide)
    assert run.result.exit_code == 1
    fails = [c for c in doc["checks"] if c["level"] == "FAIL"]
    assert [(c["check"], c["message"]) for c in fails] == [
        (
            "diva object info",
            "[diva] object_info_path pins /objects/info, which does not answer here",
        )
    ]
    assert fails[0]["fix"] == 'set [diva] object_info_path = "/object/info", or remove it'
    assert doc["probe"]["object_info"]["route"] is None
    assert doc["probe"]["object_info"]["pinned"] == "/objects/info"


def test_pinned_route_answering(lenient_site: Site, emulator: RunningEmulator) -> None:
    lenient_site.write_config(diva_extra='object_info_path = "/objects/info"')
    run, doc = probe_json(lenient_site, emulator)
    assert run.result.exit_code == 0, run.result.output
    assert doc["probe"]["object_info"]["route"] == "/objects/info"
    assert "OK diva object info: [diva] object_info_path pins /objects/info, which answers" in (
        lines(doc["checks"])
    )


def test_empty_queue_says_unknown(guide_site: Site, emulator_guide: RunningEmulator) -> None:
    run, doc = probe_json(guide_site, emulator_guide)
    assert run.result.exit_code == 0, run.result.output
    requests = doc["probe"]["requests"]
    assert (requests["page_base"], requests["page_base_detected"]) == (1, False)
    assert requests["order"] == "unknown"
    assert requests["size"] == {"1": "unknown", "2": "unknown"}
    assert requests["filters"] == {"objectName": "unknown", "collectionName": "unknown"}
    assert (
        'OK diva request list: GET /requests answers {"requests": [...]}, pages numbered from '
        "1 (assumed: the queue is empty), order unknown (fewer than 2 requests in the queue)"
    ) in lines(doc["checks"])


def test_probe_needs_diva(lenient_site: Site) -> None:
    result = lenient_site.run("--probe", "--no-diva")
    assert result.exit_code == 2
    assert "--probe talks to DIVA" in result.output


def test_help_has_a_probe_example(lenient_site: Site) -> None:
    result = lenient_site.run("--help")
    assert "ingest doctor --probe" in result.output


# -- servers neither profile imitates ---------------------------------------------------------


def spring_404(path: str) -> httpx.Response:
    body = {"timestamp": "2024-05-01T12:00:00.000+00:00", "status": 404}
    return httpx.Response(404, json={**body, "error": "Not Found", "path": path})


class FakeDiva:
    """A DIVA gateway answering the probe's calls in one of the ways a real one might."""

    def __init__(
        self,
        *,
        info_routes: tuple[str, ...] = ("/object/info",),
        info_in_200: bool = False,
        base: int = 1,
        newest_first: bool = False,
        cap: int | None = None,
        requests_route: bool = True,
        versions: bool = True,
        refuse_filters: bool = False,
        queue: int = 3,
    ) -> None:
        self.info_routes = info_routes
        self.info_in_200 = info_in_200
        self.base = base
        self.ids = list(range(101, 101 + queue))
        if newest_first:
            self.ids.reverse()
        self.cap = cap
        self.requests_route = requests_route
        self.versions = versions
        self.refuse_filters = refuse_filters
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append(f"{request.method} {path}")
        if path in ("/dataservice/users/login", "/dataservice/users/logout"):
            return httpx.Response(200, json={"token": "t"})
        route = path.removeprefix("/manager")
        if route in ("/object/info", "/objects/info"):
            if self.info_in_200 and route == "/object/info":
                return httpx.Response(200, json={"statusCode": 1002})  # error inside a 200
            if route in self.info_routes:
                return httpx.Response(404, json={"statusCode": 1009, "statusDescription": "no"})
        if route == "/requests" and self.requests_route:
            if self.refuse_filters and set(request.url.params) - {"page", "size"}:
                return httpx.Response(400, json={"statusCode": 1008, "statusDescription": "?"})
            page, size = int(request.url.params["page"]), int(request.url.params["size"])
            if self.cap is not None:
                size = min(size, self.cap)
            start = (page - self.base) * size
            chunk = self.ids[start : start + size] if start >= 0 else []
            entries = [
                {"id": i, "objectName": f"o{i}", "collectionName": "C", "stateCode": 3}
                for i in chunk
            ]
            return httpx.Response(200, json={"requests": entries})
        if route == "/versions" and self.versions:
            return httpx.Response(200, json={"version": "9.1.2"})
        return spring_404(path)


@pytest.fixture
def fake_probe() -> Iterator[Any]:
    """``fake_probe(FakeDiva(...), pinned=None)``: the probe's report and facts."""
    opened: list[DivaClient] = []

    def run(fake: FakeDiva, pinned: str | None = None) -> tuple[list[str], dict[str, Any]]:
        client = DivaClient(
            "http://diva", "operator", "pw",
            transport=httpx.MockTransport(fake), object_info_path=pinned,
        )  # fmt: skip
        opened.append(client)
        client.login()
        config = DivaConfig(
            url="http://diva", username="operator", data_url="http://diva/dataservice",
            manager_url="http://diva/manager", object_info_path=pinned,
        )  # fmt: skip
        report = doctor_module.Report()
        facts = probe_module.probe(report, client, config)
        assert all(c.startswith("GET ") or "/users/login" in c for c in fake.calls)
        return [f"{c.level} {c.name}: {c.message}" for c in report.checks], facts

    yield run
    for client in opened:
        client.close()


def test_production_like_server(fake_probe: Any) -> None:
    """Object info only at /objects/info, pages from 0, newest first, filters ignored."""
    checks, facts = fake_probe(FakeDiva(info_routes=("/objects/info",), base=0, newest_first=True))
    assert facts["object_info"]["route"] == "/objects/info"
    requests = facts["requests"]
    assert (requests["page_base"], requests["page_base_detected"]) == (0, True)
    assert requests["order"] == "newest-first"
    assert requests["size"] == {"1": "honoured", "2": "honoured"}
    assert requests["pages_advance"] is True
    assert requests["filters"] == {"objectName": "ignored", "collectionName": "ignored"}
    assert requests["complete"] is True
    assert checks == [
        "INFO diva object info: GET /object/info: no such route (HTTP 404 without a DIVA status)",
        "OK diva object info: GET /objects/info works: a made-up object gets DIVA's 1009 "
        "(object does not exist)",
        "WARN diva object info: only /objects/info answers, not the guide's /object/info",
        'WARN diva request list: GET /requests answers {"requests": [...]}, pages numbered '
        "from 0, newest first (the guide's sample numbers pages from 1)",
        "OK diva request list: honours size=1 and size=2, and page 2 follows page 1",
        "INFO diva request list: ignores the objectName and collectionName filters: fine, "
        "the client checks every entry itself",
        "OK diva request list: the client reads it to its end",
        "OK diva versions: 9.1.2",
        "OK diva session: one login for the whole probe, as the guide asks",
    ]


def test_a_server_without_the_routes(fake_probe: Any) -> None:
    """No route answers 1009 (one puts an error in a 200), no request list, no versions."""
    fake = FakeDiva(info_routes=(), info_in_200=True, requests_route=False, versions=False)
    checks, facts = fake_probe(fake)
    assert facts["object_info"]["route"] is None
    assert facts["object_info"]["routes"]["/object/info"]["answer"] == "unexpected"
    assert facts["requests"] == {"route": False}  # a 404 without a DIVA status
    assert facts["versions"] is None
    assert checks[0].startswith(
        "WARN diva object info: GET /object/info answered a made-up object with "
        "DIVA answered object info with DIVA_ERR_INTERNAL (1002)"
    )
    assert checks[1:] == [
        "INFO diva object info: GET /objects/info: no such route (HTTP 404 without a DIVA status)",
        "FAIL diva object info: no object-info route gives DIVA's 1009 for an object that "
        "does not exist",
        "WARN diva request list: no GET /requests route (HTTP 404 without a DIVA status)",
        "WARN diva versions: no GET /versions route, though the guide lists it",
        "OK diva session: one login for the whole probe, as the guide asks",
    ]


def test_a_server_capping_its_pages(fake_probe: Any) -> None:
    """Fewer than asked, though more follow: the client would stop at the first page."""
    checks, facts = fake_probe(FakeDiva(cap=2, queue=5))
    assert facts["requests"]["page_cap"] == 2, checks
    assert "WARN diva request list: serves at most 2 requests a page when asked for 100" in checks


def test_a_server_refusing_the_filters(fake_probe: Any) -> None:
    """The client sends its filters as hints: a DIVA refusing them cannot be walked."""
    checks, facts = fake_probe(FakeDiva(refuse_filters=True))
    assert facts["requests"]["filters"] == {"objectName": "refused", "collectionName": "refused"}
    assert facts["requests"]["complete"] is False
    assert "WARN diva request list: refuses the objectName and collectionName filters" in checks
    assert any(
        c.startswith("WARN diva request list: the client cannot read it: DIVA refused GET ")
        for c in checks
    ), checks
