"""Fault knobs, call statistics, and the ASGI middleware that applies both.

The knobs start from the command line and can be changed while running through
``PUT /_emulator/faults``; every random draw comes from one seeded generator so a run
with the same seed and the same sequence of calls injects the same faults.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..protocol import STATUS_DESCRIPTIONS, status_name

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["FaultMiddleware", "Knobs", "Runtime"]


@dataclass
class Knobs:
    """Everything tests may turn at runtime. Rates are fractions 0..1."""

    token_ttl: float = 86400.0
    throughput: float = 0.0
    max_active: int = 300
    abort_rate: float = 0.0
    http_error_rate: float = 0.0
    http_error_status: int = 503
    latency: float = 0.0
    latency_rate: float = 1.0
    #: a request submission (POST /manager/requests/...) is carried out, then its answer
    #: held back this long: a slow or lost reply
    reply_latency: float = 0.0
    request_seconds: float = 0.0
    #: fraction of calls carried out whose reply is then cut off mid-body and the
    #: connection closed: the client never learns the answer (an aborted HTTP request);
    #: runtime only (``PUT /_emulator/faults``)
    drop_rate: float = 0.0
    #: fraction of requests that wait (WAITING_FOR_RESOURCES or _OPERATOR, drawn) this long
    #: before they run
    wait_rate: float = 0.0
    wait_seconds: float = 0.0
    #: fraction of archives that store only the first half of their files, then end
    #: PARTIALLY_ABORTED (1002, DIVA_AR_DISK); delete-on-source deletes only those stored
    partial_rate: float = 0.0
    #: fraction of archives accepted without the 1016/1040 checks: they are made when the
    #: request runs, and a conflict then aborts it (DIVA_AR_PARAMETERS)
    late_conflict_rate: float = 0.0
    #: a request finished longer ago than this many seconds leaves the queue: unlisted, and
    #: 1011 for its id (0: kept for ever)
    forget_after: float = 0.0
    #: fraction of archives that store every file but, delete-on-source or not, delete
    #: none: a DIVA that leaves its sources in place (so tests can prove ingest never
    #: deletes media itself)
    keep_sources_rate: float = 0.0
    #: fraction of archives that store every file but record a wrong checksum for the
    #: first (a copy corrupted on its way to tape, as object info would then show it);
    #: runtime only (``PUT /_emulator/faults``)
    bad_checksum_rate: float = 0.0

    def updated(self, changes: dict[str, Any]) -> Knobs:
        """A copy with ``changes`` applied (``-`` in keys read as ``_``); ValueError if bad."""
        known = {f.name: f for f in dataclasses.fields(self)}
        values = dataclasses.asdict(self)
        for key, value in changes.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(f"unknown knob {key!r}; known: {', '.join(sorted(known))}")
            kind = int if known[name].type in (int, "int") else float
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key} must be a number")
            values[name] = kind(value)
        new = Knobs(**values)
        new.check()
        return new

    def check(self) -> None:
        rates = ("abort_rate", "http_error_rate", "latency_rate", "drop_rate", "wait_rate",
                 "partial_rate", "late_conflict_rate", "keep_sources_rate",
                 "bad_checksum_rate")  # fmt: skip
        for name in rates:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        durations = ("token_ttl", "throughput", "latency", "reply_latency", "request_seconds",
                     "wait_seconds", "forget_after")  # fmt: skip
        for name in durations:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_active < 1:
            raise ValueError("max_active must be at least 1")
        if self.http_error_status not in (500, 502, 503, 504):
            raise ValueError("http_error_status must be 500, 502, 503 or 504")


_NUMBER = re.compile(r"/\d+(?=/|$)")
_POLL = re.compile(r"^/manager/requests/(\d+)$")


class Runtime:
    """The live knobs, the seeded random generator, and the counters of ``/_emulator/stats``."""

    def __init__(self, knobs: Knobs, seed: int | None) -> None:
        self._initial = knobs
        self._seed = seed
        self._lock = threading.Lock()
        self.knobs = knobs
        self._rng = random.Random(seed)
        self._reset_stats()

    def _reset_stats(self) -> None:
        self.started = time.time()
        self.logins = 0
        self.login_failures = 0
        self.logouts = 0
        self.injected_errors = 0
        self.injected_latency = 0
        self.dropped_replies = 0
        self.calls: Counter[str] = Counter()
        self.polls: dict[int, dict[str, float]] = {}

    def reset(self) -> None:
        """Back to the command line's knobs, a fresh generator, zero counters."""
        with self._lock:
            self.knobs = self._initial
            self._rng = random.Random(self._seed)
            self._reset_stats()

    def set_knobs(self, changes: dict[str, Any]) -> Knobs:
        with self._lock:
            self.knobs = self.knobs.updated(changes)
            return self.knobs

    def roll(self, rate: float) -> bool:
        """True with probability ``rate`` (never draws for 0 or 1, to keep sequences stable)."""
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        with self._lock:
            return self._rng.random() < rate

    def choice(self, options: list[str]) -> str:
        with self._lock:
            return self._rng.choice(options)

    def count(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def record_call(self, method: str, path: str) -> None:
        now = time.time()
        with self._lock:
            self.calls[f"{method} {_NUMBER.sub('/{requestId}', path)}"] += 1
            match = _POLL.match(path)
            if method == "GET" and match:
                rid = int(match.group(1))
                poll = self.polls.get(rid)
                if poll is None:
                    self.polls[rid] = {"count": 1, "first": now, "last": now, "minInterval": -1.0}
                else:
                    gap = now - poll["last"]
                    if poll["minInterval"] < 0 or gap < poll["minInterval"]:
                        poll["minInterval"] = round(gap, 3)
                    poll["count"] += 1
                    poll["last"] = now

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "since": self.started,
                "logins": self.logins,
                "loginFailures": self.login_failures,
                "logouts": self.logouts,
                "injectedErrors": self.injected_errors,
                "injectedLatency": self.injected_latency,
                "droppedReplies": self.dropped_replies,
                "calls": dict(self.calls),
                "polls": {str(k): dict(v) for k, v in self.polls.items()},
            }


