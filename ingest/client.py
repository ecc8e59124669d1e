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

The login flow is :mod:`ingest.auth`; the reading of answers (typed values, errors) is
:mod:`ingest.wire`; both are re-exported here.

Fail-safe reading: only DIVA's own word (a 1009 or 1011 status, or a request list read
to its end) ever means "DIVA does not have it". A bare 404 is a missing route
(:class:`DivaNoRoute`), a list that does not end is :class:`DivaUnconfirmed`.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import ssl
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from . import defaults
from .auth import AuthScheme, DivaAuth
from .errors import (
    DivaError,
    DivaNoRoute,
    DivaNotFound,
    DivaProtocolError,
    DivaRefused,
    DivaUnavailable,
    DivaUnconfirmed,
)
from .protocol import CodeKind, code_kind, status_name
from .wire import (
    Component,
    ObjectInfo,
    RequestInfo,
    as_list,
    as_mapping,
    body_status,
    error_for,
    read_json,
    request_id_of,
    snippet,
)

__all__ = [
    "AuthScheme",
    "Component",
    "DivaAuth",
    "DivaClient",
    "DivaSettings",
    "ObjectInfo",
    "RequestInfo",
    "error_for",
]

#: Where DIVA serves object info: the guide's name first, then the one production code uses.
OBJECT_INFO_PATHS = ("/object/info", "/objects/info")

log = logging.getLogger("ingest.client")

#: Answers larger than this are refused rather than read into memory.
MAX_BODY_BYTES = 64 * 1024 * 1024

#: Query parameters as a mapping, or as pairs (a key may repeat).
QueryParams = Mapping[str, str] | Sequence[tuple[str, str]]


