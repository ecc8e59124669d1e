"""The DIVA Core REST client: one login per process, typed calls, a tolerant reader.

::

    with DivaClient("https://diva:8765", "ingest", password) as diva:
        request_id = diva.archive(body)
        info = diva.request(request_id)        # RequestInfo(state=RequestState.RUNNING, ...)

Login is an :class:`httpx.Auth` flow: the token is fetched on first use and reused; a 401,
or a 403 that is not a refusal for the role, makes the flow log in again once and replay
the call, as the guide asks (never a login per call). Failures become the
:mod:`ingest.errors` tree, decided by :data:`ingest.protocol.CODE_KINDS`: transient ones
(transport, timeouts, 5xx, 1002, 1032...) are for the caller to retry with backoff; the
client itself never retries anything but that single re-login.

Fail-safe reading: only DIVA's own word (a 1009 or 1011 status, or a request list read
to its end) ever means "DIVA does not have it". A bare 404 is a missing route
(:class:`DivaNoRoute`), a list that does not end is :class:`DivaUnconfirmed`.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import ssl
import threading
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from . import defaults
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
    DivaUnavailable,
    DivaUnconfirmed,
)
from .protocol import CodeKind, RequestState, code_kind, status_name

__all__ = [
    "Component",
    "DivaAuth",
    "DivaClient",
    "ObjectInfo",
    "RequestInfo",
    "error_for",
]

#: Where DIVA serves object info: the guide's name first, then the one production code uses.
OBJECT_INFO_PATHS = ("/object/info", "/objects/info")

log = logging.getLogger("ingest.client")

AuthScheme = Literal["raw", "bearer"]

#: Answers larger than this are refused rather than read into memory.
MAX_BODY_BYTES = 64 * 1024 * 1024


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
        rid = _request_id(data)
        if rid is None:
            raise DivaProtocolError(f"request without an id: {_snippet(json.dumps(data))}")
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
            raise DivaProtocolError(f"object without a name: {_snippet(json.dumps(data))}")
        parts = data.get("components", data.get("files"))
        if not isinstance(parts, list):
            raise DivaProtocolError(
                f"object {name!r} without a readable list of files: {_snippet(json.dumps(data))}"
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
                    )
                )
            else:
                raise DivaProtocolError(f"object {name!r} has a file entry that is not a name")
        return cls(name, collection, tuple(components), dict(data))


class DivaAuth(httpx.Auth):
    """DIVA login as an httpx auth flow: one token, reused while it is valid.

    A 401, or a 403 that is not DIVA's 1035 refusal for the role, means the token was
    refused (expired, revoked, DIVA restarted): log in once more and replay the call. A 403
    with 1035 on a token that has not expired is the role's refusal, and a new login would
    only earn the same answer, so the call fails with it (the guide: one login, not one
    per call). Thread-safe: concurrent calls share the token, and only one of them logs in
    again when it expires.
    """

    def __init__(
        self,
        login_url: str,
        username: str,
        password: str,
        scheme: AuthScheme,
        *,
        session_seconds: float = defaults.DIVA_SESSION_MINUTES * 60,
    ) -> None:
        self._login_url = login_url
        self._username = username
        self._password = password
        self._scheme = scheme
        self._session_seconds = session_seconds
        self._token: str | None = None
        self._token_at = 0.0
        self._lock = threading.Lock()
        self.logins = 0

    def __repr__(self) -> str:
        return f"DivaAuth(user={self._username!r}, scheme={self._scheme!r})"

    @property
    def token(self) -> str | None:
        return self._token

    def forget(self) -> None:
        self._token = None

    def use(self, token: str) -> None:
        """Take a token from a login made outside the flow (:meth:`DivaClient.login`)."""
        self._token = token
        self._token_at = time.monotonic()

    def expired(self, token: str) -> bool:
        """Whether ``token`` has outlived its session: its JWT ``exp`` has passed, or it is
        older than the session timeout. Unreadable tokens are judged by age alone."""
        if token != self._token:
            return True  # replaced since: whatever it was, it is not the one in use
        if time.monotonic() - self._token_at >= self._session_seconds:
            return True
        exp = _jwt_exp(token)
        return exp is not None and exp <= time.time()

    def _header(self, token: str) -> str:
        return f"Bearer {token}" if self._scheme == "bearer" else token

    def login_request(self) -> httpx.Request:
        return httpx.Request(
            "POST",
            self._login_url,
            json={"username": self._username, "password": self._password},
            headers={"Accept": "application/json"},
        )

    def accept_login(self, response: httpx.Response) -> str:
        """Take the token out of a login answer, or raise the fitting error."""
        if response.status_code in (401, 403):
            raise DivaAuthError(
                f"DIVA refused the login of user {self._username!r} "
                f"(HTTP {response.status_code}): check the username and password",
                http_status=response.status_code,
                url=str(response.request.url),
            )
        if not response.is_success:
            raise error_for(response)
        data = _read_json(response)
        token = data.get("token") if isinstance(data, Mapping) else None
        if not isinstance(token, str) or not token:
            raise DivaProtocolError(
                "DIVA's login answer has no token", url=str(response.request.url)
            )
        self.logins += 1
        log.debug("logged in to DIVA as %s", self._username)
        return token

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        with self._lock:
            if self._token is None:
                response = yield self.login_request()
                response.read()
                self.use(self.accept_login(response))
            used = self._token
        assert used is not None
        request.headers["Authorization"] = self._header(used)
        response = yield request
        if response.status_code not in (401, 403):
            return
        response.read()
        with self._lock:
            role_refusal = response.status_code == 403 and _status_of(response) == 1035
            if role_refusal and not self.expired(used):
                return  # the role's refusal: error_for makes it DivaAccessDenied
            # Log in again if ours was the token refused, or if another thread's new login
            # failed and left none; else another thread already has a fresh one.
            if self._token is None or self._token == used:
                self._token = None
                login = yield self.login_request()
                login.read()
                self.use(self.accept_login(login))
            used = self._token
        assert used is not None
        request.headers["Authorization"] = self._header(used)
        yield request


def _ssl_context(verify: bool | str) -> ssl.SSLContext | bool:
    if verify is False:
        log.warning("TLS certificate verification of DIVA is OFF: use it only for testing")
        return False
    if verify is True:
        return True
    return ssl.create_default_context(cafile=verify)


class DivaClient:
    """A DIVA Core REST client.

    ``url`` is the gateway (``https://host:8765``); the data service and manager bases
    are derived from it (``/dataservice``, ``/manager``) unless given. ``verify`` is
    ``True``, ``False`` (logged as a warning) or a CA bundle path.

    >>> with DivaClient("http://127.0.0.1:8765", "admin", "admin") as diva:  # doctest: +SKIP
    ...     diva.versions()
    """

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        *,
        data_url: str | None = None,
        manager_url: str | None = None,
        auth_scheme: AuthScheme = "raw",
        verify: bool | str = True,
        timeout: float = defaults.DIVA_TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
        object_info_path: str | None = None,
        session_minutes: float = defaults.DIVA_SESSION_MINUTES,
        page_size: int = defaults.DIVA_LIST_PAGE_SIZE,
        max_pages: int = defaults.DIVA_LIST_MAX_PAGES,
    ) -> None:
        base = url.rstrip("/")
        self.data_url = (data_url or f"{base}/dataservice").rstrip("/")
        self.manager_url = (manager_url or f"{base}/manager").rstrip("/")
        self._auth = DivaAuth(
            f"{self.data_url}/users/login", username, password, auth_scheme,
            session_seconds=session_minutes * 60,
        )  # fmt: skip
        #: the object-info route: pinned by config, else learned from the first answer
        self.object_info_path: str | None = object_info_path
        self._object_info_pinned = object_info_path is not None
        self.page_size = page_size
        self.max_pages = max_pages
        #: how the server numbers request-list pages (1 as the guide's sample; 0 detected)
        self.page_base: int | None = None
        self._http = httpx.Client(
            auth=self._auth,
            verify=_ssl_context(verify),
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            headers={"Accept": "application/json"},
        )
        self._secrets = [password]

    def __repr__(self) -> str:
        return f"DivaClient(manager={self.manager_url!r}, auth={self._auth!r})"

    def __enter__(self) -> DivaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def logins(self) -> int:
        """How many times this client has logged in (the guide: once per process)."""
        return self._auth.logins

    # -- session ---------------------------------------------------------------------

    def login(self) -> None:
        """Log in now (calls log in on first use anyway): checks the credentials early."""
        response = self._send(self._auth.login_request(), auth=False, check=False)
        self._auth.use(self._auth.accept_login(response))

    def logout(self) -> None:
        """Delete the token on the server; a no-op when not logged in."""
        if self._auth.token is None:
            return
        try:
            self._call("POST", f"{self.data_url}/users/logout")
        finally:
            self._auth.forget()

    def close(self) -> None:
        """Log out (best effort) and close the connection pool."""
        try:
            self.logout()
        except DivaError as exc:
            log.debug("logout on close failed: %s", exc)
        finally:
            self._http.close()

    # -- requests --------------------------------------------------------------------

    def archive(self, body: Mapping[str, Any]) -> int:
        """Submit an archive request; returns DIVA's request id as soon as it is accepted."""
        return self._submit("archive", body)

    def restore(self, body: Mapping[str, Any]) -> int:
        """Submit a restore request (``objectName``, ``collectionName``, ``destinationServer``)."""
        return self._submit("restore", body)

    def partial_restore(self, body: Mapping[str, Any]) -> int:
        """Submit a partial restore request (``format`` and ``offsets`` as in the guide)."""
        return self._submit("partialRestore", body)

    def delete(self, object_name: str, collection: str, *, media: str | None = None) -> int:
        """Submit a request deleting every instance of an object (DIVA admin role)."""
        body: dict[str, Any] = {"objectName": object_name, "collectionName": collection}
        if media:
            body["media"] = media
        return self._submit("delete", body)

    def cancel(self, request_id: int) -> None:
        """Cancel a pending or running request (1012 when it cannot be)."""
        self._call("POST", f"{self.manager_url}/requests/cancel", json={"requestId": request_id})

    def request(self, request_id: int) -> RequestInfo:
        """The state of one request."""
        data = self._call("GET", f"{self.manager_url}/requests/{int(request_id)}")
        return RequestInfo.from_wire(_mapping(data))

    def requests(
        self,
        *,
        object_name: str | None = None,
        collection: str | None = None,
        since: datetime | None = None,
    ) -> list[RequestInfo]:
        """The requests in DIVA's queue for an object, read to the end of the list.

        Pages through ``GET /requests?page=N&size=M`` until a short page. The filters go
        to the server as hints only (the guide documents none); every entry is checked
        here. With ``since``, a newest-first list stops at requests submitted before it
        (less a margin for clock skew). Raises :class:`DivaUnconfirmed` when the list does
        not end within ``max_pages``, or has entries that do not name their object: then
        nobody can say a request is *not* there.

        >>> diva.requests(object_name="clip.mxf", collection="news")  # doctest: +SKIP
        [RequestInfo(request_id=41, state=<RequestState.COMPLETED: 3>, ...)]
        """
        hints: list[tuple[str, str]] = []
        if object_name is not None:
            hints.append(("objectName", object_name))
        if collection is not None:
            hints.append(("collectionName", collection))
        floor = None
        if since is not None:
            floor = since.timestamp() - defaults.DIVA_LIST_MARGIN_SECONDS
        base = self._page_base(hints)
        found: list[RequestInfo] = []
        unnamed = 0
        seen: set[int] = set()
        for page in range(base, base + self.max_pages):
            items = self._request_page(page, hints)
            ids = [r.request_id for r in items]
            if items and set(ids) <= seen:
                # The server ignores `page`: what it sent is all it will ever send.
                if len(items) > self.page_size:
                    break
                if page == base + 1:
                    # Perhaps page numbering was misread (a request arriving between the two
                    # reads of the detection): find it out again on the next walk.
                    self.page_base = None
                raise DivaUnconfirmed(
                    f"DIVA's request list repeats page {page - 1} as page {page}: "
                    "it cannot be read to its end"
                )
            seen.update(ids)
            for r in items:
                if r.object_name is None:
                    unnamed += 1
                elif object_name in (None, r.object_name) and (
                    collection is None or r.collection in (None, collection)
                ):
                    found.append(r)
            if len(items) < self.page_size or len(items) > self.page_size:
                break  # a short page is the last; a long one means `size` was ignored
            if floor is not None and _newest_first(items) and _all_before(items, floor):
                break
        else:
            raise DivaUnconfirmed(
                f"DIVA's request list did not end within {self.max_pages} pages of "
                f"{self.page_size}: cannot confirm whether a request is there"
            )
        if unnamed and not found:
            raise DivaUnconfirmed(
                f"{unnamed} request(s) in DIVA's list do not say which object they are for"
            )
        return found

    def _request_page(self, page: int, hints: list[tuple[str, str]]) -> list[RequestInfo]:
        params = [("page", str(page)), ("size", str(self.page_size)), *hints]
        data = self._call("GET", f"{self.manager_url}/requests", params=params)
        if isinstance(data, Mapping):
            items = data.get("requests", data.get("content"))
            if items is None:
                raise DivaProtocolError(
                    f"DIVA's request list has no `requests`: {_snippet(json.dumps(data))}"
                )
        else:
            items = data
        return [RequestInfo.from_wire(_mapping(r)) for r in _list(items)]

    def _page_base(self, hints: list[tuple[str, str]]) -> int:
        """1 when pages are numbered from 1 (the guide's sample), 0 when from 0; found out
        on a walk by asking for page 0: a 1-based server refuses it or answers page 1
        again, a 0-based one answers other requests. An empty page 0 decides nothing (a
        filtered walk with no match): it is asked again on the next walk."""
        if self.page_base is not None:
            return self.page_base
        try:
            zero = self._request_page(0, hints)
        except (DivaRefused, DivaProtocolError) as exc:
            if isinstance(exc, DivaNoRoute):
                raise
            self.page_base = 1
            return 1
        if not zero:
            return 1
        one = self._request_page(1, hints)
        self.page_base = 0 if [r.request_id for r in zero] != [r.request_id for r in one] else 1
        log.debug("DIVA's request list pages from %d", self.page_base)
        return self.page_base

    # -- objects and resources -------------------------------------------------------

    def object_info(self, object_name: str, collection: str) -> ObjectInfo | None:
        """The archived object, or None when DIVA says it has none (1009).

        Asks the guide's ``GET /object/info``; only when that route is missing (a 404
        without a DIVA status) does it try ``/objects/info``, and it remembers the route
        that answered. A missing route is never read as a missing object.
        """
        params = {"objectName": object_name, "collectionName": collection}
        paths = (self.object_info_path,) if self.object_info_path else OBJECT_INFO_PATHS
        for i, path in enumerate(paths):
            try:
                data = self._call("GET", f"{self.manager_url}{path}", params=params)
            except DivaNoRoute:
                if self._object_info_pinned or i == len(paths) - 1:
                    raise
                log.info("DIVA has no %s route; trying %s", path, paths[i + 1])
                continue
            except DivaNotFound as exc:
                if exc.status_code != 1009:
                    raise DivaUnconfirmed(
                        f"DIVA answered object info with {exc.status_name} ({exc.status_code})"
                    ) from exc
                self.object_info_path = path
                return None
            self.object_info_path = path
            code = _status_code(data)
            if code == 1009:
                return None  # DIVA's "no such object", in a 200 as some versions answer
            if code is not None and code_kind(code) is not CodeKind.SUCCESS:
                raise DivaUnconfirmed(
                    f"DIVA answered object info with {status_name(code)} ({code})",
                    status_code=code,
                )
            return ObjectInfo.from_wire(_mapping(data))
        raise AssertionError("unreachable")  # pragma: no cover

    def objects(
        self, *, since: datetime | None = None, collection: str | None = None
    ) -> list[ObjectInfo]:
        """Objects archived (or changed) since a date, for keeping in sync with DIVA."""
        params: dict[str, str] = {}
        if since is not None:
            params["startDateTime"] = since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        if collection is not None:
            params["collectionName"] = collection
        data = self._call("GET", f"{self.manager_url}/objects/list", params=params)
        items = data.get("objects", []) if isinstance(data, Mapping) else data
        return [ObjectInfo.from_wire(o) for o in _list(items)]

    def servers(self) -> list[dict[str, Any]]:
        """Source and destination servers (``GET /servers``)."""
        return self._resource_list("servers")

    def arrays(self) -> list[dict[str, Any]]:
        """Disk arrays (``GET /arrays``)."""
        return self._resource_list("arrays")

    def groups(self) -> list[dict[str, Any]]:
        """Tape groups (``GET /groups``)."""
        return self._resource_list("groups")

    def versions(self) -> dict[str, Any]:
        """DIVA's component versions (``GET /versions``)."""
        data = self._call("GET", f"{self.manager_url}/versions")
        return dict(data) if isinstance(data, Mapping) else {"versions": data}

    # -- plumbing --------------------------------------------------------------------

    def _resource_list(self, name: str) -> list[dict[str, Any]]:
        data = self._call("GET", f"{self.manager_url}/{name}")
        items = data.get(name, data.get("items", [])) if isinstance(data, Mapping) else data
        return [dict(i) for i in _list(items) if isinstance(i, Mapping)]

    def _submit(self, kind: str, body: Mapping[str, Any]) -> int:
        data = _mapping(self._call("POST", f"{self.manager_url}/requests/{kind}", json=body))
        rid = _request_id(data)
        if rid is None:
            raise DivaProtocolError(
                f"DIVA accepted the {kind} request but gave no request id: "
                f"{self._scrub(_snippet(json.dumps(data)))}"
            )
        return rid

    def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        request = self._http.build_request(method, url, **kwargs)
        response = self._send(request, auth=True)
        # A POST's statusCode is the call's verdict; a GET's may describe the thing read
        # (an aborted request reports its own failure code with HTTP 200).
        return _read_json(response, verdict=method == "POST")

    def _send(self, request: httpx.Request, *, auth: bool, check: bool = True) -> httpx.Response:
        where = f"{request.method} {request.url.path}"
        try:
            response = self._http.send(request, auth=self._auth if auth else None, stream=True)
        except httpx.TransportError as exc:
            raise self._unavailable(
                exc, request, f"DIVA did not answer {where} in time",
                f"cannot reach DIVA at {request.url.host}:{request.url.port}",
            ) from exc  # fmt: skip
        try:
            _read_capped(response)
        except httpx.TransportError as exc:
            # The answer started, then stalled or was cut off (a proxy or DIVA restarting):
            # the call may well have been carried out.
            raise self._unavailable(
                exc, request, f"DIVA's answer to {where} stalled",
                f"DIVA's answer to {where} was cut off",
            ) from exc  # fmt: skip
        finally:
            response.close()
        if response.is_success or not check:
            return response
        raise error_for(response, scrub=self._scrub)

    def _unavailable(
        self, exc: httpx.TransportError, request: httpx.Request, timed_out: str, failed: str
    ) -> DivaUnavailable:
        """A transport failure as :class:`DivaUnavailable`, its reason scrubbed of secrets."""
        if isinstance(exc, httpx.TimeoutException):
            return DivaUnavailable(timed_out, url=str(request.url))
        reason = self._scrub(_transport_reason(exc))
        return DivaUnavailable(f"{failed}: {reason}", url=str(request.url))

    def _scrub(self, text: str) -> str:
        for secret in (*self._secrets, self._auth.token):
            if secret:
                text = text.replace(secret, "***")
        return text


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
    code = _status_code(body)
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
        f"DIVA answered {where} with HTTP {status} and no DIVA status: {_snippet(text)}",
        http_status=status,
        url=url,
    )


