"""DIVA's login as an :class:`httpx.Auth` flow: one token per process, renewed when refused.

The guide asks for one login, not one per call: the token is fetched on first use and
reused by every call, from any thread, until DIVA refuses it or it outlives its session.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Generator, Mapping
from typing import Literal

import httpx

from . import defaults
from .errors import DivaAuthError, DivaProtocolError
from .wire import error_for, read_json, response_status

__all__ = ["AuthScheme", "DivaAuth"]

log = logging.getLogger("ingest.client")

#: How the token goes in the Authorization header: bare (as DIVA's guide), or "Bearer ...".
AuthScheme = Literal["raw", "bearer"]


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
        data = read_json(response)
        token = data.get("token") if isinstance(data, Mapping) else None
        if not isinstance(token, str) or not token:
            raise DivaProtocolError(
                "DIVA's login answer has no token", url=str(response.request.url)
            )
        self.logins += 1
        log.debug("logged in to DIVA as %s", self._username)
        return token

    def ensure(self, send: Callable[[httpx.Request], httpx.Response]) -> None:
        """Log in with ``send`` unless a token is held; calls made meanwhile wait for this
        login and share its token, as they would the first call's."""
        with self._lock:
            if self._token is None:
                self.use(self.accept_login(send(self.login_request())))

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
            role_refusal = response.status_code == 403 and response_status(response) == 1035
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
