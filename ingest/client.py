"""The DIVA Core REST client: one login per process, typed calls, a tolerant reader.

::

    with DivaClient("https://diva:8765", "ingest", password) as diva:
        request_id = diva.archive(body)
        info = diva.request(request_id)        # RequestInfo(state=RequestState.RUNNING, ...)

Login is an :class:`httpx.Auth` flow: the token is fetched on first use and reused; a 401 or
403 makes the flow log in again once and replay the call, as the guide asks (never a login
per call). Failures become the :mod:`ingest.errors` tree: transient ones (transport,
timeouts, 5xx, 1032) are for the caller to retry with backoff; the client itself never
retries anything but that single re-login.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Generator, Iterable, Mapping
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
    DivaNotFound,
    DivaObjectExists,
    DivaProtocolError,
    DivaRefused,
    DivaServerError,
    DivaUnavailable,
)
from .protocol import RequestState, status_name

__all__ = [
    "Component",
    "DivaAuth",
    "DivaClient",
    "ObjectInfo",
    "RequestInfo",
    "error_for",
]

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
        """Read an object; components may be called ``components`` or ``files``."""
        name = _str(data.get("objectName")) or _str(data.get("name"))
        collection = _str(data.get("collectionName")) or _str(data.get("collection"))
        if not name or collection is None:
            raise DivaProtocolError(f"object without a name: {_snippet(json.dumps(data))}")
        parts = data.get("components") or data.get("files") or []
        components = []
        for part in parts if isinstance(parts, list) else []:
            if isinstance(part, str):
                components.append(Component(part))
            elif isinstance(part, Mapping):
                components.append(
                    Component(
                        name=_str(part.get("name")) or _str(part.get("fileName")) or "",
                        size=_int(part.get("size")),
                        checksum=_str(part.get("checksum")) or _str(part.get("md5")),
                    )
                )
        return cls(name, collection, tuple(components), dict(data))


class DivaAuth(httpx.Auth):
    """DIVA login as an httpx auth flow: one token, reused; on 401/403 log in once more.

    Thread-safe: concurrent calls share the token, and only one of them logs in again
    when it expires.
    """

    def __init__(self, login_url: str, username: str, password: str, scheme: AuthScheme) -> None:
        self._login_url = login_url
        self._username = username
        self._password = password
        self._scheme = scheme
        self._token: str | None = None
        self._lock = threading.Lock()
        self.logins = 0

    def __repr__(self) -> str:
        return f"DivaAuth(user={self._username!r}, scheme={self._scheme!r})"

    @property
    def token(self) -> str | None:
        return self._token

    def forget(self) -> None:
        self._token = None

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
                self._token = self.accept_login(response)
            used = self._token
        request.headers["Authorization"] = self._header(used)
        response = yield request
        if response.status_code not in (401, 403):
            return
        response.read()
        with self._lock:
            # Log in again if ours was the token refused (expired, revoked, the server
            # restarted), or if another thread's new login failed and left none.
            if self._token is None or self._token == used:
                self._token = None
                login = yield self.login_request()
                login.read()
                self._token = self.accept_login(login)
            used = self._token
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
    ) -> None:
        base = url.rstrip("/")
        self.data_url = (data_url or f"{base}/dataservice").rstrip("/")
        self.manager_url = (manager_url or f"{base}/manager").rstrip("/")
        self._auth = DivaAuth(f"{self.data_url}/users/login", username, password, auth_scheme)
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
        self._auth._token = self._auth.accept_login(response)

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
        type: str | None = None,
        states: Iterable[str] = (),
        collection: str | None = None,
        object_name: str | None = None,
        since: datetime | None = None,
        newest_first: bool = False,
    ) -> list[RequestInfo]:
        """Requests DIVA knows, filtered as production clients filter them.

        ``states`` are DIVA's words (``Pending``, ``Running``, ``Waiting for resources``...).
        """
        params: list[tuple[str, str]] = [("sortField", "ID")]
        params.append(("sortDirection", "DESC" if newest_first else "ASC"))
        if type:
            params.append(("type", type))
        params.extend(("states", s) for s in states)
        if collection is not None:
            params.append(("collectionName", collection))
        if object_name is not None:
            params.append(("objectName", object_name))
        if since is not None:
            params.append(("startDateTime", since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")))
        data = _mapping(self._call("GET", f"{self.manager_url}/requests", params=params))
        found = [RequestInfo.from_wire(r) for r in _list(data.get("requests", []))]
        if object_name is not None:
            # A server that ignores the filter must not make us adopt someone else's request.
            found = [r for r in found if r.object_name in (None, object_name)]
        return found

    # -- objects and resources -------------------------------------------------------

    def object_info(self, object_name: str, collection: str) -> ObjectInfo | None:
        """The archived object, or None when DIVA has no such object."""
        try:
            data = self._call(
                "GET",
                f"{self.manager_url}/objects/info",
                params={"objectName": object_name, "collectionName": collection},
            )
        except DivaNotFound:
            return None
        return ObjectInfo.from_wire(_mapping(data))

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

    DIVA's ``statusCode`` decides when there is one; the HTTP status otherwise.
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
    code = _int(body.get("statusCode")) if isinstance(body, Mapping) else None
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
    if code == 1032:
        return DivaBusy(f"DIVA is busy ({where}): {detail}", **ctx)
    if code in (1016, 1040):
        return DivaObjectExists(message, **ctx)
    if code == 1035:
        return DivaAccessDenied(message + " (the DIVA user's role does not allow it)", **ctx)
    if code in (1009, 1011) or (status == 404 and code is None):
        return DivaNotFound(message, **ctx)
    if status in (401, 403):
        return DivaAuthError(f"DIVA refused the token for {where} even after a new login", **ctx)
    if status >= 500:
        return DivaServerError(f"DIVA failed on {where}: {detail}", **ctx)
    if code is None and not isinstance(body, Mapping):
        return DivaProtocolError(
            f"DIVA answered {where} with HTTP {status} and no DIVA status: "
            f"{_snippet(response.text if scrub is None else scrub(response.text))}",
            http_status=status,
            url=url,
        )
    return DivaRefused(message, **ctx)


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