def _status_code(body: Any) -> int | None:
    return _int(body.get("statusCode")) if isinstance(body, Mapping) else None


def _status_of(response: httpx.Response) -> int | None:
    """The DIVA ``statusCode`` of an answer whose body has been read, if it has one."""
    try:
        return _status_code(json.loads(response.content)) if response.content else None
    except ValueError:
        return None


def _jwt_exp(token: str) -> float | None:
    """A JWT's ``exp`` claim, read without checking the signature (only DIVA can); None
    when the token is not a JWT or has no expiry."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    exp = payload.get("exp") if isinstance(payload, Mapping) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _newest_first(items: list[RequestInfo]) -> bool:
    ids = [r.request_id for r in items]
    return len(ids) > 1 and all(a > b for a, b in itertools.pairwise(ids))


def _all_before(items: list[RequestInfo], floor: float) -> bool:
    dates = [r.submitted_at for r in items]
    return all(d is not None and d.timestamp() < floor for d in dates)


def _read_capped(response: httpx.Response) -> None:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise DivaProtocolError(
            f"DIVA's answer is {int(declared)} bytes, more than the {MAX_BODY_BYTES} accepted",
            url=str(response.request.url),
        )
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise DivaProtocolError(
                f"DIVA's answer is more than the {MAX_BODY_BYTES} bytes accepted",
                url=str(response.request.url),
            )
        chunks.append(chunk)
    response._content = b"".join(chunks)


def _read_json(response: httpx.Response, *, verdict: bool = True) -> Any:
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


def _transport_reason(exc: httpx.TransportError) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"TLS certificate not trusted ({cause.verify_message}): "
                "set diva.verify to the CA bundle that signed DIVA's certificate"
            )
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _request_id(data: Mapping[str, Any]) -> int | None:
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


def _mapping(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise DivaProtocolError(f"expected a JSON object from DIVA, got {type(data).__name__}")
    return data


def _list(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise DivaProtocolError(f"expected a JSON list from DIVA, got {type(data).__name__}")
    return data
