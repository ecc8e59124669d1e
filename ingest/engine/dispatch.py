"""DIVA calls on worker threads: the pool, and the questions asked before anything is sent twice.

The engine decides (:mod:`.submissions`); this module only makes the calls. Each is a
:class:`Job`, run on a pool of threads (so a slow or absent DIVA never stalls watching)
once the engine's turn that decided it has committed, and answered by a typed
:class:`Outcome` put on the engine's queue. The calls touch neither the ledger nor a
file: :class:`Turn` only carries the engine's open ledger transaction, and the calls and
file removals decided in it, from the engine to the Tracker and back.

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
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import httpx

from .. import defaults
from ..client import DivaClient, ObjectInfo, RequestInfo
from ..errors import (
    DivaAuthError,
    DivaError,
    DivaRefused,
    DivaStatusTransient,
    DivaUnavailable,
    DivaUnconfirmed,
)
from ..ledger import Batch

__all__ = [
    "Checked",
    "Dispatcher",
    "Job",
    "Key",
    "Outcome",
    "Polled",
    "Reconciled",
    "Renamed",
    "Submitted",
    "Turn",
    "archive",
    "backoff_seconds",
    "check",
    "free_name",
    "never_connected",
    "poll",
    "reconcile",
    "rename",
    "uncertain",
]

log = logging.getLogger("ingest.engine")

Key = tuple[str, str]  # a drop: (watch folder, its path relative to it)
T = TypeVar("T")


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


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """DIVA's answer to one job for one drop: the call's value, or the error it raised."""

    key: Key
    token: int  # the drop's job token when the job was made: stale answers are ignored
    result: T | DivaError


class Submitted(Outcome[int]):
    """An archive request: DIVA's request id."""


class Polled(Outcome[RequestInfo]):
    """A request's state."""


class Checked(Outcome[Reconciled]):
    """What DIVA knows of an object we may have submitted (:func:`reconcile`)."""


class Renamed(Outcome[str]):
    """A free object name, for ``on_conflict = "suffix"`` (:func:`free_name`)."""


@dataclass(frozen=True)
class Job(Generic[T]):
    """One DIVA call for one drop, made only after the turn that decided it committed."""

    answer: type[Outcome[T]]
    key: Key
    token: int
    call: Callable[[DivaClient], T]

    def __call__(self, client: DivaClient) -> Outcome[T]:
        result: T | DivaError
        try:
            result = self.call(client)
        except DivaError as exc:
            result = exc
        except Exception as exc:  # a bug must not kill the pool's thread silently
            log.exception("DIVA %s job for %s crashed", self.answer.__name__, self.key[1])
            result = DivaError(f"internal error: {exc!r}")
        return self.answer(self.key, self.token, result)


def archive(key: Key, token: int, body: Mapping[str, Any]) -> Job[int]:
    return Job(Submitted, key, token, lambda client: client.archive(body))


def poll(key: Key, token: int, request_id: int) -> Job[RequestInfo]:
    return Job(Polled, key, token, lambda client: client.request(request_id))


def check(
    key: Key, token: int, name: str, collection: str, components: Sequence[str],
    since: datetime | None, *, root: str | None, size: int | None,
) -> Job[Reconciled]:  # fmt: skip
    return Job(
        Checked, key, token,
        lambda client: reconcile(client, name, collection, components, since, root=root, size=size),
    )  # fmt: skip


def rename(key: Key, token: int, name: str, collection: str) -> Job[str]:
    return Job(Renamed, key, token, lambda client: free_name(client, name, collection))


@dataclass
class Turn:
    """One turn of the engine: its ledger transaction, and the side effects it decided on,
    which happen only once that transaction has committed (none when it fails)."""

    tx: Batch
    now: float  # monotonic seconds
    calls: list[Job[Any]] = field(default_factory=list)  # DIVA calls
    removals: list[Callable[[], None]] = field(default_factory=list)  # from drop folders


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
    skew = defaults.ENGINE_OWN_REQUEST_SKEW_SECONDS
    floor = since.timestamp() - skew if since is not None else None
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


def free_name(
    client: DivaClient,
    object_name: str,
    collection: str,
    limit: int = defaults.RULE_SUFFIX_MAX_TRIES,
) -> str:
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
    jitter = defaults.ENGINE_BACKOFF_JITTER_FRACTION
    return delay * rng.uniform(1 - jitter, 1 + jitter)


def uncertain(error: DivaError) -> bool:
    """Whether the failed call may still have reached DIVA (so a blind resubmit could
    archive twice). Only a connection that never opened, or DIVA's own refusal (a status
    code, or a refused login), is certain not to have: an answer DIVA would not send (HTML
    from a proxy, truncated JSON, an empty 2xx) or an unexpected failure may come after
    the request was created."""
    if isinstance(error, DivaUnavailable):
        return not never_connected(error)
    return not isinstance(error, DivaRefused | DivaAuthError | DivaStatusTransient)


def never_connected(error: DivaError) -> bool:
    """Whether the call failed before a connection opened (so DIVA cannot have it)."""
    return isinstance(error.__cause__, httpx.ConnectError | httpx.ConnectTimeout)


