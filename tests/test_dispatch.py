"""The Dispatcher's pool: threads as calls need them, archive calls before polls, shutdown."""

from __future__ import annotations

import queue
import threading
from typing import Any, cast

import pytest

from ingest import defaults
from ingest.engine.dispatch import Checked, Dispatcher, Job, Outcome, Polled, Submitted


class _Client:
    manager_url = "http://diva.invalid/manager"


def _job(
    answer: type[Outcome[Any]],
    name: str,
    ran: list[str],
    gate: threading.Event | None = None,
    started: threading.Event | None = None,
) -> Job[Any]:
    def call(_client: Any) -> str:
        if started is not None:
            started.set()
        if gate is not None:
            assert gate.wait(10)
        ran.append(name)
        return name

    return Job(answer, ("/watch", name), 1, call)


def test_waiting_archive_calls_go_before_waiting_polls() -> None:
    answers: queue.SimpleQueue[Outcome[Any]] = queue.SimpleQueue()
    # (a clock that stands still: no poll is ever overdue)
    pool = Dispatcher(_Client(), answers.put, workers=1, clock=lambda: 0.0)  # type: ignore[arg-type]
    ran: list[str] = []
    gate, started = threading.Event(), threading.Event()
    try:
        pool.run(_job(Polled, "busy", ran, gate, started))  # holds the only thread
        assert started.wait(10)
        for answer, name in ((Polled, "poll-1"), (Submitted, "archive-1"), (Polled, "poll-2"),
                             (Checked, "check-1"), (Submitted, "archive-2")):  # fmt: skip
            pool.run(_job(answer, name, ran))
        gate.set()
        got = [answers.get(timeout=10) for _ in range(6)]
    finally:
        pool.shutdown()
    assert ran == ["busy", "archive-1", "check-1", "archive-2", "poll-1", "poll-2"]
    assert [o.result for o in got] == ran
    assert [type(o) for o in got][:2] == [Polled, Submitted]


@pytest.mark.parametrize("short", [True, False], ids=["short-of-places", "places-left"])
def test_a_poll_kept_waiting_too_long_goes_ahead_of_archive_calls_when_drops_wait(
    short: bool,
) -> None:
    """Polls that archive calls starve hold their drops' places at DIVA: when drops wait
    for places, the submissions would stall behind the polls after all. While places are
    left, the archive calls all go first: a poll would only take a POST's turn."""
    answers: queue.SimpleQueue[Outcome[Any]] = queue.SimpleQueue()
    now = [0.0]
    pool = Dispatcher(_Client(), answers.put, workers=1, clock=lambda: now[0])  # type: ignore[arg-type]
    pool.short_of_places = short
    ran: list[str] = []
    gate, started = threading.Event(), threading.Event()
    try:
        pool.run(_job(Submitted, "busy", ran, gate, started))
        assert started.wait(10)
        pool.run(_job(Polled, "old-poll", ran))
        now[0] = defaults.ENGINE_POLL_OVERDUE_SECONDS - 0.5
        for name in ("archive-1", "archive-2"):
            pool.run(_job(Submitted, name, ran))
        pool.run(_job(Polled, "new-poll", ran))
        now[0] = defaults.ENGINE_POLL_OVERDUE_SECONDS  # the first poll is overdue now
        gate.set()
        for _ in range(5):
            answers.get(timeout=10)
    finally:
        pool.shutdown()
    if short:
        # The overdue poll first; the one queued later is not overdue yet when its turn
        # comes after each archive call.
        assert ran == ["busy", "old-poll", "archive-1", "archive-2", "new-poll"]
    else:
        assert ran == ["busy", "archive-1", "archive-2", "old-poll", "new-poll"]


def test_threads_start_only_as_calls_need_them_up_to_the_limit() -> None:
    answers: queue.SimpleQueue[Outcome[Any]] = queue.SimpleQueue()
    pool = Dispatcher(_Client(), answers.put, workers=3)  # type: ignore[arg-type]
    ran: list[str] = []
    try:
        pool.run(_job(Submitted, "a", ran))
        answers.get(timeout=10)
        pool.run(_job(Submitted, "b", ran))  # the idle thread takes it
        answers.get(timeout=10)
        assert len(pool._threads) == 1
        gate = threading.Event()
        for name in "cdefg":
            pool.run(_job(Submitted, name, ran, gate))
        assert len(pool._threads) == 3, "five calls at once, three threads at most"
        gate.set()
        assert sorted(cast(str, answers.get(timeout=10).result) for _ in range(5)) == list("cdefg")
    finally:
        pool.shutdown()
    assert not any(t.is_alive() for t in pool._threads)


def test_shutdown_drops_the_jobs_not_started_and_takes_no_more() -> None:
    answers: queue.SimpleQueue[Outcome[Any]] = queue.SimpleQueue()
    pool = Dispatcher(_Client(), answers.put, workers=1)  # type: ignore[arg-type]
    ran: list[str] = []
    gate, started = threading.Event(), threading.Event()
    pool.run(_job(Submitted, "in-hand", ran, gate, started))
    assert started.wait(10)
    pool.run(_job(Submitted, "waiting", ran))
    stopper = threading.Thread(target=pool.shutdown)  # waits for the call in hand
    stopper.start()
    stopper.join(0.2)
    pool.run(_job(Submitted, "late", ran))
    gate.set()
    stopper.join(10)
    assert not stopper.is_alive()
    assert ran == ["in-hand"]
    assert answers.get(timeout=1).result == "in-hand"
    assert answers.empty()
