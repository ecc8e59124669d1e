"""The rule-1 checker itself (``tests/support/intents.py``), against a real ledger written
through ``ingest.ledger``: a check that cannot fail would prove nothing in the engine,
restart and chaos tests that rely on it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.ledger import Ledger, State

from .support.intents import IntentChecker, intent_commits_delayed


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def checker(tmp_path: Path) -> Iterator[IntentChecker]:
    found = IntentChecker(lambda: tmp_path / "ledger.db").start()
    try:
        yield found
    finally:
        found.close()


def detect(ledger: Ledger, name: str, **fields: Any) -> int:
    with ledger.batch() as tx:
        return tx.add(rule="news", watch="/w", path=f"{name}.mxf", object_name=name,
                      collection="NEWS", **fields)  # fmt: skip


def intend(ledger: Ledger, drop_id: int, from_state: str = State.DETECTED) -> None:
    with ledger.batch() as tx:
        tx.transition(drop_id, from_state, State.SUBMITTING, "attempt")


def test_a_call_needs_a_committed_intent_of_its_own(ledger: Ledger, checker: IntentChecker) -> None:
    drop = detect(ledger, "clip")
    assert checker.judge("clip", "NEWS").verdict == "violation"  # DETECTED only
    intend(ledger, drop)
    assert checker.judge("clip", "NEWS").verdict == "ok"
    assert checker.judge("clip", "NEWS").verdict == "violation"  # that intent is used up
    with ledger.batch() as tx:
        tx.transition(drop, State.SUBMITTING, State.RETRY_WAIT, "1032")
    intend(ledger, drop, State.RETRY_WAIT)
    assert checker.judge("clip", "NEWS").verdict == "ok"  # the second attempt's own
    assert checker.judge("clip", "SPORT").verdict == "unseen"  # another collection's
    problems = checker.problems()
    assert len(problems) == 2 and all("no committed intent left" in p for p in problems)


def test_an_uncommitted_intent_is_not_seen(ledger: Ledger, checker: IntentChecker) -> None:
    drop = detect(ledger, "racing")
    with ledger.batch() as tx:
        tx.transition(drop, State.DETECTED, State.SUBMITTING, "attempt")
        # The call reaches DIVA before this transaction commits.
        assert checker.judge("racing", "NEWS").verdict == "violation"
    assert checker.judge("racing", "NEWS").verdict == "ok"  # the committed one, later


def test_a_call_before_any_row_is_judged_by_when_the_drop_was_detected(
    ledger: Ledger, checker: IntentChecker
) -> None:
    # A test's own archive of a name the daemon meets later: not the daemon's call.
    assert checker.judge("theirs", "NEWS").verdict == "unseen"
    time.sleep(0.01)  # the drop is detected after the call, by the clock
    detect(ledger, "theirs")
    # A drop detected before the call, yet with no committed row when it arrived: it was
    # detected and sent in one uncommitted turn.
    with ledger.batch() as tx:
        detected = time.time()
        arrival = checker.judge("ours", "NEWS")
        tx.add(rule="news", watch="/w", path="ours.mxf", object_name="ours",
               collection="NEWS", detected_at=detected)  # fmt: skip
    assert arrival.verdict == "unseen"
    [problem] = checker.problems()
    assert "'ours'" in problem and "one uncommitted turn" in problem


def test_every_archive_request_diva_took_was_heard_of(
    tmp_path: Path, ledger: Ledger, checker: IntentChecker
) -> None:
    db = tmp_path / "emulator.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE requests (type TEXT, object_name TEXT, collection TEXT)")
        conn.executemany(
            "INSERT INTO requests VALUES (?, ?, ?)",
            [("archive", "heard", "NEWS"), ("archive", "unheard", "NEWS"),
             ("restore", "heard", "NEWS")],
        )  # fmt: skip
        conn.commit()
    checker.observe(db)
    intend(ledger, detect(ledger, "heard"))
    # Through the hook's HTTP face, as the emulator calls it.
    answer = httpx.post(checker.url, json={"objectName": "heard", "collectionName": "NEWS",
                                           "components": ["heard.mxf"]}, timeout=10)  # fmt: skip
    assert answer.status_code == 200 and answer.json()["verdict"] == "ok"
    [problem] = checker.problems()
    assert "'unheard'" in problem and "the hook heard of 0" in problem


def test_a_call_it_cannot_judge_is_an_error(checker: IntentChecker) -> None:
    answer = httpx.post(checker.url, json={"no": "name"}, timeout=10)
    assert answer.status_code == 500
    [problem] = checker.problems()
    assert "could not judge" in problem


def test_an_intent_whose_call_never_arrived_does_not_excuse_an_early_call(
    ledger: Ledger, checker: IntentChecker
) -> None:
    drop = detect(ledger, "again")
    intend(ledger, drop)  # attempt 1: its call was refused before it reached DIVA
    with ledger.batch() as tx:
        tx.transition(drop, State.SUBMITTING, State.RETRY_WAIT, "refused by the proxy")
    verdicts: list[str] = []
    with intent_commits_delayed(1.0), ledger.batch() as tx:
        tx.transition(drop, State.RETRY_WAIT, State.SUBMITTING, "attempt 2")
        # Attempt 2's call lands while its intent's commit is still held.
        timer = threading.Timer(
            0.05, lambda: verdicts.append(checker.judge("again", "NEWS").verdict)
        )
        timer.start()
    timer.join()
    assert verdicts == ["violation"]
    assert checker.judge("again", "NEWS").verdict == "ok"  # once committed, it is attempt 2's
    [problem] = checker.problems()
    assert "its next intent not yet committed" in problem


def test_commits_carrying_an_intent_are_held(ledger: Ledger) -> None:
    drop = detect(ledger, "slow")
    with intent_commits_delayed(1.0):
        started = time.monotonic()
        with ledger.batch() as tx:
            tx.update(drop, progress=1)
        plain = time.monotonic() - started
        seen: list[str] = []
        with ledger.batch() as tx:
            tx.transition(drop, State.DETECTED, State.SUBMITTING, "attempt")
            # A call sent now (inside the turn) lands while the commit is held.
            timer = threading.Timer(0.05, lambda: seen.append(read_state(ledger)))
            timer.start()
            started = time.monotonic()
        held = time.monotonic() - started
        timer.join()
    assert plain < 1.0 <= held
    assert seen == ["DETECTED"]
    assert read_state(ledger) == "SUBMITTING"


def read_state(ledger: Ledger) -> str:
    assert ledger.path is not None
    uri = f"{ledger.path.as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        (state,) = conn.execute("SELECT state FROM drops").fetchone()
    return str(state)
