"""The Tracker's branches, driven directly: no emulator, no threads, no waiting.

A fake dispatcher records the :class:`~ingest.engine.dispatch.Job` each turn decides on,
the test answers it with a typed :class:`~ingest.engine.dispatch.Outcome`, and both clocks
(the monotonic ``turn.now`` and the wall clock the ledger's timestamps come from) are the
test's. Transitions go to a real SQLite ledger, one per module (opening one costs more
than all the tests together), each test reading only the drops it made.

The end-to-end tests (``test_engine*.py``) stay the integration layer: these pin what each
(outcome x error class x attempts x on_conflict) combination means for a drop.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest import defaults
from ingest.client import RequestInfo
from ingest.drop import Drop, Kind
from ingest.engine.dispatch import (
    Checked,
    Job,
    Outcome,
    Polled,
    Reconciled,
    Renamed,
    Submitted,
    Turn,
)
from ingest.engine.drops import Tracked
from ingest.engine.submissions import Tracker
from ingest.errors import (
    CANNOT_CONFIRM,
    DivaAccessDenied,
    DivaAuthError,
    DivaBusy,
    DivaError,
    DivaNotFound,
    DivaObjectExists,
    DivaProtocolError,
    DivaRefused,
    DivaServerError,
    DivaUnavailable,
    DivaUnconfirmed,
)
from ingest.ledger import Ledger, State
from ingest.protocol import DELETE_ON_SOURCE, RequestState

WALL0 = 1_800_000_000.0  # epoch seconds at the start of every test
MONO0 = 500.0  # monotonic seconds at the start of every test
RETRY = defaults.ENGINE_RETRY_BACKOFF_SECONDS
BUSY = defaults.ENGINE_BUSY_BACKOFF_SECONDS
OUTAGE = defaults.ENGINE_OUTAGE_BACKOFF_SECONDS

_paths = itertools.count(1)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    db = tmp_path_factory.mktemp("tracker") / "ledger.db"
    led = Ledger.open(f"sqlite:///{db}")
    yield led
    led.close()


class Recorder:
    """A stand-in DIVA client that notes the first call a job makes, then stops it."""

    class Stop(Exception):
        pass

    def __init__(self) -> None:
        self.call: tuple[str, tuple[Any, ...], dict[str, Any]] | None = None

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def record(*args: Any, **kwargs: Any) -> Any:
            self.call = (name, args, kwargs)
            raise Recorder.Stop

        return record


def asked(job: Job[Any]) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """The DIVA call ``job`` would make: (client method, args, kwargs)."""
    rec = Recorder()
    with pytest.raises(Recorder.Stop):
        job.call(rec)  # type: ignore[arg-type]
    assert rec.call is not None
    return rec.call


def refused_connection() -> DivaUnavailable:
    """DIVA unreachable: the connection never opened (an outage, not the drop's fault)."""
    err = DivaUnavailable("connection refused")
    err.__cause__ = httpx.ConnectError("refused")
    return err


def lost_answer() -> DivaUnavailable:
    """A read timeout: the request went out, the answer never came (it may have landed)."""
    err = DivaUnavailable("read timed out")
    err.__cause__ = httpx.ReadTimeout("slow")
    return err


def info(state: RequestState, request_id: int = 77, **kw: Any) -> RequestInfo:
    return RequestInfo(request_id=request_id, state=state, **kw)


class Harness:
    """A Tracker with a fake dispatcher, explicit clocks and a real ledger."""

    def __init__(
        self,
        ledger: Ledger,
        folder: Path,
        *,
        max_attempts: int = 3,
        max_in_flight: int = 2,
        poll_seconds: float = 10.0,
    ) -> None:
        self.ledger = ledger
        self.folder = folder
        self.now = MONO0
        self.wall = WALL0
        self.finished: list[tuple[int, str]] = []
        self.tracker = Tracker(
            poll_seconds=poll_seconds,
            max_attempts=max_attempts,
            max_in_flight=max_in_flight,
            rng=random.Random(11),
            on_final=lambda _turn, tr: self.finished.append((tr.id, tr.state)),
            wall=lambda: self.wall,
        )
        self.sent: list[Job[Any]] = []  # every job the fake dispatcher was given

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds

    def tick_to(self, when: float) -> None:
        """Move both clocks so that the monotonic one reads exactly ``when``."""
        self.wall += when - self.now
        self.now = when

    def deadline(self) -> float:
        """The schedule's next deadline (there must be one)."""
        when = self.tracker.schedule.next_deadline(self.now)
        assert when is not None
        return when

    def wait_out(self) -> float:
        """Move the clocks to the schedule's next deadline; returns how far that was."""
        when = self.deadline()
        waited = when - self.now
        self.tick_to(when)
        return waited

    def drop(
        self,
        *,
        state: str = State.DETECTED,
        priority: int | None = None,
        on_conflict: str = "fail",
        qos: int = 0,
        attempts: int = 0,
        members: tuple[str, ...] = (),
        files: bool = True,
        **fields: Any,
    ) -> Tracked:
        """A settled drop with its archive body and files, and its ledger row."""
        path = f"d{next(_paths)}" + ("" if members else ".mxf")
        kind: Kind = "folder" if members else "file"
        watch = str(self.folder)
        with self.ledger.batch(now=self.wall) as tx:
            drop_id = tx.add(rule="news", watch=watch, path=path, kind=kind, state=state,
                             attempts=attempts)  # fmt: skip
        components = [f"{path}/{m}" for m in members] if members else [path]
        drop = Drop("news", watch, path, kind, members=tuple(components) if members else ())
        tr = Tracked(drop_id, drop, state, attempts=attempts, priority=priority,
                     on_conflict=on_conflict, **fields)  # fmt: skip
        name = path.removesuffix(".mxf")
        tr.set_body({"objectName": name, "collectionName": "news", "components": components,
                     "qos": qos, "filePathRoot": "/nas/news"})  # fmt: skip
        if files:
            for source in tr.sources():
                Path(source).parent.mkdir(parents=True, exist_ok=True)
                Path(source).write_bytes(b"x")
        return tr

    def settled(self, **kw: Any) -> Tracked:
        """A drop as Intake hands it over: held and queued."""
        tr = self.drop(**kw)
        self.tracker.hold(tr)
        self.tracker.queue(tr)
        return tr

    def turn(
        self, *outcomes: Outcome[Any], still_there: Callable[[Turn, Tracked], bool] | None = None
    ) -> list[Job[Any]]:
        """One engine turn: answers in, then advance; returns the jobs to dispatch."""
        with self.ledger.batch(now=self.wall) as tx:
            turn = Turn(tx, self.now)
            for outcome in outcomes:
                self.tracker.on_outcome(turn, outcome)
            self.tracker.advance(turn, still_there or (lambda _t, _tr: True))
        self.sent.extend(turn.calls)
        return turn.calls

    def row(self, tr: Tracked) -> dict[str, Any]:
        row = self.ledger.get(tr.id)
        assert row is not None
        return row

    def states(self, tr: Tracked) -> list[str]:
        return [h["to_state"] for h in self.ledger.history(tr.id)]

    def details(self, tr: Tracked) -> list[str]:
        return [h["detail"] for h in self.ledger.history(tr.id)]


def answer(job: Job[Any], result: Any) -> Outcome[Any]:
    """DIVA's answer to ``job``, typed as the dispatcher would deliver it."""
    return job.answer(job.key, job.token, result)


def only(jobs: list[Job[Any]], kind: type[Outcome[Any]]) -> Job[Any]:
    assert len(jobs) == 1, jobs
    assert jobs[0].answer is kind, jobs[0]
    return jobs[0]


@pytest.fixture
def h(ledger: Ledger, tmp_path: Path) -> Harness:
    return Harness(ledger, tmp_path)


def submitted(h: Harness, tr: Tracked, request_id: int = 77) -> Job[Any]:
    """Start a queued drop, and DIVA accepts it as ``request_id``; returns the archive job."""
    job = only(h.turn(), Submitted)
    assert h.turn(answer(job, request_id)) == []
    assert tr.state == State.SUBMITTED
    return job


def polled(h: Harness) -> Job[Any]:
    """Let the poll interval pass; returns the poll job."""
    h.tick(h.tracker.poll_seconds)
    return only(h.turn(), Polled)


# -- starting ---------------------------------------------------------------------------


def test_a_queued_drop_gets_its_intent_then_its_archive_call(h: Harness) -> None:
    tr = h.settled()
    job = only(h.turn(), Submitted)
    row = h.row(tr)
    assert row["state"] == State.SUBMITTING
    assert row["attempts"] == 1 and row["submitted_at"] == WALL0
    assert row["body"] == tr.body_json and row["object_name"] == tr.object_name
    name, args, _ = asked(job)
    assert name == "archive" and args[0] == tr.body
    assert h.details(tr)[-1].startswith("attempt 1: archiving as")
    assert tr.uncertain and tr.asking == "submit"
    assert h.tracker.schedule.in_flight == 1 and h.tracker.awaiting()


def test_a_drop_whose_files_changed_is_not_started_nor_takes_a_place(
    ledger: Ledger, tmp_path: Path
) -> None:
    h = Harness(ledger, tmp_path, max_in_flight=1)
    changed, steady = h.settled(), h.settled()
    job = only(h.turn(still_there=lambda _t, tr: tr is not changed), Submitted)
    assert job.key == steady.key
    assert h.states(changed) == [State.DETECTED]
    assert h.tracker.schedule.in_flight == 1
    h.turn(answer(job, 1))
    assert h.turn() == [], "it left the queue: Intake queues it again once it settles"


def test_queue_order_is_priority_then_age_and_capacity_caps_starts(
    ledger: Ledger, tmp_path: Path
) -> None:
    h = Harness(ledger, tmp_path, max_in_flight=2)
    old_default = h.settled()  # priority None counts as 50
    low = h.settled(priority=10)
    high = h.settled(priority=90)
    young_default = h.settled(priority=0)
    jobs = h.turn()
    assert [j.key for j in jobs] == [high.key, old_default.key]
    assert h.tracker.schedule.in_flight == 2
    assert h.tracker.schedule.next_deadline(h.now) is None  # full: nothing to do until an answer
    assert h.turn() == []
    # One answer frees a place: the next in order goes, and only it.
    h.turn(answer(jobs[0], DivaRefused("1018 no source", status_code=1018)))
    assert h.row(young_default)["state"] == State.SUBMITTING
    assert h.row(low)["state"] == State.DETECTED


def test_a_burst_starts_a_few_drops_a_turn_and_the_next_turn_is_due_at_once(
    ledger: Ledger, tmp_path: Path
) -> None:
    h = Harness(ledger, tmp_path, max_in_flight=10)
    h.tracker.starts_per_turn = 2
    drops = [h.settled() for _ in range(5)]
    first = h.turn()
    assert [j.key for j in first] == [d.key for d in drops[:2]]
    # Those two intents are in this turn's transaction; the others wait, due now.
    assert [h.row(d)["state"] for d in drops] == [State.SUBMITTING] * 2 + [State.DETECTED] * 3
    assert h.tracker.schedule.next_deadline(h.now) == h.now
    assert [j.key for j in h.turn()] == [d.key for d in drops[2:4]]
    assert [j.key for j in h.turn()] == [drops[4].key]
    assert h.tracker.schedule.in_flight == 5
    assert all(j.answer is Submitted for j in h.sent)


def test_a_drop_already_holding_a_place_starts_without_a_free_one(
    ledger: Ledger, tmp_path: Path
) -> None:
    h = Harness(ledger, tmp_path, max_in_flight=1)
    busy = h.settled()
    only(h.turn(), Submitted)
    # Read back after a restart mid-submission: its call may have reached DIVA.
    doubt = h.drop(state=State.SUBMITTING, attempts=1, submitted_at=WALL0 - 60)
    h.tracker.resume(doubt, h.now)
    assert doubt.uncertain and h.tracker.schedule.in_flight == 2
    assert h.tracker.schedule.next_deadline(h.now) == h.now
    job = only(h.turn(), Checked)
    name, _, kw = asked(job)
    assert name == "requests"
    assert kw["since"] == datetime.fromtimestamp(WALL0 - 60, UTC)
    assert h.row(busy)["state"] == State.SUBMITTING


# -- answers to an archive call ---------------------------------------------------------


def test_accepted_then_polled_on_its_interval(h: Harness) -> None:
    tr = h.settled()
    job = only(h.turn(), Submitted)
    assert h.turn(answer(job, 4242)) == []
    row = h.row(tr)
    assert row["state"] == State.SUBMITTED and row["request_id"] == 4242
    assert not row["adopted"] and not tr.uncertain
    assert h.tracker.schedule.next_deadline(h.now) == h.now + 10.0
    h.tick(9.99)
    assert h.turn() == []
    h.tick(0.01)
    poll = only(h.turn(), Polled)
    assert asked(poll) == ("request", (4242,), {})


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (DivaRefused("invalid parameter", status_code=1008), 1008),
        (DivaRefused("no such source", status_code=1018, status_name="DIVA_ERR_SRC"), 1018),
        (DivaAccessDenied("role may not archive", status_code=1035), 1035),
    ],
)
def test_a_permanent_refusal_rejects_the_drop(h: Harness, error: DivaError, code: int) -> None:
    tr = h.settled()
    job = only(h.turn(), Submitted)
    assert h.turn(answer(job, error)) == []
    row = h.row(tr)
    assert row["state"] == State.REJECTED and row["status_code"] == code
    assert row["status_name"] == error.status_name and row["error"] == str(error)
    assert row["finished_at"] == WALL0
    assert h.finished == [(tr.id, State.REJECTED)] and tr.key not in h.tracker
    assert h.tracker.schedule.in_flight == 0


