"""``ingest doctor --probe``: how this DIVA's API compares with the vendor's guide.

GET calls only, on the doctor's one login: nothing is archived, restored, deleted or
cancelled. Each question is asked about a name made up for the run, so DIVA's only right
answer is "no such object" (1009), and asked as the daemon's client asks it, so what the
probe finds is what the daemon will meet: which object-info route answers, how
``GET /requests`` pages (numbered from 0 or 1, its size honoured, its order, its
filters), and DIVA's versions. INFO lines are differences the client copes with on its own.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from ..client import DivaClient, RequestInfo
from ..errors import (
    DivaAuthError,
    DivaError,
    DivaNoRoute,
    DivaProtocolError,
    DivaUnavailable,
    DivaUnconfirmed,
)
from .doctor import Report, brief

if TYPE_CHECKING:
    from ..config import DivaConfig

__all__ = ["probe"]


#: The object-info routes: the guide's, then the one production code was seen calling.
GUIDE_INFO_PATH, SEEN_INFO_PATH = "/object/info", "/objects/info"


#: Errors after which the probe stops: DIVA is gone, or refuses even a fresh token.
_STOP = (DivaUnavailable, DivaAuthError)


def probe(report: Report, client: DivaClient, diva: DivaConfig) -> dict[str, Any]:
    # A name nobody archives, so DIVA's only right answer about it is "no such object".
    tag = secrets.token_hex(4)
    name = collection = f"ingest-doctor-probe-{tag}"
    facts: dict[str, Any] = {"object_name": name, "collection": collection}
    try:
        facts["object_info"] = _probe_object_info(
            report, client, name, collection, diva.object_info_path
        )
        facts["requests"] = _probe_requests(report, client, name, collection)
        facts["versions"] = _probe_versions(report, client)
    except _STOP as exc:
        report.add(
            "diva probe", "FAIL", f"stopped: {exc}", "check that DIVA is up, then probe again"
        )
    facts["logins"] = client.logins
    if client.logins == 1:
        report.add("diva session", "OK", "one login for the whole probe, as the guide asks")
    else:
        report.add(
            "diva session",
            "WARN",
            f"{client.logins} logins: DIVA refused a token it had issued moments before",
            "check DIVA's session timeout for this user ([diva] session_minutes)",
        )
    return facts


def _ask_object_info(
    client: DivaClient, path: str, name: str, collection: str
) -> tuple[Literal["1009", "no route", "unexpected"], str]:
    """How one route answers for an object that does not exist, read as the daemon reads it."""
    saved = client.object_info_path
    # A client with a route set asks that route only, and says DivaNoRoute when it is missing.
    client.object_info_path = path
    try:
        found = client.object_info(name, collection)
    except _STOP:
        raise
    except DivaNoRoute:
        return "no route", "HTTP 404 without a DIVA status"
    except DivaError as exc:
        return "unexpected", brief(str(exc))
    finally:
        client.object_info_path = saved
    if found is None:
        return "1009", "DIVA's 1009 (object does not exist)"
    return "unexpected", f"an object {found.name!r} for a name made up just now"


def _probe_object_info(
    report: Report, client: DivaClient, name: str, collection: str, pinned: str | None
) -> dict[str, Any]:
    check = "diva object info"
    answers = {
        p: _ask_object_info(client, p, name, collection) for p in (GUIDE_INFO_PATH, SEEN_INFO_PATH)
    }
    for path, (answer, detail) in answers.items():
        if answer == "1009":
            report.add(check, "OK", f"GET {path} works: a made-up object gets {detail}")
        elif answer == "no route":
            report.add(check, "INFO", f"GET {path}: no such route ({detail})")
        else:
            report.add(check, "WARN", f"GET {path} answered a made-up object with {detail}")
    working = [p for p, (answer, _) in answers.items() if answer == "1009"]
    route = (pinned if pinned in working else None) if pinned else next(iter(working), None)
    if pinned and pinned not in working:
        others = [p for p in working if p != pinned]
        fix = (
            f'set [diva] object_info_path = "{others[0]}", or remove it'
            if others
            else "ask the DIVA administrator which route serves object info"
        )
        report.add(
            check,
            "FAIL",
            f"[diva] object_info_path pins {pinned}, which does not answer here",
            fix,
        )
    elif not working:
        report.add(
            check,
            "FAIL",
            "no object-info route gives DIVA's 1009 for an object that does not exist",
            "without it the daemon cannot confirm an object is absent: check [diva] "
            "manager_url and the DIVA version",
        )
    elif pinned:
        report.add(check, "OK", f"[diva] object_info_path pins {pinned}, which answers")
    elif working == [SEEN_INFO_PATH]:
        report.add(
            check,
            "WARN",
            f"only {SEEN_INFO_PATH} answers, not the guide's {GUIDE_INFO_PATH}",
            f'pin [diva] object_info_path = "{SEEN_INFO_PATH}" (the client finds it '
            "anyway, after one 404 at each start)",
        )
    return {
        "routes": {p: {"answer": a, "detail": d} for p, (a, d) in answers.items()},
        "route": route,
        "pinned": pinned,
    }


class Page(NamedTuple):
    """One page of ``GET /requests``: the request ids in the order sent."""

    ids: list[int]
    shape: str


def _page(client: DivaClient, page: int, size: int, **filters: str) -> Page:
    """One page of DIVA's request list, asked for exactly as given.

    Read as DIVA sends it (:meth:`DivaClient.get`): the client's own walk hides single
    pages and sizes on purpose, and the probe needs to see them.
    """
    params = [("page", str(page)), ("size", str(size)), *filters.items()]
    data = client.get("/requests", params=params)
    items: Any = data
    shape = "a bare JSON list"
    if isinstance(data, Mapping):
        key = next((k for k in ("requests", "content") if isinstance(data.get(k), list)), None)
        if key is None:
            raise DivaProtocolError(f"a request list without `requests`: {brief(json.dumps(data))}")
        items, shape = data[key], f'{{"{key}": [...]}}'
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise DivaProtocolError(
            f"a request list that is not a list of requests: {brief(json.dumps(data))}"
        )
    return Page([RequestInfo.from_wire(i).request_id for i in items], shape)


def _probe_requests(
    report: Report, client: DivaClient, name: str, collection: str
) -> dict[str, Any]:
    check = "diva request list"
    size = client.page_size
    facts: dict[str, Any] = {"route": None}
    uncertain_fix = (
        "the daemon then cannot look up a request it may have sent: such a drop is retried "
        "with backoff, then FAILED with its files in place, never resubmitted blind"
    )
    try:
        one = _page(client, 1, size)
    except _STOP:
        raise
    except DivaNoRoute:
        report.add(
            check, "WARN", "no GET /requests route (HTTP 404 without a DIVA status)", uncertain_fix
        )
        facts["route"] = False
        return facts
    except DivaError as exc:
        facts["error"] = brief(str(exc))
        report.add(check, "WARN", f"GET /requests answered {facts['error']}", uncertain_fix)
        return facts
    facts.update(route=True, shape=one.shape)
    # The client's test: a server numbering from 1 refuses page 0, sends nothing for it,
    # or sends page 1 again; a server numbering from 0 sends the first page, unlike page 1.
    try:
        zero = _page(client, 0, size).ids
    except _STOP:
        raise
    except DivaError:
        zero = []
    base = 0 if zero and zero != one.ids else 1
    first = zero if base == 0 else one.ids
    detected = bool(zero or one.ids)
    facts.update(page_base=base, page_base_detected=detected, first_page=len(first))
    order = _order(first)
    facts["order"] = order
    numbered = f"numbered from {base}" + ("" if detected else " (assumed: the queue is empty)")
    ordered = {
        "oldest-first": "oldest first",
        "newest-first": "newest first",
        "mixed": "in no id order",
        "unknown": "order unknown (fewer than 2 requests in the queue)",
    }[order]
    summary = f"GET /requests answers {one.shape}, pages {numbered}, {ordered}"
    if base == 0:
        report.add(
            check,
            "WARN",
            summary + " (the guide's sample numbers pages from 1)",
            "nothing to set: the client detects it at each start, from page 0, "
            "which is only conclusive while the queue is not empty",
        )
    else:
        report.add(check, "OK", summary)
    try:
        facts.update(_probe_paging(report, client, base, size, first))
    except _STOP:
        raise
    except DivaError as exc:
        report.add(check, "WARN", f"paging could not be probed: {brief(str(exc))}")
    facts["filters"] = _probe_filters(report, client, base, size, first, name, collection)
    if detected:
        client.page_base = base  # the unfiltered test above is the surer one
    try:
        client.requests(object_name=name, collection=collection)
    except _STOP:
        raise
    except DivaUnconfirmed as exc:
        facts["complete"] = False
        report.add(check, "WARN", f"the client cannot read it to its end: {exc}", uncertain_fix)
    except DivaError as exc:
        facts["complete"] = False
        report.add(check, "WARN", f"the client cannot read it: {brief(str(exc))}", uncertain_fix)
    else:
        facts["complete"] = True
        report.add(check, "OK", "the client reads it to its end")
    return facts


def _order(ids: list[int]) -> Literal["oldest-first", "newest-first", "mixed", "unknown"]:
    if len(ids) < 2:
        return "unknown"
    if all(a < b for a, b in itertools.pairwise(ids)):
        return "oldest-first"
    if all(a > b for a, b in itertools.pairwise(ids)):
        return "newest-first"
    return "mixed"


def _probe_paging(
    report: Report, client: DivaClient, base: int, size: int, first: list[int]
) -> dict[str, Any]:
    """Whether ``size`` is honoured and ``page`` moves on, as the client's walk needs."""
    check = "diva request list"
    sizes = _probe_sizes(client, base, first)
    advance = _pages_advance(client, base, first)
    cap = _page_cap(client, base, size, first)
    if cap is not None:
        report.add(
            check,
            "WARN",
            f"serves at most {cap} requests a page when asked for {size}",
            "the client takes a short page for the last one, so it would read only the "
            "first page: report this DIVA's behaviour to the ingest maintainers",
        )
    if "ignored" in sizes.values() or advance is False:
        bad = "ignores `size`" if "ignored" in sizes.values() else "repeats page 1 as page 2"
        report.add(
            check,
            "WARN",
            f"pages oddly: it {bad}",
            "the client then reads one answer as the whole list, or stops unconfirmed",
        )
    elif advance:
        report.add(check, "OK", "honours size=1 and size=2, and page 2 follows page 1")
    else:
        report.add(
            check, "INFO", f"page size: cannot tell with {len(first)} request(s) in the queue"
        )
    return {"size": sizes, "pages_advance": advance, "page_cap": cap}