#: the order in which waiting jobs go out: what moves a drop towards DIVA first (its
#: archive call, and the questions asked before one), then polls, whose timing is a
#: minimum interval anyway (unless one is overdue: see :meth:`Dispatcher._take`), then the
#: rest (e.g. checksum verification after COMPLETED)
_FIRST, _THEN, _LAST = 0, 1, 2


def _rank(job: Job[Any]) -> int:
    if issubclass(job.answer, Submitted | Checked | Renamed):
        return _FIRST
    return _THEN if issubclass(job.answer, Polled) else _LAST


class Dispatcher:
    r"""Runs :class:`Job`\ s on a pool of threads; each answer goes to ``deliver``.

    Each thread keeps its own keep-alive connection to DIVA busy (the client's pool holds
    at least ``workers`` of them), so a burst of submissions is pipelined over ``workers``
    connections rather than sent one after another. Waiting jobs go out in order of
    :func:`_rank`: a poll holds up no archive call unless drops are waiting for a place at
    DIVA (:attr:`short_of_places`, which the engine sets after each turn) and the poll
    has waited ``ENGINE_POLL_OVERDUE_SECONDS``. How many calls a burst may start
    stays the Tracker's business (``max_in_flight``): every job is for a drop holding a
    place at DIVA, or one already COMPLETED.
    """

    def __init__(
        self,
        client: DivaClient,
        deliver: Callable[[Outcome[Any]], None],
        workers: int = defaults.ENGINE_WORKERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self._deliver = deliver
        self._workers = max(1, workers)
        # one queue per rank, in order of arrival: (queued at, job)
        self._queues: tuple[deque[tuple[float, Job[Any]]], ...] = (deque(), deque(), deque())
        self._waiting = 0  # jobs in the queues
        self._clock = clock
        self._ready = threading.Condition(threading.Lock())
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job
        self._closed = False
        self._login: threading.Thread | None = None
        #: drops wait for a place at DIVA (``max_in_flight`` taken): only polls free places,
        #: so an overdue one goes ahead of archive calls. While places are left, a burst's
        #: archive calls all go first: a poll then only takes a POST's turn at DIVA, and the
        #: guide asks for status no sooner than ``poll_seconds``, not for it on time. Polls
        #: wait at most until the queued calls are sent, or fill ``max_in_flight``.
        self.short_of_places = False

    def __repr__(self) -> str:
        return f"<Dispatcher {self.client.manager_url} workers={self._workers}>"

    def run(self, job: Job[Any]) -> None:
        with self._ready:
            if self._closed:
                return
            self._queues[_rank(job)].append((self._clock(), job))
            self._waiting += 1
            if len(self._threads) < self._workers and self._waiting > self._idle:
                # a thread only when no idle one can take the job: few calls, few threads.
                # Daemon threads: a call still in hand when the process exits is as after
                # a crash (its intent is on disk; the next start asks DIVA about it).
                thread = threading.Thread(
                    target=self._work, name=f"ingest-diva_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._ready.notify()

    def log_in(self) -> None:
        """Log in to DIVA now, on a thread of its own, so that the first drop's call does
        not wait for it (a login hashes a password: 35-250 ms on the emulator). A failure
        is only reported: the first call logs in again, and its error takes the usual way
        (an outage, a refused login)."""

        def login() -> None:
            try:
                self.client.login_once()
            except DivaAuthError as exc:
                log.warning("DIVA login at start failed: %s", exc)
            except DivaError as exc:
                log.info("DIVA login at start failed (calls log in when they need to): %s", exc)
            except Exception as exc:  # the client closed under it: the engine stopped
                log.debug("DIVA login at start not made: %r", exc)

        self._login = threading.Thread(target=login, name="ingest-diva-login", daemon=True)
        self._login.start()

    @property
    def login_over(self) -> bool:
        """Whether the login of :meth:`log_in` has ended, made or failed (True when none
        was started): the DIVA client's connection pool exists by then."""
        return self._login is None or not self._login.is_alive()

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._waiting and not self._closed:
                    self._idle += 1
                    self._ready.wait()
                    self._idle -= 1
                if self._closed:
                    return
                job = self._take()
            self._deliver(job(self.client))

    def _take(self) -> Job[Any]:
        """The next job: by rank, but a poll overdue goes ahead of archive calls when drops
        wait for places (a steady stream of calls beyond what DIVA takes would otherwise
        hold the polls back, and with them the places they free: the submissions would
        then stall behind the polls after all)."""
        polls = self._queues[_THEN]
        overdue = (
            self.short_of_places
            and polls
            and self._clock() - polls[0][0] >= defaults.ENGINE_POLL_OVERDUE_SECONDS
        )
        queue = polls if overdue else next(q for q in self._queues if q)
        self._waiting -= 1
        return queue.popleft()[1]

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs; those not started are dropped (their drops stay in the ledger
        as they were: the next start asks DIVA about them). ``wait``: until the calls in
        hand have returned."""
        with self._ready:
            self._closed = True
            for queue in self._queues:
                queue.clear()
            self._waiting = 0
            self._ready.notify_all()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()
        if self._login is not None:
            # Its connection must not be closed under it (a socket left open): a login
            # takes a moment, or DIVA's timeout when it does not answer.
            self._login.join(timeout=defaults.ENGINE_STOP_GRACE_SECONDS)
