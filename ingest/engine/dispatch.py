"""Talking to DIVA on the engine's behalf: submit, poll, reconcile, on worker threads.

The engine decides; this module only does the DIVA calls it asks for, on a small thread
pool so a slow or absent DIVA never stalls watching, and hands each result back as an
:class:`Outcome` through the engine's queue. Nothing here touches the ledger.

Reconciling is how "nothing is archived twice" survives a crash: before a drop whose
earlier archive call may have reached DIVA is submitted again, :func:`reconcile` asks DIVA
what it knows about the object (its requests, then the object itself) and the engine
adopts what is there instead of creating a second object. Only DIVA's positive word (a
1009, a request list read to its end) makes it "absent"; any answer short of that leaves
the drop uncertain, retried with backoff and at last FAILED ("cannot confirm with DIVA"),
its files in place, never submitted blind.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import httpx

from ..client import DivaClient, ObjectInfo, RequestInfo
from ..errors import (
    DivaAuthError,
    DivaError,
    DivaRefused,
    DivaStatusTransient,
    DivaUnavailable,
    DivaUnconfirmed,
)

__all__ = [
    "Dispatcher",
    "Key",
    "Outcome",
    "Reconciled",
    "backoff_seconds",
    "free_name",
    "reconcile",
    "uncertain",
]

log = logging.getLogger("ingest.engine.dispatch")

Key = tuple[str, str]  # a drop: (watch folder, its path relative to it)
JobKind = Literal["submit", "poll", "reconcile", "free_name"]


@dataclass(frozen=True)
class Outcome:
    """The result of one DIVA job for one drop: ``value`` or ``error``, never both."""

    kind: JobKind
    drop_id: int
    token: int  # the drop's job token when the job was sent: stale results are ignored
    value: Any = None
    error: DivaError | None = None


@dataclass(frozen=True)
class Reconciled:
    """What DIVA knows of an object we may have submitted.

    ``found``: ``request`` (a request for it, ``info`` tells its state), ``object``
    (archived, components matching ours), ``conflict`` (an object of that name that is
    not ours), or ``absent`` (DIVA never got it: safe to submit).
    """

    found: Literal["request", "object", "conflict", "absent"]
    info: RequestInfo | None = None
    detail: str = ""


def reconcile(
    client: DivaClient,
    object_name: str,
    collection: str,
    components: Sequence[str],
    since: datetime | None = None,
    *,
    root: str | None = None,
    size: int | None = None,
) -> Reconciled:
    """Find out whether DIVA already has (or is archiving) this drop's object.

    A live request for the name is ours to follow unless it was submitted before our
    first intent (``since``): then someone else is archiving that object, a conflict. A
    finished request proves nothing by its name alone: the object decides, and it is ours
    only if its files are ours (names, and where DIVA says so, the file path ``root`` and
    the total ``size``).

    "absent" needs DIVA's own word twice over: a request list read to its end with none
    for the object, and object info answering 1009. Anything less raises (the drop stays
    uncertain): :class:`DivaUnconfirmed` for a list that would not end, the client's
    errors for answers it does not understand.
    """
    unconfirmed: DivaUnconfirmed | None = None
    try:
        requests = client.requests(object_name=object_name, collection=collection, since=since)
    except DivaUnconfirmed as exc:
        requests, unconfirmed = [], exc
    requests.sort(key=lambda r: r.request_id, reverse=True)
    live = [r for r in requests if not r.state.finished]
    floor = since.timestamp() - OWN_REQUEST_SKEW_SECONDS if since is not None else None
    for r in live:
        if floor is not None and r.submitted_at is not None and r.submitted_at.timestamp() < floor:
            return Reconciled(
                "conflict", r,
                f"DIVA request {r.request_id}, submitted before ours, is archiving "
                f"{object_name!r} in {collection!r}",
            )  # fmt: skip
        return Reconciled("request", r, f"DIVA is running request {r.request_id}")
    obj = client.object_info(object_name, collection)
    if obj is None:
        if unconfirmed is not None:
            raise unconfirmed
        return Reconciled("absent", detail="DIVA has neither a request nor an object for it")
    if _same_files(obj, components, root, size):
        return Reconciled("object", detail="DIVA holds the object with our components")
    return Reconciled(
        "conflict",
        detail=f"DIVA holds another object named {object_name!r} in {collection!r}",
    )


#: A live request submitted this long before a drop's first intent is not the drop's own
#: (room for the clocks of DIVA and this host to disagree).
OWN_REQUEST_SKEW_SECONDS = 120.0


def _same_files(
    obj: ObjectInfo, components: Sequence[str], root: str | None, size: int | None
) -> bool:
    """Whether a stored object's files are ours: the same names, read with or without the
    object's file path root in front (DIVA versions differ in which they list); and, where
    DIVA tells them, the same file path root and the same total size."""
    ours = {c.strip("/") for c in components}
    stored = {c.name.replace("\\", "/").strip("/") for c in obj.components}
    their_root = obj.raw.get("filePathRoot")
    their_root = their_root.replace("\\", "/").strip("/") if isinstance(their_root, str) else ""
    if stored != ours:
        if not their_root:
            return False
        if {s.removeprefix(their_root + "/") for s in stored} != ours:
            return False
    if root is not None and their_root and their_root != root.replace("\\", "/").strip("/"):
        return False
    sizes = [c.size for c in obj.components]
    if size is not None and sizes and all(n is not None for n in sizes):
        return sum(n for n in sizes if n is not None) == size
    return True


def free_name(client: DivaClient, object_name: str, collection: str, limit: int = 99) -> str:
    """The first of ``name_2``, ``name_3``... that DIVA says (1009) it has no object for
    (``on_conflict = "suffix"``); any other answer raises, so no name is taken blind."""
    for n in range(2, limit + 2):
        candidate = f"{object_name}_{n}"
        if client.object_info(candidate, collection) is None:
            return candidate
    raise DivaRefused(f"no free name up to {object_name}_{limit + 1} in {collection!r}")


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with ±20% jitter: ``base * 2**(attempt-1)``, at most ``cap``.

    >>> 8.0 <= backoff_seconds(2, 5.0, 300.0, random.Random(1)) <= 12.0
    True
    """
    delay: float = min(cap, base * (2 ** max(0, attempt - 1)))
    return delay * rng.uniform(0.8, 1.2)