class DivaSettings(Protocol):
    """What :meth:`DivaClient.from_config` reads: ``[diva]``, as
    :class:`ingest.config.DivaConfig` holds it (named by shape, so the client imports
    nothing of the config)."""

    @property
    def url(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def data_url(self) -> str: ...
    @property
    def manager_url(self) -> str: ...
    @property
    def auth_scheme(self) -> AuthScheme: ...
    @property
    def verify(self) -> bool | str | os.PathLike[str]: ...
    @property
    def timeout_seconds(self) -> float: ...
    @property
    def object_info_path(self) -> str | None: ...
    @property
    def session_minutes(self) -> float: ...
    def password(self) -> str: ...


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
        verifying = _ssl_context(verify)  # now: a CA bundle that is not there fails here
        # The connection pool is made on the first call: its TLS context loads the CA
        # bundle, a tenth of a second or more that a daemon's start should not wait for.
        self._make_http = functools.partial(
            httpx.Client,
            auth=self._auth,
            verify=verifying,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            headers={"Accept": "application/json"},
        )
        self._made: httpx.Client | None = None
        self._making = threading.Lock()
        self._secrets = [password]

    @classmethod
    def from_config(
        cls,
        diva: DivaSettings,
        *,
        timeout: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> DivaClient:
        """A client for the ``[diva]`` section (it logs in on its first call): the one way
        the daemon and the CLI build it. ``timeout`` overrides ``timeout_seconds``.

        Reads the password now: raises :class:`~ingest.errors.ConfigError` (naming the
        variable or file, never the password) when it cannot be had.
        """
        verify = diva.verify if isinstance(diva.verify, bool) else os.fspath(diva.verify)
        return cls(
            diva.url, diva.username, diva.password(),
            data_url=diva.data_url, manager_url=diva.manager_url,
            auth_scheme=diva.auth_scheme, verify=verify,
            timeout=diva.timeout_seconds if timeout is None else timeout,
            transport=transport,
            object_info_path=diva.object_info_path, session_minutes=diva.session_minutes,
        )  # fmt: skip

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

    def login_once(self) -> None:
        """Log in unless logged in already: a call made meanwhile waits for this login and
        uses its token (:meth:`login` always logs in, for a probe of the credentials)."""
        self._auth.ensure(lambda request: self._send(request, auth=False, check=False))

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
            if self._made is not None:
                self._made.close()

    @property
    def _http(self) -> httpx.Client:
        made = self._made
        if made is None:
            with self._making:
                if self._made is None:
                    self._made = self._make_http()
                made = self._made
        return made

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
        return RequestInfo.from_wire(as_mapping(data))

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
                    f"DIVA's request list has no `requests`: {snippet(json.dumps(data))}"
                )
        else:
            items = data
        return [RequestInfo.from_wire(as_mapping(r)) for r in as_list(items)]

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
            code = body_status(data)
            if code == 1009:
                return None  # DIVA's "no such object", in a 200 as some versions answer
            if code is not None and code_kind(code) is not CodeKind.SUCCESS:
                raise DivaUnconfirmed(
                    f"DIVA answered object info with {status_name(code)} ({code})",
                    status_code=code,
                )
            return ObjectInfo.from_wire(as_mapping(data))
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
        return [ObjectInfo.from_wire(o) for o in as_list(items)]

    def servers(self) -> list[dict[str, Any]]:
        """Source and destination servers (``GET /servers``)."""
        return self._resource_list("servers")

    def arrays(self) -> list[dict[str, Any]]:
        """Disk arrays (``GET /arrays``)."""
        return self._resource_list("arrays")

    def groups(self) -> list[dict[str, Any]]:
        """Tape groups (``GET /groups``)."""
        return self._resource_list("groups")

    def get(self, route: str, params: QueryParams | None = None) -> Any:
        """``GET`` a manager route (``"/requests"``): DIVA's JSON answer as sent.

        For callers that must see the answer itself rather than the typed methods' reading
        of it (``ingest doctor`` checks lists and pages as DIVA sends them). Logs in and
        fails as every call does.
        """
        return self._call("GET", f"{self.manager_url}{route}", params=params)

    def versions(self) -> dict[str, Any]:
        """DIVA's component versions (``GET /versions``)."""
        data = self._call("GET", f"{self.manager_url}/versions")
        return dict(data) if isinstance(data, Mapping) else {"versions": data}

    # -- plumbing --------------------------------------------------------------------

    def _resource_list(self, name: str) -> list[dict[str, Any]]:
        data = self._call("GET", f"{self.manager_url}/{name}")
        items = data.get(name, data.get("items", [])) if isinstance(data, Mapping) else data
        return [dict(i) for i in as_list(items) if isinstance(i, Mapping)]

    def _submit(self, kind: str, body: Mapping[str, Any]) -> int:
        data = as_mapping(self._call("POST", f"{self.manager_url}/requests/{kind}", json=body))
        rid = request_id_of(data)
        if rid is None:
            raise DivaProtocolError(
                f"DIVA accepted the {kind} request but gave no request id: "
                f"{self._scrub(snippet(json.dumps(data)))}"
            )
        return rid

    def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        request = self._http.build_request(method, url, **kwargs)
        response = self._send(request, auth=True)
        # A POST's statusCode is the call's verdict; a GET's may describe the thing read
        # (an aborted request reports its own failure code with HTTP 200).
        return read_json(response, verdict=method == "POST")

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
            # httpx's response and its stream refer to each other: left so, every call
            # leaves some 40 objects that only the cycle collector frees (19,738 in one
            # 300-drop detection run; 1,679 after, nearly all one import's), on the
            # daemon's threads (tests/test_client.py).
            response.stream = _SPENT
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


# -- sending and reading ---------------------------------------------------------------


#: what a read, closed response holds as its stream: nothing more to read
_SPENT = httpx.ByteStream(b"")


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


def _newest_first(items: list[RequestInfo]) -> bool:
    ids = [r.request_id for r in items]
    return len(ids) > 1 and all(a > b for a, b in itertools.pairwise(ids))


def _all_before(items: list[RequestInfo], floor: float) -> bool:
    dates = [r.submitted_at for r in items]
    return all(d is not None and d.timestamp() < floor for d in dates)