def test_busy_1032_holds_submissions_with_a_doubling_hold_and_spends_no_attempt(
    h: Harness,
) -> None:
    """DIVA's queue full is DIVA's state: more refusals than ``max_attempts`` (3) fail
    nothing, and the hold doubles until DIVA takes a request, then starts over."""
    tr = h.settled()
    for refusal in (1, 2, 3, 4):
        job = only(h.turn(), Submitted)
        h.turn(answer(job, DivaBusy("queue full", status_code=1032)))
        row = h.row(tr)
        assert row["state"] == State.RETRY_WAIT and row["status_code"] == 1032
        assert row["attempts"] == 0  # not an attempt
        assert not tr.uncertain  # DIVA's own status: it created nothing
        delay = row["next_attempt_at"] - h.wall
        base = BUSY * 2 ** (refusal - 1)
        assert 0.8 * base <= delay <= 1.2 * base
        assert h.tracker.schedule.in_flight == 0  # a drop waiting to retry holds no place
        assert h.tracker.schedule.paused(h.now)  # and no other drop goes meanwhile
        when = h.deadline()
        assert when == pytest.approx(h.now + delay)
        h.tick_to(when - 0.01)
        assert h.turn() == []
        h.tick_to(when)
    job = only(h.turn(), Submitted)
    h.turn(answer(job, 42))
    row = h.row(tr)
    assert row["state"] == State.SUBMITTED and row["attempts"] == 1
    assert row["submitted_at"] == WALL0  # the first intent's time is kept
    # DIVA took one: the next drop refused starts from the first hold again.
    other = h.settled()
    job = only(h.turn(), Submitted)
    h.turn(answer(job, DivaBusy("queue full", status_code=1032)))
    delay = h.row(other)["next_attempt_at"] - h.wall
    assert 0.8 * BUSY <= delay <= 1.2 * BUSY


