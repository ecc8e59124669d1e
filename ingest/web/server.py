"""The HTTP server: stdlib :class:`~http.server.ThreadingHTTPServer` on its own threads.

Read-only: GET and HEAD, and POST only for the login form. Routes:

    /             the status page (HTML; a login form first when a token is set)
    /api/page     the page's sections as HTML fragments, for its refresh script
    /api/status   ``ingest status --json``'s document
    /api/drops    ``ingest ledger list --json``'s records (?state=&rule=&limit=)
    /healthz      JSON; 200 healthy, 503 with the reasons
    /metrics      Prometheus text format
    /login        the token form (POST sets the session cookie)

The standard library's server is enough for a page a few operators open and a scraper
reads every few seconds; it adds no dependency to a daemon that must stay small.

Security: loopback unless ``[http] token`` is set (the config refuses a non-loopback
``listen`` without one). With a token every route but ``/login`` asks for it, as
``Authorization: Bearer TOKEN`` or the cookie the login form sets (an HMAC of the token,
not the token). Without one, requests must name a loopback host (``Host:``), so a web
page elsewhere cannot read the status through DNS rebinding. No answer ever holds the
token or the DIVA password: neither is known to anything these routes read.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .. import defaults, overview, queries
from ..config import HttpConfig, ServiceConfig
from ..engine.monitor import Monitor
from ..errors import ConfigError, LedgerError, UsageError
from ..report import dumps
from . import page, views
from .metrics import LedgerMetrics

__all__ = ["WebServer", "serve"]

log = logging.getLogger("ingest.web")

COOKIE = "ingest_session"
#: what the session cookie is an HMAC of (keyed by the token)
_COOKIE_MESSAGE = b"ingest status page session v1"
#: the login form's body, at most, bytes
_MAX_FORM_BYTES = 4096
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_JSON = "application/json; charset=utf-8"
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: WebServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class WebServer:
    """The endpoint of one engine: :meth:`start` it, :meth:`stop` it (or use :func:`serve`)."""

    def __init__(
        self, http: HttpConfig, monitor: Monitor, ledger: queries.LedgerAt, *, stuck_after: float
    ) -> None:
        self.config = http
        self.monitor = monitor
        self.ledger = ledger
        self.stuck_after = stuck_after
        token = http.token()
        # Only an HMAC of the token is kept: the cookie's value, and what a bearer token
        # is compared with after the same HMAC (constant-time either way).
        self._key = _session(token) if token is not None else None
        self.metrics = LedgerMetrics(monitor, ledger)
        server_class = _Server6 if ":" in http.host else _Server
        try:
            self.httpd = server_class((http.host, http.port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"[http] listen = {http.listen!r}: cannot listen there: {exc.strerror or exc}"
            ) from None
        self.httpd.app = self
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<WebServer {self.url}>"

    @property
    def url(self) -> str:
        """The base URL actually bound (the port the system chose for ``:0``)."""
        host, port = self.httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    @property
    def needs_token(self) -> bool:
        return self._key is not None

    def start(self) -> WebServer:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.25},
            name="ingest-http", daemon=True,
        )  # fmt: skip
        self._thread.start()
        log.info(
            "status page, API and metrics at %s (%s)", self.url,
            "token required" if self.needs_token else "loopback only, no token",
        )  # fmt: skip
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; requests in hand get their answer first."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=defaults.HTTP_STOP_SECONDS)
            self._thread = None
        self.httpd.server_close()

    def authorised(self, header: str | None, cookies: str | None) -> bool:
        """Whether a request carries the token (bearer header or session cookie)."""
        if self._key is None:
            return True
        if header and header[:7].lower() == "bearer ":
            return hmac.compare_digest(_session(header[7:].strip()), self._key)
        for part in (cookies or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), self._key.encode()):
                return True
        return False

    def cookie_for(self, token: str) -> str | None:
        """The session cookie's value for a login with ``token``, None when it is wrong."""
        if self._key is None or not hmac.compare_digest(_session(token), self._key):
            return None
        return self._key


def _session(token: str) -> str:
    return hmac.new(token.encode(), _COOKIE_MESSAGE, hashlib.sha256).hexdigest()


