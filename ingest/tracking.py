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

import heapq
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from . import defaults
from .client import DivaClient, ObjectInfo, RequestInfo
from .errors import (
    CANNOT_CONFIRM,
    DivaAuthError,
    DivaError,
    DivaNotFound,
    DivaObjectExists,
    DivaRefused,
    DivaStatusTransient,
    DivaUnavailable,
    DivaUnconfirmed,
)
from .ledger import FINAL_STATES, Batch, State
from .protocol import (
    DELETE_ON_SOURCE,
    TRANSIENT_ABORT_REASONS,
    CodeKind,
    RequestState,
    code_kind,
)
from .rules import Rule, build_archive_body
from .templates import Drop, DropRefused, Kind

__all__ = [
    "Dispatcher",
    "Outcome",
    "Reconciled",
    "Tracked",
    "Tracker",
    "backoff_seconds",
    "free_name",
    "reconcile",
]

log = logging.getLogger("ingest.tracking")

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


@dataclass(eq=False)
class Tracked:
    """A drop in an active state, as the engine holds it between ledger writes."""

    id: int
    rule: str
    watch: str
    path: str
    kind: str
    state: str
    attempts: int = 0
    token: int = 0
    object_name: str | None = None
    collection: str | None = None
    body: dict[str, Any] | None = None
    request_id: int | None = None
    priority: int | None = None
    on_conflict: str = "fail"
    uncertain: bool = False  # an earlier archive call may have reached DIVA
    queued: bool = False
    size: int | None = None
    mtime_ns: int | None = None
    file_count: int | None = None
    members: tuple[str, ...] = ()
    diva_state: str | None = None
    progress: int | None = None
    next_attempt_at: float | None = None  # epoch seconds
    source_deleted: bool | None = None
    submitted_at: float | None = None  # epoch seconds of the first intent we know of
    waiting_since: float | None = None  # epoch seconds DIVA began keeping it waiting
    checks: int = 0  # reconciliations that could not settle the question, in a row
    late_conflict: int | None = None  # DIVA aborted its request with 1016 / 1040
    adopted: bool = False  # following a request found by name: check the object at the end
    conflict: str = ""  # why the name is taken, while on_conflict = suffix looks for another

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Tracked:
        body = json.loads(row["body"]) if row.get("body") else None
        members: tuple[str, ...] = ()
        if body and row["kind"] == "folder":
            members = tuple(body.get("components", ()))
        return cls(
            id=row["id"], rule=row["rule"], watch=row["watch"], path=row["path"],
            kind=row["kind"], state=row["state"], attempts=row["attempts"] or 0,
            object_name=row["object_name"], collection=row["collection"], body=body,
            request_id=row["request_id"], priority=row["priority"], size=row["size"],
            mtime_ns=row["mtime_ns"], file_count=row["file_count"], members=members,
            diva_state=row["diva_state"], progress=row["progress"],
            next_attempt_at=row["next_attempt_at"], submitted_at=row.get("submitted_at"),
            waiting_since=row.get("waiting_since"), adopted=bool(row.get("adopted")),
        )  # fmt: skip

    def as_drop(self, rule: Rule) -> Drop:
        kind: Kind = "folder" if self.kind == "folder" else "file"
        mtime = (self.mtime_ns or 0) / 1e9
        return Drop(rule.name, rule.watch, self.path, kind, self.size or 0, mtime, self.members)

    def sources(self) -> list[str]:
        """The files DIVA was asked to archive, as absolute paths."""
        names = self.members if self.kind == "folder" else (self.path,)
        return [os.path.join(self.watch, *n.split("/")) for n in names]

    @property
    def label(self) -> str:
        return f"{self.rule} {self.path}"


