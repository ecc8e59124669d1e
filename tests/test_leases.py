"""Folder leases on a real PostgreSQL ledger (ingest.leases): nodes split the folders,
a silent node's folders pass to a live one at a higher epoch, a node name is one node's,
and fencing keeps a node that lost a folder from committing anything for it."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from ingest.leases import LeaseLost, Leases, NodeNameTaken, fence
from ingest.ledger import Ledger, State
from tests.support.cluster import UNLEASED_INTENTS_SQL
from tests.support.postgres import PASSWORD
from tests.support.wait import wait_for

WATCHES = ["/nas/a", "/nas/b", "/nas/c", "/nas/d"]


@pytest.fixture
def ledger(pg_url: str) -> Iterator[Ledger]:
    opened = Ledger.open(pg_url, password=PASSWORD)
    yield opened
    opened.close()


def _expired(ledger: Ledger, watch: str) -> bool:
    with ledger.batch() as tx:
        row = tx._execute(
            "SELECT expires_at <= EXTRACT(EPOCH FROM now()) FROM leases WHERE watch = ?",
            (watch,),
        ).fetchone()
    return bool(row and row[0])


def _intent(ledger: Ledger, node: Leases, held: dict[str, int], watch: str) -> int:
    """What the engine does for a drop's intent: fenced, then the row and its step."""
    with ledger.batch() as tx:
        fence(tx, node.node, held, [watch])
        drop_id = tx.add(rule="news", watch=watch, path="a.mxf", kind="file")
        tx.transition(drop_id, State.DETECTED, State.SUBMITTING, "intent", object_name="a")
    return drop_id


def test_two_nodes_split_four_folders_two_and_two(ledger: Ledger) -> None:
    a, b = Leases(ledger, "a", 30), Leases(ledger, "b", 30)
    a.join()
    assert sorted(a.tick(WATCHES).gained) == WATCHES  # alone: all of them
    b.join()
    assert a.tick(WATCHES).lost == {"/nas/c", "/nas/d"}  # b lives: a gives back its excess
    gained = b.tick(WATCHES).gained
    assert sorted(gained) == ["/nas/c", "/nas/d"] and all(e == 2 for e in gained.values())
    assert sorted(a.held) == ["/nas/a", "/nas/b"]
    assert a.tick(WATCHES) == b.tick(WATCHES)  # steady: nothing moves
    assert len(a.held) == len(b.held) == 2


def test_a_silent_node_loses_its_folders_to_a_live_one(ledger: Ledger) -> None:
    a, b = Leases(ledger, "a", 1.5), Leases(ledger, "b", 1.5)
    a.join()
    b.join()
    a.tick(WATCHES)
    b.tick(WATCHES)
    held_by_a = dict(a.held)
    assert len(held_by_a) == 2
    # a stops renewing (dead or frozen): once its leases expire on the database's clock,
    # b's ticks take them, each at a higher epoch.
    taken: dict[str, int] = {}
    wait_for(lambda: taken.update(b.tick(WATCHES).gained) or set(taken) == set(held_by_a), 30)
    assert all(taken[w] == held_by_a[w] + 1 for w in held_by_a)
    assert sorted(b.held) == WATCHES
    # a wakes up: its next tick reports every folder lost, and it takes none back while b
    # holds them all within its (now larger) share.
    tick = a.tick(WATCHES)
    assert tick.lost == set(held_by_a) and a.held == {}


def test_fencing_a_stale_epoch_cannot_write_an_intent(ledger: Ledger) -> None:
    a, b = Leases(ledger, "a", 1.0), Leases(ledger, "b", 30)
    a.join()
    a.tick(["/nas/a"])
    stale = dict(a.held)
    assert _intent(ledger, a, stale, "/nas/a")  # while held: the intent commits
    wait_for(lambda: _expired(ledger, "/nas/a"), 30)
    with pytest.raises(LeaseLost, match="/nas/a"):  # expired, not yet taken
        _intent(ledger, a, stale, "/nas/a")
    b.join()
    assert b.tick(["/nas/a"]).gained == {"/nas/a": stale["/nas/a"] + 1}
    before = ledger.counts()
    with pytest.raises(LeaseLost):
        _intent(ledger, a, stale, "/nas/a")
    assert ledger.counts() == before  # nothing of the fenced transaction committed
    # Even holding the name and folder again later, an old epoch stays fenced off.
    with pytest.raises(LeaseLost):
        _intent(ledger, b, stale, "/nas/a")
    assert _intent(ledger, b, dict(b.held), "/nas/a")


def test_a_fenced_write_in_hand_holds_the_lease_until_it_commits(ledger: Ledger) -> None:
    a, b = Leases(ledger, "a", 1.0), Leases(ledger, "b", 30)
    a.join()
    b.join()
    a.tick(["/nas/a"])
    held = dict(a.held)
    entered, done = threading.Event(), threading.Event()
    taken: list[dict[str, int]] = []

    with ledger.batch() as tx:
        fence(tx, "a", held, ["/nas/a"])
        wait_for(lambda: _expired(ledger, "/nas/a"), 30)

        def take() -> None:
            entered.set()
            taken.append(dict(b.tick(["/nas/a"]).gained))
            done.set()

        thread = threading.Thread(target=take)
        thread.start()
        assert done.wait(30)
        # SKIP LOCKED: the taker passed the row the fenced transaction holds FOR SHARE.
        assert taken == [{}]
        tx.add(rule="news", watch="/nas/a", path="late.mxf", kind="file")
    thread.join()
    assert b.tick(["/nas/a"]).gained == {"/nas/a": held["/nas/a"] + 1}