def uncertain(error: DivaError) -> bool:
    """Whether the failed call may still have reached DIVA (so a blind resubmit could
    archive twice). Only a connection that never opened, or DIVA's own refusal (a status
    code, or a refused login), is certain not to have: an answer DIVA would not send (HTML
    from a proxy, truncated JSON, an empty 2xx) or an unexpected failure may come after
    the request was created."""
    if isinstance(error, DivaUnavailable):
        return not _never_connected(error)
    return not isinstance(error, DivaRefused | DivaAuthError | DivaStatusTransient)


def _never_connected(error: DivaError) -> bool:
    return isinstance(error.__cause__, httpx.ConnectError | httpx.ConnectTimeout)


class Dispatcher:
    """Runs DIVA jobs on a few threads; each result goes to ``deliver`` as an Outcome."""

    def __init__(
        self, client: DivaClient, deliver: Callable[[Outcome], None], workers: int = 4
    ) -> None:
        self.client = client
        self._deliver = deliver
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest-diva")
        self.running = 0

    def __repr__(self) -> str:
        return f"<Dispatcher running={self.running}>"

    def _run(self, kind: JobKind, drop_id: int, token: int, call: Callable[[], Any]) -> None:
        self.running += 1

        def job() -> Outcome:
            try:
                return Outcome(kind, drop_id, token, value=call())
            except DivaError as exc:
                return Outcome(kind, drop_id, token, error=exc)
            except Exception as exc:  # a bug must not kill the pool's thread silently
                log.exception("DIVA %s job for drop %s crashed", kind, drop_id)
                return Outcome(kind, drop_id, token, error=DivaError(f"internal error: {exc!r}"))

        def done(future: Future[Outcome]) -> None:
            self._deliver(future.result())

        self._pool.submit(job).add_done_callback(done)

    def submit(self, drop_id: int, token: int, body: Mapping[str, Any]) -> None:
        self._run("submit", drop_id, token, lambda: self.client.archive(body))

    def poll(self, drop_id: int, token: int, request_id: int) -> None:
        self._run("poll", drop_id, token, lambda: self.client.request(request_id))

    def reconcile(
        self, drop_id: int, token: int, name: str, collection: str, components: Sequence[str],
        since: datetime | None = None, *, root: str | None = None, size: int | None = None,
    ) -> None:  # fmt: skip
        self._run(
            "reconcile", drop_id, token,
            lambda: reconcile(
                self.client, name, collection, components, since, root=root, size=size
            ),
        )  # fmt: skip

    def free_name(self, drop_id: int, token: int, name: str, collection: str) -> None:
        self._run("free_name", drop_id, token, lambda: free_name(self.client, name, collection))

    def finished(self) -> None:
        """Called by the engine once it has taken an outcome from its queue."""
        self.running -= 1

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