def test_busy_holds_the_next_drop_too(ledger: Ledger, tmp_path: Path) -> None:
    """The place the refused drop frees is not given to the next one while DIVA says its
    queue is full: that drop would only be refused in its turn."""
    h = Harness(ledger, tmp_path, max_in_flight=1)
    first, second = h.settled(), h.settled()
    job = only(h.turn(), Submitted)
    assert h.turn(answer(job, DivaBusy("queue full", status_code=1032))) == []
    assert h.row(first)["state"] == State.RETRY_WAIT
    assert h.row(second)["state"] == State.DETECTED
    h.wait_out()
    nxt = only(h.turn(), Submitted)
    assert nxt.key in (first.key, second.key)


def test_not_found_on_archive_is_retried_as_certain(h: Harness) -> None:
    tr = h.settled(attempts=0)
    job = only(h.turn(), Submitted)
    h.turn(answer(job, DivaNotFound("no such thing", status_code=1009)))
    assert h.row(tr)["state"] == State.RETRY_WAIT and not tr.uncertain
    assert 0.8 * RETRY <= h.wait_out() <= 1.2 * RETRY
    only(h.turn(), Submitted)


@pytest.mark.parametrize(
    "error",
    [lost_answer(), DivaServerError("502 from the proxy"), DivaProtocolError("<html>")],
    ids=["lost-answer", "5xx", "protocol"],
)
def test_a_call_that_may_have_landed_is_reconciled_never_resent_blind(
    ledger: Ledger, tmp_path: Path, error: DivaError
) -> None:
    h = Harness(ledger, tmp_path, max_attempts=1)  # its last attempt: still not FAILED
    tr = h.settled()
    job = only(h.turn(), Submitted)
    h.turn(answer(job, error))
    row = h.row(tr)
    assert row["state"] == State.RETRY_WAIT and tr.uncertain
    assert "waiting to confirm with DIVA" in row["error"]
    h.wait_out()
    check = only(h.turn(), Checked)
    assert h.row(tr)["attempts"] == 1  # asking is not an attempt
    name, _, kw = asked(check)
    assert name == "requests"
    assert kw == {"object_name": tr.object_name, "collection": "news",
                  "since": datetime.fromtimestamp(WALL0, UTC)}  # fmt: skip
    assert tr.asking == "check" and h.tracker.schedule.in_flight == 1


@pytest.mark.parametrize("error", [refused_connection(), DivaAuthError("login refused")],
                         ids=["unreachable", "auth"])  # fmt: skip