class Tracker:
    """The DIVA side of the engine: intents, answers, polls, retries, reconciliation.

    Owned and called by the engine's thread only; ``tx`` is the engine's open ledger
    transaction for the turn in hand.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        poll_seconds: float,
        max_attempts: int,
        rng: random.Random,
        on_final: Callable[[Tracked], None],
        requeue: Callable[[Tracked], None],
    ) -> None:
        self.dispatcher = dispatcher
        self.poll_seconds = poll_seconds
        self.max_attempts = max_attempts
        self.rng = rng
        self._on_final = on_final
        self._requeue = requeue
        self.tx: Batch | None = None
        self.drops: dict[int, Tracked] = {}
        self._flying: set[int] = set()
        self._polls: list[tuple[float, int, int, int]] = []
        self._retries: list[tuple[float, int, int, int, str]] = []
        self._seq = itertools.count()
        self._tokens = itertools.count(1)  # never reset: stale answers stay recognisable
        self._pause_until = 0.0
        self._outages = 0

    def reset(self) -> None:
        self.drops.clear()
        self._flying.clear()
        self._polls.clear()
        self._retries.clear()

    # -- bookkeeping ------------------------------------------------------------------

    def in_flight(self) -> int:
        return len(self._flying)

    def paused(self, now: float) -> bool:
        """True while DIVA is unreachable or refuses our login: submit nothing."""
        return now < self._pause_until

    def next_deadline(self) -> float | None:
        times = [t[0] for t in self._polls[:1]] + [t[0] for t in self._retries[:1]]
        if self._pause_until > time.monotonic():
            times.append(self._pause_until)
        return min(times) if times else None

    def adopt(self, tr: Tracked, now: float) -> None:
        """Take a drop into memory (new, or read back from the ledger at start)."""
        self.drops[tr.id] = tr
        if tr.state in (State.SUBMITTED, State.RUNNING) and tr.request_id is not None:
            self._flying.add(tr.id)
            self._schedule_poll(tr, now)
        elif tr.state in (State.SUBMITTED, State.RUNNING, State.SUBMITTING):
            self._flying.add(tr.id)
            tr.uncertain = True
            tr.queued = True
        elif tr.state == State.RETRY_WAIT:
            tr.uncertain = tr.attempts > 0
            wait = max(0.0, (tr.next_attempt_at or 0.0) - time.time())
            self._schedule_retry(tr, now, "submit", wait)

    def move(self, tr: Tracked, state: str, detail: str, **fields: Any) -> None:
        """Record a transition in the ledger and log it, one line per transition."""
        assert self.tx is not None, "transitions happen inside the engine's turn"
        before = tr.state
        if state in FINAL_STATES:
            fields.setdefault("finished_at", time.time())
        self.tx.transition(tr.id, before, state, detail, **fields)
        tr.state = state
        if state in (State.SUBMITTING, State.SUBMITTED, State.RUNNING):
            self._flying.add(tr.id)
        else:
            self._flying.discard(tr.id)
        level = logging.WARNING if state in (State.FAILED, State.REJECTED) else logging.INFO
        log.log(
            level, "%s: %s -> %s: %s", tr.label, before, state, detail,
            extra={"fields": {"drop_id": tr.id, "rule": tr.rule, "path": tr.path,
                              "from": before, "to": state, "request_id": tr.request_id}},
        )  # fmt: skip
        if state in FINAL_STATES:
            tr.queued = False
            self.drops.pop(tr.id, None)
            self._on_final(tr)

    def _schedule_poll(self, tr: Tracked, when: float) -> None:
        heapq.heappush(self._polls, (when, next(self._seq), tr.id, tr.token))

    def _schedule_retry(self, tr: Tracked, now: float, action: str, delay: float) -> None:
        tr.token = next(self._tokens)
        heapq.heappush(self._retries, (now + delay, next(self._seq), tr.id, tr.token, action))

    # -- submitting -------------------------------------------------------------------

    def prepare(self, tr: Tracked, rule: Rule, drop: Drop) -> bool:
        """Build the archive body of a settled drop; a drop that cannot be archived is
        REJECTED with the reason, its files left where they are."""
        try:
            body = build_archive_body(rule, drop)
        except DropRefused as exc:
            self.move(tr, State.REJECTED, exc.reason, error=exc.reason)
            return False
        tr.body = body
        tr.object_name = body["objectName"]
        tr.collection = body["collectionName"]
        tr.priority = rule.priority
        tr.on_conflict = rule.on_conflict
        return True

    def start(self, tr: Tracked, now: float) -> Callable[[], None] | None:
        """The queued drop's next step: its intent now, its DIVA call once that commits."""
        tr.queued = False
        tr.token = next(self._tokens)
        assert tr.body is not None and tr.object_name and tr.collection is not None
        if tr.uncertain:
            # An earlier call may have reached DIVA: ask before sending another.
            self._flying.add(tr.id)
            name, collection, components = tr.object_name, tr.collection, tr.body["components"]
            token = tr.token
            since = None
            if tr.submitted_at is not None:
                since = datetime.fromtimestamp(tr.submitted_at, UTC)
            root = tr.body.get("filePathRoot")
            root = root if isinstance(root, str) and root else None
            size = tr.size
            return lambda: self.dispatcher.reconcile(
                tr.id, token, name, collection, components, since, root=root, size=size
            )
        tr.attempts += 1
        if tr.submitted_at is None:
            tr.submitted_at = time.time()
        self.move(
            tr, State.SUBMITTING,
            f"attempt {tr.attempts}: archiving as {tr.object_name!r} in {tr.collection!r}",
            attempts=tr.attempts, object_name=tr.object_name, collection=tr.collection,
            body=json.dumps(tr.body, sort_keys=True, ensure_ascii=False), error=None,
            submitted_at=tr.submitted_at,
        )  # fmt: skip
        tr.uncertain = True
        body, token = dict(tr.body), tr.token
        return lambda: self.dispatcher.submit(tr.id, token, body)

    def due(self, now: float) -> None:
        """Retries whose time has come go back to the queue (or to reconciliation)."""
        while self._retries and self._retries[0][0] <= now:
            _, _, drop_id, token, action = heapq.heappop(self._retries)
            tr = self.drops.get(drop_id)
            if tr is None or tr.token != token:
                continue
            if action == "poll":
                self._schedule_poll(tr, now)
            else:
                tr.queued = True
                self._requeue(tr)

    def send_polls(self, now: float) -> None:
        while self._polls and self._polls[0][0] <= now:
            _, _, drop_id, token = heapq.heappop(self._polls)
            tr = self.drops.get(drop_id)
            if tr is None or tr.token != token or tr.request_id is None:
                continue
            tr.token = next(self._tokens)
            self.dispatcher.poll(tr.id, tr.token, tr.request_id)

    # -- answers ----------------------------------------------------------------------

    def on_outcome(self, outcome: Outcome, now: float) -> None:
        tr = self.drops.get(outcome.drop_id)
        if tr is None or tr.token != outcome.token:
            return
        if outcome.kind == "submit":
            self._on_submit(tr, outcome, now)
        elif outcome.kind == "poll":
            self._on_poll(tr, outcome, now)
        elif outcome.kind == "reconcile":
            self._on_reconcile(tr, outcome, now)
        elif outcome.kind == "free_name":
            if outcome.error is not None:
                tr.checks += 1
                self._transient(tr, outcome.error, now, "looking for a free object name", tr.checks)
                return
            tr.checks = 0
            assert tr.body is not None
            old, tr.object_name = tr.object_name, str(outcome.value)
            tr.body["objectName"] = tr.object_name
            self._flying.discard(tr.id)
            why = tr.conflict or f"{old!r} exists in DIVA"
            self.move(tr, State.RETRY_WAIT,
                      f"{why}; archiving as {tr.object_name!r} (on_conflict = suffix)",
                      object_name=tr.object_name, next_attempt_at=time.time())  # fmt: skip
            tr.queued = True
            self._requeue(tr)

    def tx_update(self, tr: Tracked, **fields: Any) -> None:
        assert self.tx is not None
        self.tx.update(tr.id, **fields)

    def _on_submit(self, tr: Tracked, outcome: Outcome, now: float) -> None:
        error = outcome.error
        if error is None:
            tr.request_id = int(outcome.value)
            tr.uncertain = False
            self._outages = 0
            self.move(
                tr, State.SUBMITTED, f"DIVA accepted request {tr.request_id}",
                request_id=tr.request_id, status_code=None, status_name=None,
                abort_reason=None, diva_state=None, waiting_since=None, adopted=False,
            )  # fmt: skip
            tr.token = next(self._tokens)
            self._schedule_poll(tr, now + self.poll_seconds)
            return
        if isinstance(error, DivaObjectExists):
            if tr.attempts > 1:
                # Perhaps it is ours, from an attempt whose answer was lost.
                tr.uncertain = True
                tr.queued = True
                self._requeue(tr)
                return
            tr.uncertain = False
            self._conflict(tr, error.status_code, str(error))
            return
        if isinstance(error, DivaRefused) and not isinstance(error, DivaNotFound):
            # DIVA's own refusal with a permanent code (1008, 1017, 1018, 1035, 1037...):
            # the same body fails again, and DIVA created nothing.
            tr.uncertain = False
            self.move(tr, State.REJECTED, str(error), **_codes(error), error=str(error))
            return
        tr.uncertain = uncertain(error)
        self._transient(tr, error, now, "archiving", tr.attempts)

    def _transient(self, tr: Tracked, error: DivaError, now: float, doing: str, count: int) -> None:
        """A failure that may pass: wait and try again, or give up when ``count`` (the
        attempts, or the reconciliations, so far) reaches max_attempts: FAILED, files in
        place. An uncertain drop that gives up says that DIVA could not confirm it.

        DIVA being unreachable or refusing our login is DIVA's outage, not the drop's
        fault: it pauses every submission and never fails a drop by itself.
        """
        outage = isinstance(error, DivaAuthError) or (
            isinstance(error, DivaUnavailable) and _never_connected(error)
        )
        if outage:
            self._outages += 1
            delay = self._delay(self._outages, outage=True)
            if not self.paused(now):
                log.error("DIVA unavailable (%s); pausing submissions for %.0f s", error, delay)
            self._pause_until = max(self._pause_until, now + delay)
        elif count >= self.max_attempts:
            if tr.uncertain:
                message = (
                    f"{CANNOT_CONFIRM} whether it was archived, after {count} "
                    f"tries: {error}; its files are left in place, and it is not "
                    "submitted again blind (check DIVA, then `ingest retry`)"
                )
            else:
                message = f"gave up after {count} attempts: {error}"
            self.move(tr, State.FAILED, message, **_codes(error), error=message)
            return
        else:
            delay = self._delay(tr.attempts)
        when = time.time() + delay
        why = f"{doing} failed ({error})"
        if tr.uncertain:
            why += "; waiting to confirm with DIVA before anything is sent again"
        self.move(
            tr, State.RETRY_WAIT, f"{why}; next attempt in {delay:.0f} s",
            next_attempt_at=when, error=why, **_codes(error),
        )  # fmt: skip
        self._schedule_retry(tr, now, "submit", delay)

    def _delay(self, attempt: int, *, outage: bool = False) -> float:
        if outage:
            base = defaults.ENGINE_OUTAGE_BACKOFF_SECONDS
            cap = defaults.ENGINE_OUTAGE_BACKOFF_MAX_SECONDS
        else:
            base = defaults.ENGINE_RETRY_BACKOFF_SECONDS
            cap = defaults.ENGINE_RETRY_BACKOFF_MAX_SECONDS
        return backoff_seconds(attempt, base, cap, self.rng)

    def _conflict(self, tr: Tracked, code: int | None, why: str) -> None:
        if tr.on_conflict == "skip":
            self.move(tr, State.SKIPPED, f"{why} (on_conflict = skip)", status_code=code)
        elif tr.on_conflict == "suffix":
            assert tr.object_name and tr.collection is not None
            tr.conflict = why
            tr.token = next(self._tokens)
            self._flying.add(tr.id)
            self.dispatcher.free_name(tr.id, tr.token, tr.object_name, tr.collection)
        else:
            message = f"{why} (on_conflict = fail: rename it, or retry once DIVA's copy is gone)"
            self.move(tr, State.REJECTED, message, status_code=code,
                      status_name="DIVA_ERR_OBJECT_ALREADY_EXISTS", error=message)  # fmt: skip

    def _on_poll(self, tr: Tracked, outcome: Outcome, now: float) -> None:
        error = outcome.error
        if error is None:
            self.apply(tr, outcome.value, now)
            return
        if isinstance(error, DivaNotFound):
            # DIVA forgot the request (restarted, or it left the queue): ask about the object.
            tr.uncertain = True
            tr.queued = True
            self._requeue(tr)
            return
        log.warning("%s: polling request %s failed: %s", tr.label, tr.request_id, error)
        tr.token = next(self._tokens)
        self._schedule_poll(tr, now + self.poll_seconds)

    def apply(self, tr: Tracked, info: RequestInfo, now: float) -> None:
        """DIVA's word on a request: running, or finished one way or another."""
        state = info.state
        codes = {"diva_state": state.wire_name, "progress": info.progress,
                 "status_code": info.status_code, "status_name": info.status_name,
                 "abort_reason": info.abort_reason}  # fmt: skip
        if not state.finished:
            # A request DIVA keeps waiting is timed from when it began to wait, so that
            # `ingest status` can call it stuck; it is never resubmitted for that.
            if state.waiting:
                codes["waiting_since"] = tr.waiting_since = tr.waiting_since or time.time()
            else:
                codes["waiting_since"] = tr.waiting_since = None
            if tr.state != State.RUNNING:
                self.move(tr, State.RUNNING, f"DIVA: {state.description} ({info.progress}%)",
                          **codes)  # fmt: skip
            elif (tr.diva_state, tr.progress) != (state.wire_name, info.progress):
                self.tx_update(tr, **codes)
            tr.diva_state, tr.progress = state.wire_name, info.progress
            tr.token = next(self._tokens)
            self._schedule_poll(tr, now + self.poll_seconds)
            return
        codes["waiting_since"] = tr.waiting_since = None
        if state is RequestState.COMPLETED and tr.adopted:
            # A request found by its object's name may be another's: only the object it
            # made, holding our files, proves it was ours.
            tr.adopted, tr.uncertain = False, True
            self.move(tr, State.RETRY_WAIT,
                      f"DIVA completed request {info.request_id}; checking the object is ours",
                      next_attempt_at=time.time(), adopted=False, **codes)  # fmt: skip
            tr.queued = True
            self._requeue(tr)
            return
        if state is RequestState.COMPLETED:
            self.complete(tr, f"DIVA completed request {info.request_id}", **codes)
            return
        reason = info.abort_reason or "no abort reason"
        what = f"DIVA {state.description.lower()} request {info.request_id}: {reason}"
        if info.abort_description:
            what += f" ({info.abort_description})"
        if info.status_code is not None and info.status_code not in (1000, 1019):
            what += f", {info.status_name or 'status'} ({info.status_code})"
        late = info.status_code is not None and code_kind(info.status_code) is CodeKind.CONFLICT
        if state is RequestState.ABORTED and late:
            # A conflict DIVA found only when it ran the request: is that object ours
            # (an earlier attempt's), another's, or gone? Reconcile, then on_conflict.
            tr.uncertain = True
            tr.late_conflict = info.status_code
            self.move(tr, State.RETRY_WAIT, f"{what}; asking DIVA whose object it is",
                      next_attempt_at=time.time(), error=what, **codes)  # fmt: skip
            tr.queued = True
            self._requeue(tr)
            return
        if state is RequestState.PARTIALLY_ABORTED:
            remain = [p for p in tr.sources() if os.path.lexists(p)]
            names = ", ".join(os.path.relpath(p, tr.watch) for p in remain[:10])
            more = f" and {len(remain) - 10} more" if len(remain) > 10 else ""
            what += f"; {len(remain)} of {len(tr.sources())} file(s) remain in the drop folder" + (
                f": {names}{more}" if remain else ""
            )
            self.move(tr, State.FAILED, what, error=what, **codes)
            return
        retry = (
            state is RequestState.ABORTED
            and info.abort_reason in TRANSIENT_ABORT_REASONS
            and tr.attempts < self.max_attempts
        )
        if retry:
            tr.uncertain = False
            delay = self._delay(tr.attempts)
            self.move(tr, State.RETRY_WAIT, f"{what}; trying again in {delay:.0f} s",
                      next_attempt_at=time.time() + delay, error=what, **codes)  # fmt: skip
            self._schedule_retry(tr, now, "submit", delay)
            return
        self.move(tr, State.FAILED, what, error=what, **codes)

    def complete(self, tr: Tracked, detail: str, **fields: Any) -> None:
        """COMPLETED: check (never do) the deletion DIVA was asked for, and record it."""
        present = [p for p in tr.sources() if os.path.lexists(p)]
        deleted = tr.source_deleted = not present
        asked = bool(tr.body and int(tr.body.get("qos", 0)) & DELETE_ON_SOURCE)
        if asked and present:
            log.warning("%s: archived, but DIVA left %d source file(s) in place, e.g. %s",
                        tr.label, len(present), Path(present[0]).name)  # fmt: skip
            detail += f"; {len(present)} source file(s) still present"
        elif asked:
            detail += "; DIVA deleted the source"
        self.move(tr, State.COMPLETED, detail, finished_at=time.time(), source_deleted=deleted,
                  error=None, **fields)  # fmt: skip

    def _on_reconcile(self, tr: Tracked, outcome: Outcome, now: float) -> None:
        self._flying.discard(tr.id)
        if outcome.error is not None:
            tr.checks += 1
            self._transient(tr, outcome.error, now, "asking DIVA about the object", tr.checks)
            return
        tr.checks = 0
        found: Reconciled = outcome.value
        late, tr.late_conflict = tr.late_conflict, None
        if found.found == "request":
            assert found.info is not None
            tr.request_id = found.info.request_id
            tr.uncertain = False
            tr.adopted = True
            self.move(tr, State.SUBMITTED, f"reconciled: {found.detail}",
                      request_id=tr.request_id, adopted=True)  # fmt: skip
            self.apply(tr, found.info, now)
            return
        if found.found == "object":
            tr.uncertain = False
            self.complete(tr, f"reconciled: {found.detail}")
            return
        if found.found == "conflict":
            tr.uncertain = False
            self._conflict(tr, late or (1040 if found.info else 1016), found.detail)
            return
        # DIVA says it has nothing for the drop, so no earlier call of ours reached it.
        tr.uncertain = False
        present = [p for p in tr.sources() if os.path.lexists(p)]
        if not present:
            # Only DIVA may delete a drop's files, and it says it has not archived them:
            # not SKIPPED (that would hide it), but FAILED for a person to look at.
            why = f"reconciled: {found.detail}, and its files are gone from the drop folder"
            self.move(tr, State.FAILED, why, error=why)
            return
        if tr.attempts >= self.max_attempts:
            why = f"reconciled: {found.detail}; gave up after {tr.attempts} attempts"
            self.move(tr, State.FAILED, why, error=why)
            return
        if tr.state != State.RETRY_WAIT:
            self.move(tr, State.RETRY_WAIT, f"reconciled: {found.detail}; submitting again",
                      next_attempt_at=time.time())  # fmt: skip
        tr.queued = True
        self._requeue(tr)


def _codes(error: DivaError) -> dict[str, Any]:
    return {"status_code": error.status_code, "status_name": error.status_name}