class FaultMiddleware:
    """Counts DIVA calls, then maybe delays them and maybe fails them before any work is done.

    Only ``/manager`` and ``/dataservice`` are affected; docs and ``/_emulator`` never are.
    """

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(("/manager", "/dataservice")):
            await self.app(scope, receive, send)
            return
        # First, before any fault or work: a benchmark times the sender to this point.
        scope.setdefault("state", {})["arrived"] = time.time()
        runtime = self.runtime
        runtime.record_call(scope["method"], path)
        knobs = runtime.knobs
        if knobs.latency > 0 and runtime.roll(knobs.latency_rate):
            runtime.count("injected_latency")
            await asyncio.sleep(knobs.latency)
        if runtime.roll(knobs.http_error_rate):
            runtime.count("injected_errors")
            await _send_error(send, knobs.http_error_status)
            return
        if runtime.roll(knobs.drop_rate):
            runtime.count("dropped_replies")
            await self.app(scope, receive, _cut_off(send))
            return
        submission = scope["method"] == "POST" and path.startswith("/manager/requests/")
        if knobs.reply_latency > 0 and submission:
            delay = knobs.reply_latency

            async def slow_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    await asyncio.sleep(delay)
                await send(message)

            await self.app(scope, receive, slow_send)
            return
        await self.app(scope, receive, send)


def _cut_off(send: Send) -> Send:
    """A ``send`` that promises more body than it delivers, then never ends the response:
    uvicorn closes the connection, and the client sees it drop mid-reply."""

    async def cut(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k != b"content-length"]
            headers.append((b"content-length", b"1000000"))
            await send({**message, "headers": headers})
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            await send({"type": "http.response.body", "body": body[: len(body) // 2],
                        "more_body": True})  # fmt: skip

    return cut


async def _send_error(send: Send, status: int) -> None:
    if status == 503:
        # What DIVA's gateway says when the manager behind it is down.
        body = json.dumps(
            {
                "statusCode": 1002,
                "statusName": status_name(1002),
                "statusDescription": STATUS_DESCRIPTIONS[1002] + ": injected fault",
            }
        ).encode()
        ctype = b"application/json"
    else:
        # A proxy's bare error page, which clients must survive too.
        body = b"<html><body><h1>Internal Server Error</h1></body></html>"
        ctype = b"text/html"
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