def test_an_outage_pauses_every_submission_and_fails_no_drop(
    ledger: Ledger, tmp_path: Path, error: DivaError, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(ledger, tmp_path, max_attempts=1, max_in_flight=1)
    tr, other = h.settled(), h.settled()
    job = only(h.turn(), Submitted)
    assert job.key == tr.key
    caplog.set_level(logging.ERROR, "ingest.engine")
    for outage in (1, 2, 3):
        h.turn(answer(job, error))
        row = h.row(tr)
        assert row["state"] == State.RETRY_WAIT, "an outage never fails a drop"
        assert not tr.uncertain  # refused before anything was created
        delay = row["next_attempt_at"] - h.wall
        base = OUTAGE * 2 ** (outage - 1)
        assert 0.8 * base <= delay <= 1.2 * base
        assert h.tracker.schedule.paused(h.now) and h.tracker.schedule.capacity(h.now) == 0
        when = h.deadline()
        assert when == pytest.approx(h.now + delay)
        h.tick_to(when - 0.001)
        assert h.turn() == [], "nothing is submitted while DIVA is out"
        h.tick_to(when)
        job = only(h.turn(), Submitted)
        assert job.key == tr.key and h.states(other) == [State.DETECTED]
    assert len([r for r in caplog.records if "pausing submissions" in r.message]) == 3
    # An accepted call ends the outage: the next one starts again from the first step.
    h.turn(answer(job, 9))
    h.turn(answer(polled(h), info(RequestState.COMPLETED, request_id=9)))
    job = only(h.sent[-1:], Submitted)
    assert job.key == other.key
    h.turn(answer(job, error))
    delay = h.row(other)["next_attempt_at"] - h.wall
    assert 0.8 * OUTAGE <= delay <= 1.2 * OUTAGE


def test_one_outage_seen_by_two_answers_is_one_pause(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = h.settled(), h.settled()
    jobs = h.turn()
    caplog.set_level(logging.ERROR, "ingest.engine")
    h.turn(*(answer(j, refused_connection()) for j in jobs))
    assert len([r for r in caplog.records if "pausing submissions" in r.message]) == 1
    first = h.row(a)["next_attempt_at"] - h.wall
    second = h.row(b)["next_attempt_at"] - h.wall
    assert 0.8 * OUTAGE <= first <= 1.2 * OUTAGE
    assert 0.8 * 2 * OUTAGE <= second <= 1.2 * 2 * OUTAGE  # the pause grows with each
    assert h.tracker.schedule.paused(h.now + max(first, second) - 0.001)


def test_while_paused_polls_still_go_and_held_drops_wait(ledger: Ledger, tmp_path: Path) -> None:
    h = Harness(ledger, tmp_path, max_in_flight=3)
    at_diva, failing = h.settled(), h.settled()
    jobs = h.turn()
    h.turn(answer(jobs[0], 5), answer(jobs[1], refused_connection()))
    doubt = h.drop(state=State.SUBMITTING, attempts=1)
    h.tracker.resume(doubt, h.now)
    queued = h.settled()
    h.tracker.schedule.pause(h.now + 30)
    h.tick(10.0)
    poll = only(h.turn(), Polled)
    assert poll.key == at_diva.key
    assert doubt.queued and failing.queued and h.states(doubt) == [State.SUBMITTING]
    h.turn(answer(poll, info(RequestState.TRANSFERRING, request_id=5)))
    h.tick(20.0)
    jobs = h.turn()  # the pause is over: the held drop first, then one free place
    assert [(j.answer, j.key) for j in jobs] == [
        (Checked, doubt.key), (Submitted, failing.key), (Polled, at_diva.key)]  # fmt: skip
    assert h.states(queued) == [State.DETECTED]


# -- on_conflict ------------------------------------------------------------------------


def test_object_exists_on_first_attempt_skip(h: Harness) -> None:
    tr = h.settled(on_conflict="skip")
    job = only(h.turn(), Submitted)
    h.turn(answer(job, DivaObjectExists("object exists", status_code=1016)))
    row = h.row(tr)
    assert row["state"] == State.SKIPPED and row["status_code"] == 1016
    assert h.details(tr)[-1] == "object exists (on_conflict = skip)"
    assert h.finished == [(tr.id, State.SKIPPED)]


def test_object_exists_on_first_attempt_fail(h: Harness) -> None:
    tr = h.settled(on_conflict="fail")
    job = only(h.turn(), Submitted)
    h.turn(answer(job, DivaObjectExists("being archived", status_code=1040)))
    row = h.row(tr)
    assert row["state"] == State.REJECTED and row["status_code"] == 1040
    assert row["status_name"] == "DIVA_ERR_OBJECT_ALREADY_EXISTS"
    assert "on_conflict = fail" in row["error"]


def test_object_exists_on_first_attempt_suffix_finds_a_free_name(h: Harness) -> None:
    tr = h.settled(on_conflict="suffix")
    original = tr.object_name
    job = only(h.turn(), Submitted)
    rename = only(h.turn(answer(job, DivaObjectExists("object exists", status_code=1016))),
                  Renamed)  # fmt: skip
    assert asked(rename) == ("object_info", (f"{original}_2", "news"), {})
    assert h.row(tr)["state"] == State.SUBMITTING and tr.asking == "rename"
    assert h.tracker.schedule.in_flight == 1  # asking for a name keeps its place
    archive = only(h.turn(answer(rename, f"{original}_3")), Submitted)
    row = h.row(tr)
    assert row["object_name"] == f"{original}_3" and row["attempts"] == 2
    assert asked(archive)[1][0]["objectName"] == f"{original}_3"
    assert "object exists; archiving as" in h.details(tr)[-2]
    assert h.states(tr)[-2:] == [State.RETRY_WAIT, State.SUBMITTING]


def test_suffix_names_the_taken_name_when_diva_gave_no_reason(h: Harness) -> None:
    tr = h.settled(on_conflict="suffix")
    old = tr.object_name
    job = only(h.turn(), Submitted)
    rename = only(h.turn(answer(job, DivaObjectExists("", status_code=1016))), Renamed)
    h.turn(answer(rename, "other"))
    assert h.details(tr)[-2].startswith(f"{old!r} exists in DIVA; archiving as 'other'")


def test_suffix_name_search_error_waits_then_searches_again(h: Harness) -> None:
    tr = h.settled(on_conflict="suffix")
    name = tr.object_name
    job = only(h.turn(), Submitted)
    rename = only(h.turn(answer(job, DivaObjectExists("exists", status_code=1016))), Renamed)
    h.turn(answer(rename, DivaServerError("503")))
    row = h.row(tr)
    assert row["state"] == State.RETRY_WAIT and tr.renames == 1
    assert "looking for a free object name failed (503)" in row["error"]
    assert h.tracker.schedule.in_flight == 0
    assert 0.8 * RETRY <= h.wait_out() <= 1.2 * RETRY
    # The search is asked again: nothing is archived under the taken name meanwhile.
    rename = only(h.turn(), Renamed)
    assert tr.attempts == 1 and h.row(tr)["state"] == State.RETRY_WAIT
    archive = only(h.turn(answer(rename, f"{name}_2")), Submitted)
    assert asked(archive)[1][0]["objectName"] == f"{name}_2" and tr.attempts == 2
    assert tr.renames == 0 and tr.conflict == ""


def test_suffix_with_every_name_taken_is_rejected_at_once(h: Harness) -> None:
    tr = h.settled(on_conflict="suffix")
    job = only(h.turn(), Submitted)
    rename = only(h.turn(answer(job, DivaObjectExists("exists", status_code=1016))), Renamed)
    assert h.turn(answer(rename, DivaRefused("no free name up to x_100"))) == []
    row = h.row(tr)
    assert row["state"] == State.REJECTED and tr.key not in h.tracker
    assert row["error"] == (
        "exists; no free name up to x_100 (on_conflict = suffix: free a name, or rename the drop)"
    )


def test_suffix_name_search_gives_up_at_max_attempts(ledger: Ledger, tmp_path: Path) -> None:
    h = Harness(ledger, tmp_path, max_attempts=2)
    tr = h.settled(on_conflict="suffix")
    job = only(h.turn(), Submitted)
    rename = only(h.turn(answer(job, DivaObjectExists("exists", status_code=1016))), Renamed)
    h.turn(answer(rename, DivaServerError("503")))
    h.wait_out()
    rename = only(h.turn(), Renamed)
    assert h.turn(answer(rename, DivaServerError("503"))) == []
    row = h.row(tr)
    assert row["state"] == State.FAILED and tr.attempts == 1
    assert row["error"] == "gave up after 2 attempts: 503"


def test_suffix_with_no_free_name_ends_within_max_attempts(ledger: Ledger, tmp_path: Path) -> None:
    """Whatever DIVA answers, a drop whose names are all taken reaches an end: it never
    loops between archive, reconcile and name search (found by this suite)."""
    for refusal in (DivaRefused("no free name"), DivaServerError("503")):
        h = Harness(ledger, tmp_path, max_attempts=2)
        tr = h.settled(on_conflict="suffix")
        taken = DivaObjectExists("exists", status_code=1016)
        jobs = h.turn()
        for _ in range(30):
            if tr.key not in h.tracker:
                break
            job = jobs[0] if jobs else None
            if job is None:
                h.wait_out()
                jobs = h.turn()
                continue
            other = Reconciled("conflict", detail="another's")
            result: Any = {Submitted: taken, Renamed: refusal, Checked: other}[job.answer]
            jobs = h.turn(answer(job, result))
        assert h.row(tr)["state"] in (State.FAILED, State.REJECTED) and tr.attempts <= 2


def test_object_exists_on_a_later_attempt_asks_whose_it_is(h: Harness) -> None:
    tr = h.settled(on_conflict="fail", attempts=1)
    job = only(h.turn(), Submitted)
    assert tr.attempts == 2
    check = only(h.turn(answer(job, DivaObjectExists("exists", status_code=1016))), Checked)
    assert h.row(tr)["state"] == State.SUBMITTING  # no transition: straight to the question
    h.turn(answer(check, Reconciled("object", detail="DIVA holds the object with ours")))
    row = h.row(tr)
    assert row["state"] == State.COMPLETED
    assert h.details(tr)[-1] == "reconciled: DIVA holds the object with ours"


# -- polls ------------------------------------------------------------------------------


def test_waiting_then_running_then_progress(h: Harness) -> None:
    tr = h.settled()
    submitted(h, tr)
    poll = polled(h)
    h.turn(answer(poll, info(RequestState.PENDING, progress=0)))
    row = h.row(tr)
    assert row["state"] == State.RUNNING and row["waiting_since"] == h.wall
    assert row["diva_state"] == "DIVA_PENDING"
    since = h.wall
    poll = polled(h)
    h.turn(answer(poll, info(RequestState.WAITING_FOR_RESOURCES, progress=0)))
    row = h.row(tr)
    assert row["waiting_since"] == since, "waiting is timed from when it began"
    assert h.states(tr).count(State.RUNNING) == 1
    poll = polled(h)
    h.turn(answer(poll, info(RequestState.TRANSFERRING, progress=40)))
    row = h.row(tr)
    assert row["waiting_since"] is None and row["progress"] == 40
    assert row["updated_at"] == h.wall
    written = h.wall
    poll = polled(h)
    h.turn(answer(poll, info(RequestState.TRANSFERRING, progress=40)))
    assert h.row(tr)["updated_at"] == written, "no change, no write"
    assert h.states(tr)[-1] == State.RUNNING


@pytest.mark.parametrize(
    ("qos", "keep", "state_detail", "deleted"),
    [
        (0, True, "DIVA completed request 77", False),
        (DELETE_ON_SOURCE, False, "DIVA completed request 77; DIVA deleted the source", True),
        (DELETE_ON_SOURCE, True, "DIVA completed request 77; 1 source file(s) still present",
         False),
    ],
    ids=["kept", "deleted", "asked-but-left"],
)  # fmt: skip
def test_completed_checks_the_deletion_it_asked_for(
    h: Harness, qos: int, keep: bool, state_detail: str, deleted: bool
) -> None:
    tr = h.settled(qos=qos)
    submitted(h, tr)
    poll = polled(h)
    if not keep:
        for source in tr.sources():
            Path(source).unlink()
    h.turn(answer(poll, info(RequestState.COMPLETED, progress=100, status_code=1000)))
    row = h.row(tr)
    assert row["state"] == State.COMPLETED and bool(row["source_deleted"]) is deleted
    assert h.details(tr)[-1] == state_detail
    assert row["finished_at"] == h.wall and row["error"] is None
    assert h.finished == [(tr.id, State.COMPLETED)] and not h.tracker.drops


def test_aborted_for_a_passing_reason_is_retried_until_max_attempts(
    ledger: Ledger, tmp_path: Path
) -> None:
    h = Harness(ledger, tmp_path, max_attempts=2)
    tr = h.settled()
    aborted = info(RequestState.ABORTED, abort_reason="DIVA_AR_DRIVE",
                   abort_description="drive failure", status_code=1002,
                   status_name="DIVA_ERR_INTERNAL")  # fmt: skip
    submitted(h, tr)
    h.turn(answer(polled(h), aborted))
    row = h.row(tr)
    assert row["state"] == State.RETRY_WAIT and row["abort_reason"] == "DIVA_AR_DRIVE"
    assert row["error"] == ("DIVA aborted request 77: DIVA_AR_DRIVE (drive failure), "
                            "DIVA_ERR_INTERNAL (1002)")  # fmt: skip
    assert not tr.uncertain
    assert 0.8 * RETRY <= row["next_attempt_at"] - h.wall <= 1.2 * RETRY
    assert 0.8 * RETRY <= h.wait_out() <= 1.2 * RETRY
    submitted(h, tr, request_id=78)
    h.turn(answer(polled(h), aborted))
    row = h.row(tr)
    assert row["state"] == State.FAILED and row["attempts"] == 2


@pytest.mark.parametrize(
    "ended",
    [
        info(RequestState.ABORTED, abort_reason="DIVA_AR_SOURCE_DEST"),
        info(RequestState.ABORTED),
        info(RequestState.CANCELLED, status_code=1019),
    ],
    ids=["permanent-reason", "no-reason", "cancelled"],
)
def test_aborted_for_good_fails_with_files_in_place(h: Harness, ended: RequestInfo) -> None:
    tr = h.settled()
    submitted(h, tr)
    h.turn(answer(polled(h), ended))
    row = h.row(tr)
    reason = ended.abort_reason or "no abort reason"
    assert row["state"] == State.FAILED
    assert row["error"] == f"DIVA {ended.state.description.lower()} request 77: {reason}"
    assert all(Path(p).exists() for p in tr.sources())


def test_partially_aborted_lists_what_remains(h: Harness) -> None:
    members = tuple(f"clip{i:02}.mxf" for i in range(13))
    tr = h.settled(members=members)
    sources = tr.sources()
    for source in sources[:1]:
        Path(source).unlink()
    submitted(h, tr)
    h.turn(answer(polled(h), info(RequestState.PARTIALLY_ABORTED, abort_reason="DIVA_AR_TAPE")))
    row = h.row(tr)
    assert row["state"] == State.FAILED
    assert "; 12 of 13 file(s) remain in the drop folder: " in row["error"]
    assert row["error"].endswith("clip10.mxf and 2 more")
    assert row["diva_state"] == "DIVA_PARTIALLY_ABORTED"


def test_partially_aborted_with_nothing_left(h: Harness) -> None:
    tr = h.settled(files=False)
    submitted(h, tr)
    h.turn(answer(polled(h), info(RequestState.PARTIALLY_ABORTED)))
    assert h.row(tr)["error"].endswith("; 0 of 1 file(s) remain in the drop folder")


@pytest.mark.parametrize(
    ("on_conflict", "final"),
    [("skip", State.SKIPPED), ("fail", State.REJECTED), ("suffix", None)],
)
def test_a_late_conflict_is_reconciled_then_on_conflict(
    h: Harness, on_conflict: str, final: str | None
) -> None:
    tr = h.settled(on_conflict=on_conflict)
    submitted(h, tr)
    late = info(RequestState.ABORTED, status_code=1040, abort_reason="DIVA_AR_SYSTEM")
    check = only(h.turn(answer(polled(h), late)), Checked)  # no wait: straight to the question
    row = h.row(tr)
    assert row["state"] == State.RETRY_WAIT and row["next_attempt_at"] == h.wall
    assert "asking DIVA whose object it is" in h.details(tr)[-1]
    assert tr.late_conflict == 1040
    jobs = h.turn(answer(check, Reconciled("conflict", detail="another's object")))
    row = h.row(tr)
    assert tr.late_conflict is None
    if final is None:
        only(jobs, Renamed)
        assert row["state"] == State.RETRY_WAIT
    else:
        assert jobs == [] and row["state"] == final and row["status_code"] == 1040


def test_a_late_conflict_that_is_ours_completes(h: Harness) -> None:
    tr = h.settled()
    submitted(h, tr)
    late = info(RequestState.ABORTED, status_code=1016)
    check = only(h.turn(answer(polled(h), late)), Checked)
    h.turn(answer(check, Reconciled("object", detail="ours")))
    assert h.row(tr)["state"] == State.COMPLETED


def test_a_forgotten_request_is_asked_about_without_a_free_place(
    ledger: Ledger, tmp_path: Path
) -> None:
    h = Harness(ledger, tmp_path, max_in_flight=1)
    tr = h.settled()
    submitted(h, tr)
    waiting = h.settled()
    check = only(h.turn(answer(polled(h), DivaNotFound("no request", status_code=1011))),
                 Checked)  # fmt: skip
    assert check.key == tr.key and tr.uncertain and h.row(waiting)["state"] == State.DETECTED


def test_a_failed_poll_polls_again_later_without_a_transition(h: Harness) -> None:
    tr = h.settled()
    submitted(h, tr)
    before = h.states(tr)
    assert h.turn(answer(polled(h), DivaServerError("500"))) == []
    assert h.states(tr) == before and tr.state == State.SUBMITTED
    assert h.tracker.schedule.next_deadline(h.now) == h.now + 10.0
    polled(h)


def test_stale_and_unknown_answers_are_ignored(h: Harness) -> None:
    tr = h.settled()
    first = only(h.turn(), Submitted)
    h.turn(answer(first, lost_answer()))
    h.wait_out()
    check = only(h.turn(), Checked)
    before = h.states(tr)
    h.turn(answer(first, 1))  # the lost answer, arriving late: its token is old
    h.turn(Submitted(("/elsewhere", "x"), check.token, 1))
    assert h.states(tr) == before and tr.asking == "check"
    h.turn(answer(check, Reconciled("absent", detail="nothing")))
    assert h.row(tr)["state"] == State.SUBMITTING


# -- reconciling ------------------------------------------------------------------------


def uncertain_drop(h: Harness, **kw: Any) -> tuple[Tracked, Job[Any]]:
    """A drop whose archive answer was lost, now being asked about."""
    tr = h.settled(**kw)
    job = only(h.turn(), Submitted)
    h.turn(answer(job, lost_answer()))
    h.wait_out()
    return tr, only(h.turn(), Checked)


def test_reconciled_live_request_is_adopted_and_followed(h: Harness) -> None:
    tr, check = uncertain_drop(h)
    running = info(RequestState.TRANSFERRING, request_id=900, progress=10)
    h.turn(answer(check, Reconciled("request", running, "DIVA is running request 900")))
    row = h.row(tr)
    assert row["state"] == State.RUNNING and row["request_id"] == 900 and row["adopted"]
    assert h.states(tr)[-2:] == [State.SUBMITTED, State.RUNNING]
    # Completed, but found by name only: the object must prove it is ours.
    check = only(h.turn(answer(polled(h), info(RequestState.COMPLETED, request_id=900))),
                 Checked)  # fmt: skip
    row = h.row(tr)
    assert row["state"] == State.RETRY_WAIT and not row["adopted"]
    assert "checking the object is ours" in h.details(tr)[-1]
    h.turn(answer(check, Reconciled("object", detail="ours")))
    assert h.row(tr)["state"] == State.COMPLETED


def test_reconciled_object_completes(h: Harness) -> None:
    tr, check = uncertain_drop(h)
    h.turn(answer(check, Reconciled("object", detail="DIVA holds the object")))
    row = h.row(tr)
    assert row["state"] == State.COMPLETED and row["attempts"] == 1
    assert h.finished == [(tr.id, State.COMPLETED)]


@pytest.mark.parametrize(
    ("found", "code"),
    [(Reconciled("conflict", detail="another's object"), 1016),
     (Reconciled("conflict", info(RequestState.PENDING, request_id=3), "older request"), 1040)],
    ids=["object", "request"],
)  # fmt: skip
def test_reconciled_other_object_is_a_conflict(h: Harness, found: Reconciled, code: int) -> None:
    tr, check = uncertain_drop(h, on_conflict="skip")
    h.turn(answer(check, found))
    row = h.row(tr)
    assert row["state"] == State.SKIPPED and row["status_code"] == code


def test_reconciled_absent_submits_again(h: Harness) -> None:
    tr, check = uncertain_drop(h)
    job = only(h.turn(answer(check, Reconciled("absent", detail="nothing there"))), Submitted)
    row = h.row(tr)
    assert row["state"] == State.SUBMITTING and row["attempts"] == 2
    assert h.states(tr)[-2:] == [State.RETRY_WAIT, State.SUBMITTING]  # no second RETRY_WAIT
    assert asked(job)[0] == "archive"


def test_reconciled_absent_from_an_in_flight_state_waits_first(
    ledger: Ledger, tmp_path: Path
) -> None:
    h = Harness(ledger, tmp_path)
    tr = h.drop(state=State.SUBMITTING, attempts=1)
    h.tracker.resume(tr, h.now)
    check = only(h.turn(), Checked)
    assert asked(check)[2]["since"] is None  # no known first intent: every request counts
    job = only(h.turn(answer(check, Reconciled("absent", detail="nothing"))), Submitted)
    assert job.key == tr.key
    assert h.states(tr)[-2:] == [State.RETRY_WAIT, State.SUBMITTING]
    assert "reconciled: nothing; submitting again" in h.details(tr)[-2]


def test_reconciled_absent_with_files_gone_fails(h: Harness) -> None:
    tr, check = uncertain_drop(h)
    for source in tr.sources():
        Path(source).unlink()
    h.turn(answer(check, Reconciled("absent", detail="nothing")))
    row = h.row(tr)
    assert row["state"] == State.FAILED and "files are gone" in row["error"]


def test_reconciled_absent_after_the_last_attempt_fails(ledger: Ledger, tmp_path: Path) -> None:
    h = Harness(ledger, tmp_path, max_attempts=1)
    tr, check = uncertain_drop(h)
    h.turn(answer(check, Reconciled("absent", detail="nothing")))
    row = h.row(tr)
    assert row["state"] == State.FAILED
    assert row["error"] == "reconciled: nothing; gave up after 1 attempts"


def test_reconcile_that_cannot_confirm_retries_then_fails_with_files_in_place(
    ledger: Ledger, tmp_path: Path
) -> None:
    h = Harness(ledger, tmp_path, max_attempts=2)
    tr, check = uncertain_drop(h)
    h.turn(answer(check, DivaUnconfirmed("list did not end")))
    row = h.row(tr)
    assert row["state"] == State.RETRY_WAIT and tr.checks == 1
    assert "asking DIVA about the object failed" in row["error"]
    # The backoff follows the attempts made (1), not the questions asked.
    assert 0.8 * RETRY <= h.wait_out() <= 1.2 * RETRY
    check = only(h.turn(), Checked)
    h.turn(answer(check, DivaUnconfirmed("list did not end")))
    row = h.row(tr)
    assert row["state"] == State.FAILED and row["error"].startswith(CANNOT_CONFIRM)
    assert "after 2 tries" in row["error"] and row["attempts"] == 1
    assert all(Path(p).exists() for p in tr.sources())


def test_a_certain_reconcile_error_counts_too(ledger: Ledger, tmp_path: Path) -> None:
    h = Harness(ledger, tmp_path, max_attempts=1)
    tr, check = uncertain_drop(h)
    h.turn(answer(check, DivaBusy("busy", status_code=1032)))
    # DIVA's 1032 is certain about the question, not about the drop's earlier call.
    row = h.row(tr)
    assert row["state"] == State.FAILED and row["error"].startswith(CANNOT_CONFIRM)
    assert row["status_code"] == 1032


def test_a_successful_reconcile_resets_the_question_count(ledger: Ledger, tmp_path: Path) -> None:
    h = Harness(ledger, tmp_path, max_attempts=2)
    tr, check = uncertain_drop(h)
    h.turn(answer(check, DivaServerError("500")))
    assert tr.checks == 1
    h.wait_out()
    check = only(h.turn(), Checked)
    h.turn(answer(check, Reconciled("request", info(RequestState.PENDING), "running")))
    assert tr.checks == 0 and h.row(tr)["state"] == State.RUNNING


# -- resuming after a restart -----------------------------------------------------------


def test_resume_polls_a_request_at_once(h: Harness) -> None:
    tr = h.drop(state=State.RUNNING, attempts=1, request_id=55)
    h.tracker.resume(tr, h.now)
    assert h.tracker.schedule.in_flight == 1
    poll = only(h.turn(), Polled)
    assert asked(poll) == ("request", (55,), {})


@pytest.mark.parametrize(("attempts", "kind"), [(0, Submitted), (2, Checked)])
def test_resume_a_retry_waits_out_its_time(
    h: Harness, attempts: int, kind: type[Outcome[Any]]
) -> None:
    tr = h.drop(state=State.RETRY_WAIT, attempts=attempts, next_attempt_at=WALL0 + 7.0)
    h.tracker.resume(tr, h.now)
    assert h.tracker.schedule.in_flight == 0
    assert h.tracker.schedule.next_deadline(h.now) == h.now + 7.0
    h.tick_to(h.now + 6.9)
    assert h.turn() == []
    h.tick_to(MONO0 + 7.0)
    assert only(h.turn(), kind).key == tr.key


def test_resume_an_overdue_retry_goes_at_once(h: Harness) -> None:
    tr = h.drop(state=State.RETRY_WAIT, next_attempt_at=WALL0 - 100.0)
    h.tracker.resume(tr, h.now)
    assert only(h.turn(), Submitted).key == tr.key


def test_resume_leaves_a_settling_drop_alone(h: Harness) -> None:
    tr = h.drop(state=State.DETECTED)
    h.tracker.resume(tr, h.now)
    assert tr.key in h.tracker and h.turn() == []
    assert h.tracker.schedule.next_deadline(h.now) is None


def test_reset_forgets_everything(h: Harness) -> None:
    tr = h.settled()
    only(h.turn(), Submitted)
    assert "live=1" in repr(h.tracker) and "in_flight=1" in repr(h.tracker.schedule)
    h.tracker.reset()
    assert tr.key not in h.tracker and h.tracker.schedule.in_flight == 0
    assert not h.tracker.schedule.has_ready and h.turn() == []


def test_a_drop_finished_elsewhere_leaves_its_heap_entries_behind(h: Harness) -> None:
    tr = h.settled()
    job = only(h.turn(), Submitted)
    h.turn(answer(job, lost_answer()))
    with h.ledger.batch(now=h.wall) as tx:
        h.tracker.move(Turn(tx, h.now), tr, State.SKIPPED, "vanished")
    assert h.tracker.schedule.next_deadline(h.now) is not None  # the stale retry entry
    h.tick(60)
    assert h.turn() == [] and h.states(tr)[-1] == State.SKIPPED


def test_a_superseded_drop_finishing_leaves_its_successor_alone(h: Harness) -> None:
    old = h.settled()
    new = Tracked(old.id + 1000, Drop(old.rule, old.watch, old.path, old.kind), State.DETECTED)
    h.tracker.hold(new)  # a newer row for the same path took its place
    with h.ledger.batch(now=h.wall) as tx:
        h.tracker.move(Turn(tx, h.now), old, State.SKIPPED, "replaced")
    assert h.tracker.drops[old.key] is new and h.finished == [(old.id, State.SKIPPED)]


def test_held_drops_that_are_stale_or_changed_are_passed_over(
    ledger: Ledger, tmp_path: Path
) -> None:
    h = Harness(ledger, tmp_path, max_in_flight=0)
    gone = h.drop(state=State.SUBMITTING, attempts=1)
    changed = h.drop(state=State.SUBMITTING, attempts=1)
    kept = h.drop(state=State.SUBMITTING, attempts=1)
    for tr in (gone, changed, kept):
        h.tracker.resume(tr, h.now)
    with h.ledger.batch(now=h.wall) as tx:
        h.tracker.move(Turn(tx, h.now), gone, State.FAILED, "an operator gave up on it")
    job = only(h.turn(still_there=lambda _t, tr: tr is not changed), Checked)
    assert job.key == kept.key and not h.tracker.schedule.has_ready


def test_a_due_poll_for_a_finished_drop_is_dropped(h: Harness) -> None:
    tr = h.drop(state=State.RUNNING, attempts=1, request_id=31)
    h.tracker.resume(tr, h.now)
    with h.ledger.batch(now=h.wall) as tx:
        h.tracker.move(Turn(tx, h.now), tr, State.FAILED, "an operator gave up on it")
    assert h.turn() == []


def test_an_answer_of_no_known_kind_only_ends_the_wait(h: Harness) -> None:
    tr = h.settled()
    job = only(h.turn(), Submitted)
    assert h.tracker.awaiting()
    h.turn(Outcome(job.key, job.token, 1))
    assert not h.tracker.awaiting() and h.states(tr)[-1] == State.SUBMITTING
    assert h.tracker.schedule.in_flight == 1  # SUBMITTING still holds its place