def _probe_filters(
    report: Report,
    client: DivaClient,
    base: int,
    size: int,
    first: list[int],
    name: str,
    collection: str,
) -> dict[str, str]:
    check = "diva request list"
    filters = {
        key: _filter(client, base, size, first, key, value)
        for key, value in (("objectName", name), ("collectionName", collection))
    }
    values = set(filters.values())
    refused = [k for k, v in filters.items() if v == "refused"]
    ignored = [k for k, v in filters.items() if v == "ignored"]
    if refused:
        report.add(
            check,
            "WARN",
            f"refuses the {' and '.join(refused)} filter{'s' if len(refused) > 1 else ''}",
            "the client sends them as hints on every walk of the list: report this DIVA's "
            "behaviour to the ingest maintainers",
        )
    elif values == {"honoured"}:
        report.add(check, "OK", "honours the objectName and collectionName filters")
    elif ignored:
        report.add(
            check,
            "INFO",
            f"ignores the {' and '.join(ignored)} filter{'s' if len(ignored) > 1 else ''}: "
            "fine, the client checks every entry itself",
        )
    else:
        report.add(check, "INFO", "filters: cannot tell with an empty queue")
    return filters


def _probe_sizes(client: DivaClient, base: int, first: list[int]) -> dict[str, str]:
    """For ``size`` 1 and 2: "honoured", "ignored" (more came), or "unknown" (too few to tell)."""
    sizes: dict[str, str] = {}
    for size in (1, 2):
        got = _page(client, base, size).ids
        if len(got) > size:
            sizes[str(size)] = "ignored"
        elif len(first) > size:
            sizes[str(size)] = "honoured" if got == first[:size] else "ignored"
        else:
            sizes[str(size)] = "unknown"
    return sizes


