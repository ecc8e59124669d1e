"""A fake DIVA behind :class:`httpx.MockTransport`: real logins and tokens, the rest
answered by a test's handler (no network, no emulator)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from ingest.client import DivaClient

PASSWORD = "s3cret-Pa55word!"
GATEWAY = "http://127.0.0.1:9"


class FakeDiva:
    """Counts logins and hands out numbered tokens; ``handler`` answers everything else."""

    def __init__(self, handler: Callable[[httpx.Request, FakeDiva], httpx.Response]) -> None:
        self.handler = handler
        self.logins = 0
        self.logouts = 0
        self.valid: set[str] = set()
        self.seen_auth: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/dataservice/users/login":
            body = json.loads(request.content)
            if body["password"] != PASSWORD:
                return httpx.Response(401, json={"statusCode": 1035, "statusName": "x"})
            self.logins += 1
            token = f"tok-{self.logins}"
            self.valid.add(token)
            return httpx.Response(200, json={"token": token})
        if request.url.path == "/dataservice/users/logout":
            self.logouts += 1
            self.valid.discard(request.headers.get("authorization", "").removeprefix("Bearer "))
            return httpx.Response(200, json={"statusCode": 1000})
        self.seen_auth.append(request.headers.get("authorization", ""))
        return self.handler(request, self)

    def token_ok(self, request: httpx.Request) -> bool:
        header = request.headers.get("authorization", "")
        return header.removeprefix("Bearer ") in self.valid


def make_client(fake: FakeDiva, **kwargs: Any) -> DivaClient:
    return DivaClient(
        GATEWAY, "ingest", kwargs.pop("password", PASSWORD),
        transport=httpx.MockTransport(fake), **kwargs,
    )  # fmt: skip
