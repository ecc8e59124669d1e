"""The DIVA side of a drop's life: queued, submitted, polled, retried, reconciled, finished.

The :class:`Tracker` holds every live drop once, by its key, and owns what happens to it at
DIVA: the ready queue in rule priority order, the capacity left under ``max_in_flight``
(one count, of the drops holding a place at DIVA), polls, retries with backoff, outage
pauses, and what each :class:`~.dispatch.Outcome` means for the drop.

It writes transitions through the :class:`~.dispatch.Turn` it is handed (the engine's open
ledger transaction), and never calls DIVA or touches a file itself: a call it decides on
is put on the turn as a :class:`~.dispatch.Job`, which the engine runs only after the
turn's commit. The ledger is written by the engine's thread only, through these turns;
``ingest retry`` is the one other writer (the engine picks its rows up).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from .. import defaults
from ..client import RequestInfo
from ..drop import absent
from ..errors import (
    CANNOT_CONFIRM,
    DivaAuthError,
    DivaBusy,
    DivaError,
    DivaNotFound,
    DivaObjectExists,
    DivaRefused,
    DivaUnavailable,
)
from ..ledger import FINAL_STATES, State
from ..protocol import DELETE_ON_SOURCE, TRANSIENT_ABORT_REASONS, CodeKind, RequestState, code_kind
from . import dispatch
from .dispatch import (
    Checked,
    Key,
    Outcome,
    Polled,
    Reconciled,
    Renamed,
    Submitted,
    Turn,
    backoff_seconds,
    never_connected,
    uncertain,
)
from .drops import Asking, Tracked
from .schedule import IN_FLIGHT, Schedule

__all__ = ["Schedule", "Tracker"]  # Schedule: re-exported from .schedule

log = logging.getLogger("ingest.engine")


class Tracker:
    """Every live drop, and its life at DIVA. Used from the engine's thread only."""

    def __init__(
        self,
        *,
        poll_seconds: float,
        max_attempts: int,
        max_in_flight: int,
        rng: random.Random,
        on_final: Callable[[Turn, Tracked], None],
        wall: Callable[[], float] = time.time,
        starts_per_turn: int = defaults.ENGINE_STARTS_PER_TURN,
    ) -> None:
        self.poll_seconds = poll_seconds
        #: queued drops started in one turn at most (the rest wait for the next turn, which
        #: the schedule makes due at once): the turn's intents commit, and their calls
        #: leave, while later drops' intents are still to be written
        self.starts_per_turn = max(1, starts_per_turn)
        #: epoch seconds for the ledger's timestamps (``turn.now`` is monotonic, for the
        #: schedule); a parameter so that unit tests can hold time still
        self.wall = wall
        self.max_attempts = max_attempts
        self.rng = rng
        self._on_final = on_final  # the engine's own bookkeeping of a finished drop
        self.drops: dict[Key, Tracked] = {}
        self.schedule = Schedule(max_in_flight)
        self._tokens = itertools.count(1)  # never reset: stale answers stay recognisable
        self._outages = 0
        self._busy = 0  # DIVA's queue-full answers since it last took a request

    def __repr__(self) -> str:
        return f"<Tracker live={len(self.drops)} {self.schedule!r}>"

    def __contains__(self, key: object) -> bool:
        return key in self.drops

    def reset(self) -> None:
        self.drops.clear()
        self.schedule.clear()

    def awaiting(self) -> bool:
        """Whether DIVA's answer to some call is still to come."""
        return any(tr.asking for tr in self.drops.values())

    # -- taking drops in --------------------------------------------------------------

    def hold(self, tr: Tracked) -> None:
        """Hold a drop not yet at DIVA's (settling, or to be settled again)."""
        self.drops[tr.key] = tr

    def resume(self, tr: Tracked, now: float) -> None:
        """Hold a drop read back from the ledger, and give it its next step at DIVA."""
        self.drops[tr.key] = tr
        if tr.state in IN_FLIGHT and tr.request_id is not None:
            self.schedule.poll_at(tr, now)
        elif tr.state in IN_FLIGHT:
            tr.uncertain = True  # its call may have reached DIVA: reconcile first
            self.queue(tr)
        elif tr.state == State.RETRY_WAIT:
            tr.uncertain = tr.attempts > 0
            self._retry(tr, now + max(0.0, (tr.next_attempt_at or 0.0) - self.wall()))
        self.schedule.account(tr)

    def queue(self, tr: Tracked) -> None:
        """Queue a drop for its next call: a submit, or a reconcile when uncertain."""
        tr.queued = True
        self.schedule.ready(tr)

    def move(self, turn: Turn, tr: Tracked, state: str, detail: str, **fields: Any) -> None:
        """Record a transition in the ledger and log it, one line per transition."""
        before = tr.state
        if state in FINAL_STATES:
            fields.setdefault("finished_at", self.wall())
        turn.tx.transition(tr.id, before, state, detail, **fields)
        tr.state = state
        self.schedule.account(tr)
        level = logging.WARNING if state in (State.FAILED, State.REJECTED) else logging.INFO
        log.log(
            level, "%s: %s -> %s: %s", tr.label, before, state, detail,
            extra={"fields": {"drop_id": tr.id, "rule": tr.rule, "path": tr.path,
                              "from": before, "to": state, "request_id": tr.request_id}},
        )  # fmt: skip
        if state in FINAL_STATES:
            tr.queued = False
            if self.drops.get(tr.key) is tr:
                del self.drops[tr.key]
            self._on_final(turn, tr)

    def _live(self, tr: Tracked, token: int | None = None) -> bool:
        """Whether ``tr`` is still the drop held at its key (and ``token`` its latest job)."""
        return self.drops.get(tr.key) is tr and (token is None or token == tr.token)

    def _poll(self, tr: Tracked, when: float) -> None:
        tr.token = next(self._tokens)
        self.schedule.poll_at(tr, when)

    def _retry(self, tr: Tracked, when: float) -> None:
        tr.token = next(self._tokens)
        self.schedule.retry_at(tr, when)

    def _ask(self, tr: Tracked, asking: Asking) -> int:
        """``tr`` awaits the answer to a new job; returns the job's token."""
        tr.token = next(self._tokens)
        tr.asking = asking
        self.schedule.account(tr)
        return tr.token

    # -- a turn's calls ---------------------------------------------------------------

    def short_of_places(self, now: float) -> bool:
        """Whether drops wait for a place at DIVA: queued, and ``max_in_flight`` taken (or
        DIVA out, which gives no place)."""
        return self.schedule.has_ready and self.schedule.capacity(now) <= 0

    def advance(self, turn: Turn, still_there: Callable[[Turn, Tracked], bool]) -> None:
        """Retries whose time has come join the queue; queued drops start as capacity
        allows (once ``still_there`` has checked their files); due polls go out."""
        for due, token in self.schedule.due_retries(turn.now):
            if self._live(due, token):
                self.queue(due)
        if not self.schedule.paused(turn.now):
            while (tr := self.schedule.next_held()) is not None:
                if self._live(tr) and tr.queued and still_there(turn, tr):
                    self._start(turn, tr)
        capacity = min(self.schedule.capacity(turn.now), self.starts_per_turn)
        while capacity > 0 and (tr := self.schedule.next_ready()) is not None:
            if self._live(tr) and tr.queued and still_there(turn, tr):
                self._start(turn, tr)
                capacity -= 1
        for due, token in self.schedule.due_polls(turn.now):
            if self._live(due, token) and due.request_id is not None:
                turn.calls.append(dispatch.poll(due.key, self._ask(due, "poll"), due.request_id))

    def _start(self, turn: Turn, tr: Tracked) -> None:
        """The queued drop's next call: its intent now, the call once the turn commits."""
        tr.queued = False
        assert tr.body is not None and tr.object_name and tr.collection is not None
        if tr.uncertain:
            # An earlier call may have reached DIVA: ask before sending another.
            since = None
            if tr.submitted_at is not None:
                since = datetime.fromtimestamp(tr.submitted_at, UTC)
            root = tr.body.get("filePathRoot")
            # The drop's size is its files' (a sidecar archived with it is not counted):
            # DIVA's total can be held against it only when the components are those files.
            components = tr.body["components"]
            size = tr.size if len(components) == (tr.file_count or 1) else None
            turn.calls.append(dispatch.check(
                tr.key, self._ask(tr, "check"), tr.object_name, tr.collection,
                components, since, size=size,
                root=root if isinstance(root, str) and root else None,
            ))  # fmt: skip
            return
        if tr.conflict:
            # A search for a free name failed and its wait is over: search again.
            turn.calls.append(dispatch.rename(
                tr.key, self._ask(tr, "rename"), tr.object_name, tr.collection))  # fmt: skip
            return
        tr.attempts += 1
        if tr.submitted_at is None:
            tr.submitted_at = self.wall()
        self.move(
            turn, tr, State.SUBMITTING,
            f"attempt {tr.attempts}: archiving as {tr.object_name!r} in {tr.collection!r}",
            attempts=tr.attempts, object_name=tr.object_name, collection=tr.collection,
            body=tr.body_json, error=None, submitted_at=tr.submitted_at,
        )  # fmt: skip
        tr.uncertain = True
        turn.calls.append(dispatch.archive(tr.key, self._ask(tr, "submit"), dict(tr.body)))

    # -- answers ----------------------------------------------------------------------

    def on_outcome(self, turn: Turn, outcome: Outcome[Any]) -> None:
        """What DIVA's answer means for its drop (stale answers are ignored)."""
        tr = self.drops.get(outcome.key)
        if tr is None or tr.token != outcome.token:
            return
        tr.asking = ""
        self.schedule.account(tr)
        match outcome:
            case Submitted():
                self._on_submit(turn, tr, outcome.result)
            case Polled():
                self._on_poll(turn, tr, outcome.result)
            case Checked():
                self._on_check(turn, tr, outcome.result)
            case Renamed():
                self._on_rename(turn, tr, outcome.result)

    def _on_submit(self, turn: Turn, tr: Tracked, result: int | DivaError) -> None:
        if not isinstance(result, DivaError):
            tr.request_id = result
            tr.uncertain = False
            self._outages = 0
            self._busy = 0
            self.move(
                turn, tr, State.SUBMITTED, f"DIVA accepted request {tr.request_id}",
                request_id=tr.request_id, status_code=None, status_name=None,
                abort_reason=None, diva_state=None, waiting_since=None, adopted=False,
            )  # fmt: skip
            self._poll(tr, turn.now + self.poll_seconds)
            return
        if isinstance(result, DivaObjectExists):
            if tr.attempts > 1:
                # Perhaps it is ours, from an attempt whose answer was lost.
                tr.uncertain = True
                self.queue(tr)
                return
            tr.uncertain = False
            self._conflict(turn, tr, result.status_code, str(result))
            return
        if isinstance(result, DivaRefused) and not isinstance(result, DivaNotFound):
            # DIVA's own refusal with a permanent code (1008, 1017, 1018, 1035, 1037...):
            # the same body fails again, and DIVA created nothing.
            tr.uncertain = False
            self.move(turn, tr, State.REJECTED, str(result), **_codes(result), error=str(result))
            return
        if isinstance(result, DivaBusy):
            tr.uncertain = False
            self._queue_full(turn, tr, result)
            return
        tr.uncertain = uncertain(result)
        # A call that may have reached DIVA is never the end of the drop, even on its last
        # attempt: DIVA is asked first (the reconciliations have their own count).
        self._transient(turn, tr, result, "archiving", tr.checks if tr.uncertain else tr.attempts)

    def _transient(self, turn: Turn, tr: Tracked, error: DivaError, doing: str, count: int) -> None:
        """A failure that may pass: wait and try again, or give up when ``count`` (the
        attempts, or the reconciliations, so far) reaches max_attempts: FAILED, files in
        place. An uncertain drop that gives up says that DIVA could not confirm it.

        DIVA being unreachable or refusing our login is DIVA's outage, not the drop's
        fault: it pauses every submission and never fails a drop by itself.
        """
        now = turn.now
        outage = isinstance(error, DivaAuthError) or (
            isinstance(error, DivaUnavailable) and never_connected(error)
        )
        if outage:
            self._outages += 1
            delay = _backoff(self._outages, self.rng, "outage")
            if not self.schedule.paused(now):
                log.error("DIVA unavailable (%s); pausing submissions for %.0f s", error, delay)
            self.schedule.pause(now + delay)
        elif count >= self.max_attempts:
            if tr.uncertain:
                message = (
                    f"{CANNOT_CONFIRM} whether it was archived, after {count} "
                    f"tries: {error}; its files are left in place, and it is not "
                    "submitted again blind (check DIVA, then `ingest retry`)"
                )
            else:
                message = f"gave up after {count} attempts: {error}"
            self.move(turn, tr, State.FAILED, message, **_codes(error), error=message)
            return
        else:
            delay = _backoff(tr.attempts, self.rng)
        why = f"{doing} failed ({error})"
        if tr.uncertain:
            why += "; waiting to confirm with DIVA before anything is sent again"
        self.move(
            turn, tr, State.RETRY_WAIT, f"{why}; next attempt in {delay:.0f} s",
            next_attempt_at=self.wall() + delay, error=why, **_codes(error),
        )  # fmt: skip
        self._retry(tr, now + delay)

    def _queue_full(self, turn: Turn, tr: Tracked, error: DivaBusy) -> None:
        """DIVA's queue is full (1032): DIVA's state, not the drop's, as an outage is.

        DIVA created nothing, so the drop waits to be sent again without spending an
        attempt: a queue that stays full for an hour fails no drop. No drop is sent until
        DIVA has had time to take more (the hold doubles while it keeps saying so), rather
        than each ready drop being refused in turn; polls go on, as they free places.
        """
        now = turn.now
        if not self.schedule.paused(now):
            self._busy += 1
            hold = _backoff(self._busy, self.rng, "busy")
            log.warning("DIVA's queue is full (%s); holding submissions for %.0f s", error, hold)
            self.schedule.pause(now + hold)
        delay = max(0.0, self.schedule.pause_until - now)
        tr.attempts -= 1
        why = f"archiving refused: {error}"
        self.move(
            turn, tr, State.RETRY_WAIT,
            f"{why}; sent again once DIVA takes more, in {delay:.0f} s (not an attempt)",
            attempts=tr.attempts, next_attempt_at=self.wall() + delay, error=why,
            **_codes(error),
        )  # fmt: skip
        self._retry(tr, now + delay)

    def _conflict(self, turn: Turn, tr: Tracked, code: int | None, why: str) -> None:
        if tr.on_conflict == "skip":
            self.move(turn, tr, State.SKIPPED, f"{why} (on_conflict = skip)", status_code=code)
        elif tr.on_conflict == "suffix":
            assert tr.object_name and tr.collection is not None
            tr.conflict = why
            token = self._ask(tr, "rename")
            turn.calls.append(dispatch.rename(tr.key, token, tr.object_name, tr.collection))
        else:
            message = f"{why} (on_conflict = fail: rename it, or retry once DIVA's copy is gone)"
            self.move(turn, tr, State.REJECTED, message, status_code=code,
                      status_name="DIVA_ERR_OBJECT_ALREADY_EXISTS", error=message)  # fmt: skip

    def _on_rename(self, turn: Turn, tr: Tracked, result: str | DivaError) -> None:
        if isinstance(result, DivaRefused) and not isinstance(result, DivaNotFound):
            # Every candidate name is taken (or DIVA refuses the question): the same
            # search fails again, so the drop ends here, its files in place.
            message = (f"{tr.conflict or 'the object name is taken'}; {result} "
                       "(on_conflict = suffix: free a name, or rename the drop)")  # fmt: skip
            self.move(turn, tr, State.REJECTED, message, **_codes(result), error=message)
            return
        if isinstance(result, DivaError):
            # The search may pass; it is asked again (not the archive under the taken
            # name), counted apart from reconciliations, which reset their own count.
            tr.renames += 1
            self._transient(turn, tr, result, "looking for a free object name", tr.renames)
            return
        tr.renames = 0
        assert tr.body is not None
        old = tr.object_name
        tr.set_body({**tr.body, "objectName": result})
        why, tr.conflict = tr.conflict or f"{old!r} exists in DIVA", ""
        self.move(turn, tr, State.RETRY_WAIT,
                  f"{why}; archiving as {tr.object_name!r} (on_conflict = suffix)",
                  object_name=tr.object_name, next_attempt_at=self.wall())  # fmt: skip
        self.queue(tr)

    def _on_poll(self, turn: Turn, tr: Tracked, result: RequestInfo | DivaError) -> None:
        if not isinstance(result, DivaError):
            self._apply(turn, tr, result)
            return
        if isinstance(result, DivaNotFound):
            # DIVA forgot the request (restarted, or it left the queue): ask about the object.
            tr.uncertain = True
            self.queue(tr)
            return
        log.warning("%s: polling request %s failed: %s", tr.label, tr.request_id, result)
        self._poll(tr, turn.now + self.poll_seconds)

    def _apply(self, turn: Turn, tr: Tracked, info: RequestInfo) -> None:
        """DIVA's word on a request: running, or finished one way or another."""
        state = info.state
        codes = {"diva_state": state.wire_name, "progress": info.progress,
                 "status_code": info.status_code, "status_name": info.status_name,
                 "abort_reason": info.abort_reason}  # fmt: skip
        if not state.finished:
            # A request DIVA keeps waiting is timed from when it began to wait, so that
            # `ingest status` can call it stuck; it is never resubmitted for that.
            if state.waiting:
                codes["waiting_since"] = tr.waiting_since = tr.waiting_since or self.wall()
            else:
                codes["waiting_since"] = tr.waiting_since = None
            if tr.state != State.RUNNING:
                self.move(turn, tr, State.RUNNING,
                          f"DIVA: {state.description} ({info.progress}%)", **codes)  # fmt: skip
            elif (tr.diva_state, tr.progress) != (state.wire_name, info.progress):
                turn.tx.update(tr.id, **codes)
            tr.diva_state, tr.progress = state.wire_name, info.progress
            self._poll(tr, turn.now + self.poll_seconds)
            return
        codes["waiting_since"] = tr.waiting_since = None
        if state is RequestState.COMPLETED and tr.adopted:
            # A request found by its object's name may be another's: only the object it
            # made, holding our files, proves it was ours.
            tr.adopted, tr.uncertain = False, True
            self.move(turn, tr, State.RETRY_WAIT,
                      f"DIVA completed request {info.request_id}; checking the object is ours",
                      next_attempt_at=self.wall(), adopted=False, **codes)  # fmt: skip
            self.queue(tr)
            return
        if state is RequestState.COMPLETED:
            self._complete(turn, tr, f"DIVA completed request {info.request_id}", **codes)
            return
        what = _ended(info)
        late = info.status_code is not None and code_kind(info.status_code) is CodeKind.CONFLICT
        if state is RequestState.ABORTED and late:
            # A conflict DIVA found only when it ran the request: is that object ours
            # (an earlier attempt's), another's, or gone? Reconcile, then on_conflict.
            tr.uncertain = True
            tr.late_conflict = info.status_code
            self.move(turn, tr, State.RETRY_WAIT, f"{what}; asking DIVA whose object it is",
                      next_attempt_at=self.wall(), error=what, **codes)  # fmt: skip
            self.queue(tr)
            return
        if state is RequestState.PARTIALLY_ABORTED:
            what += "; " + _remaining(tr)
            self.move(turn, tr, State.FAILED, what, error=what, **codes)
            return
        retry = (
            state is RequestState.ABORTED
            and info.abort_reason in TRANSIENT_ABORT_REASONS
            and tr.attempts < self.max_attempts
        )
        if retry:
            tr.uncertain = False
            delay = _backoff(tr.attempts, self.rng)
            self.move(turn, tr, State.RETRY_WAIT, f"{what}; trying again in {delay:.0f} s",
                      next_attempt_at=self.wall() + delay, error=what, **codes)  # fmt: skip
            self._retry(tr, turn.now + delay)
            return
        self.move(turn, tr, State.FAILED, what, error=what, **codes)

    def _complete(self, turn: Turn, tr: Tracked, detail: str, **fields: Any) -> None:
        """COMPLETED: check (never do) the deletion DIVA was asked for, and record it."""
        # A file this user cannot look at (its folder's mode, a share's error) is not
        # deleted: taken for deleted, its path would be forgotten, and the file archived
        # again as a new drop once it is seen again.
        present = [p for p in tr.sources() if not absent(p)]
        deleted = tr.source_deleted = not present
        asked = bool(tr.body and int(tr.body.get("qos", 0)) & DELETE_ON_SOURCE)
        if asked and present:
            hidden = {p for p in present if not os.path.lexists(p)}
            if hidden:
                log.warning("%s: archived, but %d source file(s) could not be looked at "
                            "(the folder's permissions, or the share), e.g. %s: not taken "
                            "for deleted", tr.label, len(hidden),
                            Path(min(hidden)).name)  # fmt: skip
                detail += f"; {len(hidden)} source file(s) could not be looked at"
            if len(present) > len(hidden):
                left = [p for p in present if p not in hidden]
                log.warning("%s: archived, but DIVA left %d source file(s) in place, e.g. %s",
                            tr.label, len(left), Path(left[0]).name)  # fmt: skip
                detail += f"; {len(left)} source file(s) still present"
        elif asked:
            detail += "; DIVA deleted the source"
        self.move(turn, tr, State.COMPLETED, detail, finished_at=self.wall(),
                  source_deleted=deleted, error=None, **fields)  # fmt: skip

    def _on_check(self, turn: Turn, tr: Tracked, result: Reconciled | DivaError) -> None:
        if isinstance(result, DivaError):
            tr.checks += 1
            self._transient(turn, tr, result, "asking DIVA about the object", tr.checks)
            return
        tr.checks = 0
        late, tr.late_conflict = tr.late_conflict, None
        if result.found == "request":
            assert result.info is not None
            tr.request_id = result.info.request_id
            tr.uncertain = False
            tr.adopted = True
            self.move(turn, tr, State.SUBMITTED, f"reconciled: {result.detail}",
                      request_id=tr.request_id, adopted=True)  # fmt: skip
            self._apply(turn, tr, result.info)
            return
        if result.found == "object":
            tr.uncertain = False
            self._complete(turn, tr, f"reconciled: {result.detail}")
            return
        if result.found == "conflict":
            tr.uncertain = False
            self._conflict(turn, tr, late or (1040 if result.info else 1016), result.detail)
            return
        # DIVA says it has nothing for the drop, so no earlier call of ours reached it.
        tr.uncertain = False
        present = [p for p in tr.sources() if not absent(p)]
        if not present:
            # Only DIVA may delete a drop's files, and it says it has not archived them:
            # not SKIPPED (that would hide it), but FAILED for a person to look at.
            why = f"reconciled: {result.detail}, and its files are gone from the drop folder"
            self.move(turn, tr, State.FAILED, why, error=why)
            return
        if tr.attempts >= self.max_attempts:
            why = f"reconciled: {result.detail}; gave up after {tr.attempts} attempts"
            self.move(turn, tr, State.FAILED, why, error=why)
            return
        if tr.state != State.RETRY_WAIT:
            self.move(turn, tr, State.RETRY_WAIT,
                      f"reconciled: {result.detail}; submitting again",
                      next_attempt_at=self.wall())  # fmt: skip
        self.queue(tr)