def _pages_advance(client: DivaClient, base: int, first: list[int]) -> bool | None:
    """Whether the second page of one is the second request (None: too few to tell)."""
    if len(first) < 2:
        return None
    return _page(client, base + 1, 1).ids == first[1:2]


def _page_cap(client: DivaClient, base: int, size: int, first: list[int]) -> int | None:
    """The page size the server keeps to when it sends fewer than asked though more follow:
    the client would stop at that short page. None when it sends what it is asked."""
    if not first or len(first) >= size:
        return None
    after = _page(client, base + 1, size).ids
    return len(first) if set(after) - set(first) else None


def _filter(
    client: DivaClient, base: int, size: int, first: list[int], key: str, value: str
) -> str:
    """Whether the list honours a filter: asked for a made-up value, any entry means not."""
    try:
        got = _page(client, base, size, **{key: value}).ids
    except _STOP:
        raise
    except DivaError:
        return "refused"
    if got:
        return "ignored"
    return "honoured" if first else "unknown"


def _probe_versions(report: Report, client: DivaClient) -> Any:
    try:
        versions = client.versions()
    except _STOP:
        raise
    except DivaNoRoute:
        report.add(
            "diva versions",
            "WARN",
            "no GET /versions route, though the guide lists it",
            "none needed by the daemon; check [diva] manager_url",
        )
        return None
    except DivaError as exc:
        report.add("diva versions", "WARN", f"GET /versions answered {brief(str(exc))}")
        return None
    report.add("diva versions", "OK", _describe_versions(versions))
    return versions


def _describe_versions(versions: Mapping[str, Any]) -> str:
    """``9.0.0 (Manager 9.0.0, ...)`` when the answer reads so, else a snippet of it."""
    version = versions.get("version")
    parts = versions.get("components")
    named = []
    if isinstance(parts, list):
        named = [
            f"{p['name']} {p.get('version', '?')}"
            for p in parts
            if isinstance(p, Mapping) and isinstance(p.get("name"), str)
        ]
    if isinstance(version, str) and version:
        return version + (f" ({', '.join(named)})" if named else "")
    return brief(json.dumps(versions))
