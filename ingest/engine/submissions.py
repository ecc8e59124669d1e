"""The DIVA side of the engine: intents, answers, polls, retries, reconciliation."""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import defaults
from ..client import RequestInfo
from ..errors import (
    CANNOT_CONFIRM,
    DivaAuthError,
    DivaError,
    DivaNotFound,
    DivaObjectExists,
    DivaRefused,
    DivaUnavailable,
)
from ..ledger import FINAL_STATES, Batch, State
from ..protocol import DELETE_ON_SOURCE, TRANSIENT_ABORT_REASONS, CodeKind, RequestState, code_kind
from ..rules import Rule
from ..templates import Drop, Kind
from .dispatch import Dispatcher, Outcome, Reconciled, _never_connected, backoff_seconds, uncertain

__all__ = ["Tracked", "Tracker"]

log = logging.getLogger("ingest.engine.submissions")


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
    body_json: str | None = None  # ``body`` as the ledger stores it
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
            body_json=row["body"] if body else None,
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

    def set_body(self, body: dict[str, Any]) -> None:
        """The archive request's body, serialized once for every ledger write of it."""
        self.body = body
        self.body_json = json.dumps(body, sort_keys=True, ensure_ascii=False)
        self.object_name = body["objectName"]
        self.collection = body["collectionName"]


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
            body=tr.body_json, error=None,
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
            old = tr.object_name
            tr.set_body({**tr.body, "objectName": str(outcome.value)})
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
