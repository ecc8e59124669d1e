"""The archive hook: a URL the emulator tells of each archive call before it takes it.

Tests use it to check, at the very moment an archive call reaches DIVA, what only they
can see (the daemon's ledger, say): the emulator knows nothing of what the hook checks. It
POSTs ``{"objectName", "collectionName", "components"}`` and waits for the answer
(:data:`HOOK_TIMEOUT_SECONDS` at most) before it creates the request. A hook that cannot
be reached, times out or answers other than 2xx is counted as a failure (``GET
/_emulator/hooks``, ``/_emulator/stats``, and a warning in the log), and the archive goes
on as if there were no hook: the hook observes DIVA, it never changes what DIVA does.

The URL comes from ``--archive-hook`` or ``PUT /_emulator/hooks``; both must name a
loopback address, as ``/_emulator`` needs no login and must not become a way to make the
emulator call elsewhere.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = ["HOOK_TIMEOUT_SECONDS", "ArchiveHook", "check_hook_url"]

log = logging.getLogger("ingest.emulator")

#: Long enough for a checker on a loaded test machine, short enough that a hung hook
#: cannot hold the archive call past a client's timeout for long.
HOOK_TIMEOUT_SECONDS = 5.0


def check_hook_url(url: str) -> str:
    """``url`` if it is an http(s) URL on a loopback address; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"archive hook {url!r}: expected an http:// or https:// URL")
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"archive hook {url!r}: must be on a loopback address")
    return url


class ArchiveHook:
    """The hook's URL (the command line's, or one set at runtime) and its call counts."""

    def __init__(self, url: str | None) -> None:
        self._initial = check_hook_url(url) if url else None
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=HOOK_TIMEOUT_SECONDS, trust_env=False)
        self.url = self._initial
        self._zero()

    def _zero(self) -> None:
        self.calls = 0
        self.failures = 0
        self.last_failure = ""

    def set(self, url: str | None) -> None:
        """Point the hook elsewhere (None: no hook); counts start again from zero."""
        checked = check_hook_url(url) if url else None
        with self._lock:
            self.url = checked
            self._zero()

    def reset(self) -> None:
        """Back to the command line's URL, counts at zero."""
        with self._lock:
            self.url = self._initial
            self._zero()

    def close(self) -> None:
        self._client.close()

    def archive_arrived(self, object_name: str, collection: str, components: list[str]) -> None:
        """Tell the hook, and wait for its answer; a failure is recorded, never raised."""
        with self._lock:
            url = self.url
            if url is None:
                return
            self.calls += 1
        payload = {"objectName": object_name, "collectionName": collection,
                   "components": components}  # fmt: skip
        problem = ""
        try:
            response = self._client.post(url, json=payload)
            if not response.is_success:
                problem = f"HTTP {response.status_code} from {url}"
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__} calling {url}: {exc}"
        if problem:
            log.warning("archive hook failed for %s (%s): %s", object_name, collection, problem)
            with self._lock:
                self.failures += 1
                self.last_failure = problem

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "archive": self.url,
                "calls": self.calls,
                "failures": self.failures,
                "lastFailure": self.last_failure,
            }