def test_a_second_live_node_of_one_name_is_refused(ledger: Ledger) -> None:
    first = Leases(ledger, "edit-1", 30)
    first.join()
    twin = Leases(ledger, "edit-1", 30)  # the name's holder is alive (this process)
    with pytest.raises(NodeNameTaken, match=rf'"edit-1".*pid {first.pid} on host'):
        twin.join()
    # A dead process's row (SIGKILLed, same host) does not block a restart.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    first.pid = dead.pid
    with ledger.batch() as tx:
        tx._write("UPDATE nodes SET pid = ? WHERE name = 'edit-1'", (dead.pid,))
    twin.join()
    with pytest.raises(NodeNameTaken, match="taken over"):
        first.tick(WATCHES)  # the old incarnation learns it was replaced


def test_each_intent_names_its_node_and_epoch_as_the_lease_history_has_them(
    ledger: Ledger,
) -> None:
    a, b = Leases(ledger, "a", 30), Leases(ledger, "b", 30)
    a.join()
    a.tick(WATCHES)
    b.join()
    a.tick(WATCHES)
    b.tick(WATCHES)  # b took c and d at epoch 2
    _intent(ledger, a, a.held, "/nas/a")
    _intent(ledger, b, b.held, "/nas/c")
    with ledger.batch() as tx:
        steps = tx._execute(
            "SELECT d.watch, t.to_state, t.node, t.epoch FROM transitions t "
            "JOIN drops d ON d.id = t.drop_id ORDER BY t.id"
        ).fetchall()
        takes = tx._execute(
            "SELECT watch, epoch, holder FROM lease_takes ORDER BY watch, epoch"
        ).fetchall()
        unleased = tx._execute(UNLEASED_INTENTS_SQL).fetchone()[0]
    assert [tuple(s) for s in steps] == [
        ("/nas/a", "DETECTED", "a", 1),
        ("/nas/a", "SUBMITTING", "a", 1),
        ("/nas/c", "DETECTED", "b", 2),
        ("/nas/c", "SUBMITTING", "b", 2),
    ]
    assert [tuple(t) for t in takes] == [
        ("/nas/a", 1, "a"), ("/nas/b", 1, "a"), ("/nas/c", 1, "a"), ("/nas/c", 2, "b"),
        ("/nas/d", 1, "a"), ("/nas/d", 2, "b"),
    ]  # fmt: skip
    assert unleased == 0
    # The counter sees a step whose node did not take the folder at that epoch.
    with ledger.batch() as tx:
        tx._write("UPDATE transitions SET node = 'a' WHERE epoch = 2 AND to_state = 'SUBMITTING'")
    with ledger.batch() as tx:
        assert tx._execute(UNLEASED_INTENTS_SQL).fetchone()[0] == 1


def _unheld(ledger: Ledger) -> list[str]:
    """The folders ``ingest status`` reports with no live holder (overview.cluster's read)."""
    with ledger.batch() as tx:
        rows = tx._execute(
            "SELECT watch FROM leases WHERE NOT expires_at > EXTRACT(EPOCH FROM now()) "
            "OR holder IS NULL ORDER BY watch"
        ).fetchall()
    return [str(w) for (w,) in rows]


def test_folders_no_rule_names_are_released_and_leave_status(ledger: Ledger) -> None:
    a, b = Leases(ledger, "a", 30), Leases(ledger, "b", 30)
    a.join()
    a.tick(WATCHES)
    # The rules no longer name c and d: a lets them go, and their rows leave the ledger.
    assert a.tick(WATCHES[:2]).lost == {"/nas/c", "/nas/d"}
    assert sorted(a.held) == ["/nas/a", "/nas/b"]
    with ledger.batch() as tx:
        rows = tx._execute("SELECT watch FROM leases ORDER BY watch").fetchall()
    assert [w for (w,) in rows] == ["/nas/a", "/nas/b"]
    assert _unheld(ledger) == []
    # Named again, each goes on from its last epoch: no epoch is given twice.
    assert a.tick(WATCHES).gained == {"/nas/c": 2, "/nas/d": 2}
    # A folder another node holds live stays, though this node's rules do not name it
    # (a reload that has not reached every node yet).
    b.join()
    b.tick(["/nas/x"])
    assert b.held == {"/nas/x": 1}
    a.tick(WATCHES)
    assert b.tick(["/nas/x"]).lost == frozenset()
    with ledger.batch() as tx:
        held = tx._execute("SELECT holder, epoch FROM leases WHERE watch = '/nas/x'").fetchall()
    assert [tuple(r) for r in held] == [("b", 1)]
