"""DIVA's answers as the client reads them: typed values, errors, tolerant field readers.

:class:`RequestInfo` and :class:`ObjectInfo` read what DIVA sends the tolerant way
(unknown fields ignored, the field names several DIVA versions use, ids as numbers or
strings). :func:`error_for` turns an unsuccessful answer into the :mod:`ingest.errors`
exception its DIVA status (or, without one, its HTTP status) calls for, and
:func:`read_json` reads a successful one, refusing an HTML page or an error status
inside an HTTP 200. The rest are the small readers these share with the client.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from .errors import (
    DivaAccessDenied,
    DivaAuthError,
    DivaBusy,
    DivaError,
    DivaNoRoute,
    DivaNotFound,
    DivaObjectExists,
    DivaProtocolError,
    DivaRefused,
    DivaServerError,
    DivaStatusTransient,
)
from .protocol import CodeKind, RequestState, code_kind, status_name

__all__ = [
    "Component",
    "ObjectInfo",
    "RequestInfo",
    "as_list",
    "as_mapping",
    "body_status",
    "error_for",
    "read_json",
    "request_id_of",
    "response_status",
    "snippet",
]


@dataclass(frozen=True)
class RequestInfo:
    """One DIVA request as ``GET /requests/{id}`` describes it."""

    request_id: int
    state: RequestState
    progress: int = 0
    object_name: str | None = None
    collection: str | None = None
    type: str | None = None
    status_code: int | None = None
    status_name: str | None = None
    status_description: str | None = None
    abort_reason: str | None = None
    abort_description: str | None = None
    submitted_at: datetime | None = None
    completed_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> RequestInfo:
        """Read a request the tolerant way; unknown fields are ignored.

        >>> RequestInfo.from_wire({"id": 7, "stateName": "COMPLETED", "progress": 100}).state
        <RequestState.COMPLETED: 3>
        """
        rid = request_id_of(data)
        if rid is None:
            raise DivaProtocolError(f"request without an id: {snippet(json.dumps(data))}")
        abort = data.get("abortReason")
        abort_name = abort_desc = None
        if isinstance(abort, Mapping):
            name = abort.get("name")
            if isinstance(name, str) and name and name != "DIVA_AR_NONE":
                abort_name = name
                abort_desc = _str(abort.get("description"))
        elif isinstance(abort, str) and abort and abort != "DIVA_AR_NONE":
            abort_name = abort
        code = _int(data.get("statusCode"))
        return cls(
            request_id=rid,
            state=RequestState.parse(dict(data)),
            progress=_int(data.get("progress")) or 0,
            object_name=_str(data.get("objectName")),
            collection=_str(data.get("collectionName")),
            type=_str(data.get("type")) or _str(data.get("typeDescription")),
            status_code=code,
            status_name=_str(data.get("statusName")) or (status_name(code) if code else None),
            status_description=_str(data.get("statusDescription")),
            abort_reason=abort_name,
            abort_description=abort_desc,
            submitted_at=_epoch(data.get("submissionDate")),
            completed_at=_epoch(data.get("completionDate")),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Component:
    """One file of an archived object."""

    name: str
    size: int | None = None
    checksum: str | None = None
    #: the checksum's algorithm as DIVA names it (``MD5``...); None when DIVA does not say
    checksum_type: str | None = None


@dataclass(frozen=True)
class ObjectInfo:
    """An archived object as ``GET /objects/info`` describes it."""

    name: str
    collection: str
    components: tuple[Component, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> ObjectInfo:
        """Read an object; components may be called ``components`` or ``files``.

        An object whose files cannot be read is a :class:`DivaProtocolError`: without them
        nobody can tell whether it is ours.
        """
        for wrapper in ("object", "objectInfo"):
            inner = data.get(wrapper)
            if isinstance(inner, Mapping) and "objectName" not in data:
                data = inner
        name = _str(data.get("objectName")) or _str(data.get("name"))
        collection = _str(data.get("collectionName")) or _str(data.get("collection"))
        if not name or collection is None:
            raise DivaProtocolError(f"object without a name: {snippet(json.dumps(data))}")
        parts = data.get("components", data.get("files"))
        if not isinstance(parts, list):
            raise DivaProtocolError(
                f"object {name!r} without a readable list of files: {snippet(json.dumps(data))}"
            )
        components = []
        for part in parts:
            if isinstance(part, str):
                components.append(Component(part))
            elif isinstance(part, Mapping):
                file = _str(part.get("name")) or _str(part.get("fileName"))
                if not file:
                    raise DivaProtocolError(f"object {name!r} has a file without a name")
                components.append(
                    Component(
                        name=file,
                        size=_int(part.get("size")),
                        checksum=_str(part.get("checksum")) or _str(part.get("md5")),
                        checksum_type=_str(part.get("checksumType"))
                        or ("MD5" if part.get("md5") and not part.get("checksum") else None),
                    )
                )
            else:
                raise DivaProtocolError(f"object {name!r} has a file entry that is not a name")
        return cls(name, collection, tuple(components), dict(data))


# -- reading answers -----------------------------------------------------------------


def error_for(response: httpx.Response, *, scrub: Any = None) -> DivaError:
    """The :mod:`ingest.errors` exception for an unsuccessful DIVA answer.

    DIVA's ``statusCode`` decides when there is one, by its kind in
    :data:`~ingest.protocol.CODE_KINDS`; the HTTP status otherwise. Only a DIVA status
    ever says "not found": a bare 404 is a missing route.
    """
    url = str(response.request.url)
    status = response.status_code
    where = f"{response.request.method} {response.request.url.path}"
    if 300 <= status < 400:
        target = response.headers.get("location", "?")
        return DivaProtocolError(
            f"DIVA answered {where} with a redirect to {target}: check diva.url",
            http_status=status,
            url=url,
        )
    body: Any = None
    try:
        body = json.loads(response.content) if response.content else None
    except ValueError:
        body = None
    code = body_status(body)
    desc = _str(body.get("statusDescription")) if isinstance(body, Mapping) else None
    name = (_str(body.get("statusName")) if isinstance(body, Mapping) else None) or (
        status_name(code) if code else None
    )
    detail = f"{name} ({code})" if code else f"HTTP {status}"
    if desc:
        detail += f": {desc}"
    if scrub is not None:
        detail = scrub(detail)
    ctx: dict[str, Any] = {
        "status_code": code,
        "status_name": name,
        "http_status": status,
        "url": url,
    }
    message = f"DIVA refused {where}: {detail}"
    if code is not None:
        kind = code_kind(code)
        if code == 1032:
            return DivaBusy(f"DIVA is busy ({where}): {detail}", **ctx)
        if code == 1035:
            return DivaAccessDenied(message + " (the DIVA user's role does not allow it)", **ctx)
        if status in (401, 403):
            return DivaAuthError(
                f"DIVA refused the token for {where} even after a new login: {detail}", **ctx
            )
        if kind is CodeKind.CONFLICT:
            return DivaObjectExists(message, **ctx)
        if kind is CodeKind.NOT_FOUND:
            return DivaNotFound(message, **ctx)
        if kind is CodeKind.PERMANENT:
            return DivaRefused(message, **ctx)
        if kind is CodeKind.TRANSIENT:
            kind_error = DivaServerError if status >= 500 else DivaStatusTransient
            return kind_error(f"DIVA failed on {where}: {detail}", **ctx)
        # A success code on an unsuccessful HTTP status: the two disagree; read on.
    if status in (401, 403):
        return DivaAuthError(f"DIVA refused the token for {where} even after a new login", **ctx)
    if status == 404:
        return DivaNoRoute(
            f"DIVA has no route for {where} (HTTP 404 without a DIVA status): "
            "check diva.url and the DIVA version",
            http_status=status,
            url=url,
        )
    if status >= 500:
        return DivaServerError(f"DIVA failed on {where}: {detail}", **ctx)
    text = response.text if scrub is None else scrub(response.text)
    return DivaProtocolError(
        f"DIVA answered {where} with HTTP {status} and no DIVA status: {snippet(text)}",
        http_status=status,
        url=url,
    )


def read_json(response: httpx.Response, *, verdict: bool = True) -> Any:
    where = f"{response.request.method} {response.request.url.path}"
    ctype = response.headers.get("content-type", "")
    if not response.content:
        raise DivaProtocolError(
            f"DIVA answered {where} with an empty body", http_status=response.status_code
        )
    try:
        data = json.loads(response.content)
    except ValueError:
        kind = (
            "an HTML page"
            if "html" in ctype or response.text.lstrip().startswith("<")
            else ("a body that is not JSON")
        )
        raise DivaProtocolError(
            f"DIVA answered {where} with {kind} (HTTP {response.status_code}, "
            f"{ctype or 'no content type'}): is diva.url the DIVA gateway?",
            http_status=response.status_code,
            url=str(response.request.url),
        ) from None
    if verdict and isinstance(data, Mapping):
        code = _int(data.get("statusCode"))
        # Some DIVA versions answer HTTP 200 with an error status inside.
        if code is not None and code not in (1000, 1019):
            raise error_for(response)
    return data


def body_status(body: Any) -> int | None:
    return _int(body.get("statusCode")) if isinstance(body, Mapping) else None


def response_status(response: httpx.Response) -> int | None:
    """The DIVA ``statusCode`` of an answer whose body has been read, if it has one."""
    try:
        return body_status(json.loads(response.content)) if response.content else None
    except ValueError:
        return None


def snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def request_id_of(data: Mapping[str, Any]) -> int | None:
    for key in ("requestId", "id", "requestID"):
        value = _int(data.get(key))
        if value is not None:
            return value
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _epoch(value: Any) -> datetime | None:
    seconds = _int(value)
    if not seconds:
        return None
    if seconds > 10**11:  # milliseconds, as some gateways send
        seconds //= 1000
    return datetime.fromtimestamp(seconds, UTC)


def as_mapping(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise DivaProtocolError(f"expected a JSON object from DIVA, got {type(data).__name__}")
    return data


def as_list(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise DivaProtocolError(f"expected a JSON list from DIVA, got {type(data).__name__}")
    return data