def _backoff(
    attempt: int, rng: random.Random, kind: Literal["drop", "outage", "busy"] = "drop"
) -> float:
    """How long to wait before the next try: after a drop's failure (``drop``), while
    DIVA is out (``outage``), or while its queue is full (``busy``)."""
    base, cap = {
        "drop": (defaults.ENGINE_RETRY_BACKOFF_SECONDS, defaults.ENGINE_RETRY_BACKOFF_MAX_SECONDS),
        "outage": (
            defaults.ENGINE_OUTAGE_BACKOFF_SECONDS,
            defaults.ENGINE_OUTAGE_BACKOFF_MAX_SECONDS,
        ),
        "busy": (defaults.ENGINE_BUSY_BACKOFF_SECONDS, defaults.ENGINE_BUSY_BACKOFF_MAX_SECONDS),
    }[kind]
    return backoff_seconds(attempt, base, cap, rng)


def _codes(error: DivaError) -> dict[str, Any]:
    return {"status_code": error.status_code, "status_name": error.status_name}


def _ended(info: RequestInfo) -> str:
    """How DIVA ended a request that did not complete, in its own words."""
    reason = info.abort_reason or "no abort reason"
    what = f"DIVA {info.state.description.lower()} request {info.request_id}: {reason}"
    if info.abort_description:
        what += f" ({info.abort_description})"
    if info.status_code is not None and info.status_code not in (1000, 1019):
        what += f", {info.status_name or 'status'} ({info.status_code})"
    return what


def _remaining(tr: Tracked) -> str:
    """Which of the drop's files are still in its folder (DIVA deleted the others)."""
    sources = tr.sources()
    remain = [p for p in sources if not absent(p)]
    names = ", ".join(os.path.relpath(p, tr.watch) for p in remain[:10])
    more = f" and {len(remain) - 10} more" if len(remain) > 10 else ""
    listed = f": {names}{more}" if remain else ""
    return f"{len(remain)} of {len(sources)} file(s) remain in the drop folder{listed}"