@contextmanager
def serve(config: ServiceConfig, monitor: Monitor) -> Iterator[WebServer | None]:
    """The endpoint for ``config``'s ``[http]`` while the block runs (None when it is off)."""
    ledger = queries.readable_ledger(config)
    if config.http is None or ledger is None:
        if config.http is not None:
            log.warning("[http]: the ledger is in memory; the status page needs a ledger file")
        yield None
        return
    stuck_after = overview.stuck_after(config)
    server = WebServer(config.http, monitor, ledger, stuck_after=stuck_after).start()
    try:
        yield server
    finally:
        server.stop()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "ingest"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    #: an idle or trickling connection is dropped after this long, seconds (its thread with it)
    timeout = 30

    # -- plumbing ---------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s: " + format, self.client_address[0], *args)

    def _send(
        self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        text = json.dumps(doc, ensure_ascii=False) if isinstance(doc, list) else dumps(doc)
        self._send(code, text.encode(), _JSON, headers)

    def _html(self, code: int, text: str, nonce: str = "", **headers: str) -> None:
        script = f"'nonce-{nonce}'" if nonce else "'none'"
        csp = (
            f"default-src 'none'; script-src {script}; style-src 'unsafe-inline'; "
            "connect-src 'self'; img-src 'self' data:; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        self._send(
            code, text.encode(), "text/html; charset=utf-8",
            {"Content-Security-Policy": csp, **headers},
        )  # fmt: skip

    def _host_ok(self) -> bool:
        # A loopback endpoint without a token trusts whoever can connect; a Host header
        # naming another site means a browser was pointed here by DNS rebinding.
        if self.server.app.needs_token:
            return True
        host = self.headers.get("Host")
        if host is None:
            return True
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.strip("[]").lower() in _LOOPBACK_HOSTS

    # -- methods ----------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        app = self.server.app
        if not self._host_ok():
            self._json(421, {"error": "this endpoint answers only to a loopback Host"})
            return
        if url.path == "/login":
            self._html(200, page.login_page(failed=False))
            return
        if not app.authorised(self.headers.get("Authorization"), self.headers.get("Cookie")):
            self._unauthorised(url.path)
            return
        try:
            self._route(url.path, urllib.parse.parse_qs(url.query))
        except LedgerError as exc:
            self._json(503, {"error": str(exc)})
        except UsageError as exc:
            self._json(400, {"error": str(exc)})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("http %s failed", url.path)
            self._json(500, {"error": "internal error (see the daemon's log)"})

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/login" or not self._host_ok():
            self._json(405, {"error": "read-only: only GET (and POST /login)"}, {"Allow": "GET"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_FORM_BYTES:
            self._json(413, {"error": f"the form must be 0..{_MAX_FORM_BYTES} bytes"})
            return
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        cookie = self.server.app.cookie_for((form.get("token") or [""])[0])
        if cookie is None:
            self._html(401, page.login_page(failed=True))
            return
        self.send_response(303)
        self.send_header("Location", "./")
        self.send_header("Set-Cookie", f"{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/")
        self.send_header("Content-Length", "0")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()

    def _refuse(self) -> None:
        self._json(405, {"error": "read-only: only GET (and POST /login)"}, {"Allow": "GET"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _unauthorised(self, path: str) -> None:
        if path == "/":
            self._html(401, page.login_page(failed=False))
            return
        self._json(
            401, {"error": "a token is required: Authorization: Bearer TOKEN, or log in at /login"},
            {"WWW-Authenticate": 'Bearer realm="ingest"'},
        )  # fmt: skip

    # -- routes -----------------------------------------------------------------------

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        app = self.server.app
        now = time.time()
        if path == "/healthz":
            code, doc = views.health(app.monitor.snapshot, now)
            doc["rules"] = views.rules_in_force(app.ledger)
            self._json(code, doc)
        elif path == "/metrics":
            self._send(200, app.metrics.render(), _PROMETHEUS)
        elif path == "/api/status":
            self._json(200, views.status(app.ledger, app.stuck_after, now))
        elif path == "/api/drops":
            states = _values(query, "state")
            rules = _values(query, "rule")
            limit = _limit((query.get("limit") or [""])[0])
            self._json(200, views.drops(app.ledger, states, rules, limit))
        elif path in ("/", "/api/page"):
            data = views.page_data(app.ledger, app.monitor.snapshot, app.stuck_after, now)
            if path == "/":
                nonce = secrets.token_urlsafe(16)
                self._html(200, page.page(data, nonce), nonce)
            else:
                ok = data["status"]["healthy"] and data["health"]["ok"]
                self._json(200, {"healthy": ok, "sections": page.sections(data)})
        else:
            self._json(404, {"error": f"no such page: {path}"})


def _values(query: dict[str, list[str]], name: str) -> list[str]:
    """A repeated or comma-separated parameter's values (``?state=FAILED,REJECTED``)."""
    return [v.strip() for raw in query.get(name, []) for v in raw.split(",") if v.strip()]


def _limit(raw: str) -> int:
    if not raw:
        return defaults.HTTP_DROPS_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= defaults.HTTP_DROPS_MAX_LIMIT:
        raise UsageError(f"limit must be 1..{defaults.HTTP_DROPS_MAX_LIMIT}, got {raw!r}")
    return int(raw)
