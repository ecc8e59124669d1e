"""Settling: the timer heap decides when a drop is complete, with explicit clocks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

from ingest.engine.folders import Folder
from ingest.rules import Rule
from ingest.settle import Settler
from ingest.watch import NativeWatcher


def test_stable_drop_is_complete_after_its_window() -> None:
    s = Settler()
    s.observe("a", (10, 1, 1), settle=5.0, now=100.0)
    assert s.due(now=104.9) == []
    assert s.due(now=105.0) == ["a"]
    assert s.check("a", (10, 1, 1), now=105.0) is True
    assert "a" not in s and len(s) == 0


def test_a_growing_file_is_never_complete() -> None:
    s = Settler()
    s.observe("a", (1, 1, 1), settle=5.0, now=0.0)
    size = 1
    now = 0.0
    for _ in range(50):
        now += 5.0
        assert s.due(now=now) == ["a"]
        size += 1  # grew by a byte since the last look: however slow, it is not done
        assert s.check("a", (size, size, 1), now=now) is False
    assert s.due(now=now + 4.9) == []
    assert s.due(now=now + 5.0) == ["a"]
    assert s.check("a", (size, size, 1), now=now + 5.0) is True


def test_events_restart_the_window_without_growing_the_heap() -> None:
    s = Settler()
    s.observe("a", (1, 1, 1), settle=5.0, now=0.0)
    for i in range(10_000):
        s.touch("a", settle=5.0, now=i * 0.0004)  # a burst of write events within 4 s
    assert len(s._heap) == 1
    assert s.due(now=5.0) == []  # the last event was at ~4 s: the window runs to ~9 s
    assert s.due(now=8.9) == []
    assert s.due(now=9.0) == ["a"]


def test_a_touch_creates_an_entry_that_must_be_read_before_it_counts() -> None:
    s = Settler()
    s.touch("new", settle=2.0, now=0.0)
    assert s.due(now=2.0) == ["new"]
    # The first read has nothing to compare with: it starts a window, it does not end one.
    assert s.check("new", (5, 5, 1), now=2.0) is False
    assert s.due(now=4.0) == ["new"]
    assert s.check("new", (5, 5, 1), now=4.0) is True


def test_a_scan_that_sees_a_change_restarts_the_window() -> None:
    s = Settler()
    s.observe("f", (100, 1, 10), settle=3.0, now=0.0)
    s.observe("f", (100, 1, 11), settle=3.0, now=2.0)  # one more file in the folder
    assert s.due(now=3.0) == []
    assert s.due(now=5.0) == ["f"]
    assert s.check("f", (100, 1, 11), now=5.0) is True


def test_vanished_and_forgotten_drops_are_dropped() -> None:
    s = Settler()
    s.observe("a", (1, 1, 1), settle=1.0, now=0.0)
    s.observe("b", (1, 1, 1), settle=1.0, now=0.0)
    s.forget("a")
    assert s.due(now=1.0) == ["b"]
    assert s.check("b", None, now=1.0) is False
    assert len(s) == 0
    assert s.next_deadline() is None


def test_many_drops_come_due_in_deadline_order() -> None:
    s = Settler()
    for i in range(20_000):
        s.observe(i, (i, i, 1), settle=float(i % 7), now=0.0)
    assert s.next_deadline() == 0.0
    seen: list[int] = []
    for t in range(7):
        batch = cast(list[int], s.due(now=float(t)))  # the keys observed above are ints
        # Exactly the drops whose deadline is t: none early, none held back.
        assert sorted(batch) == list(range(t, 20_000, 7)), t
        seen.extend(batch)
    assert sorted(seen) == list(range(20_000))
    assert seen.index(7) < seen.index(1)  # settle 0 comes before settle 1


def test_a_change_caught_mid_copy_is_vouched_for_by_a_quiet_native_watcher() -> None:
    s = Settler()
    s.observe("a", (0, 1, 1), settle=1.0, now=0.0)  # read at the "created" event: empty
    s.touch("a", settle=1.0, now=0.1)  # the write and close events
    assert s.due(now=1.1) == ["a"]
    # Without the watcher's word, the first full size restarts the window...
    assert s.check("a", (500, 2, 1), now=1.1) is False
    s2 = Settler()
    s2.observe("a", (0, 1, 1), settle=1.0, now=0.0)
    s2.touch("a", settle=1.0, now=0.1)
    assert s2.due(now=1.1) == ["a"]
    # ...with it (no event for a whole window, mtime older than the window) it is done.
    assert s2.check("a", (500, 2, 1), now=1.1, vouched=True) is True


def test_a_quiet_native_watcher_vouches_only_for_a_drop_whose_mtime_is_as_old_as_the_window(
    tmp_path: Path,
) -> None:
    """The vouch needs both: no event for a whole window *and* a newest mtime that old. A
    fresh mtime with no event means a write the watcher did not report (NFS, mmap...), so
    the drop may still be growing: it must settle again, not be trusted."""
    rule = Rule(name="r", watch=tmp_path, match=("*.mxf",), collection="C", media="M",
                source_server="S", settle_seconds=2.0)  # fmt: skip
    watcher = NativeWatcher(str(tmp_path), lambda watch, path: None)
    watcher.start()
    try:
        folder = Folder(str(tmp_path), (rule,), "native", "test", watcher=watcher)
        now_ns = time.time_ns()
        assert folder.vouches((500, now_ns - 3_000_000_000, 1))  # 3 s old: vouched
        assert not folder.vouches((500, now_ns, 1))  # written just now: not vouched
        assert not folder.vouches(None)
        watcher.stop()
        assert not folder.vouches((500, now_ns - 3_000_000_000, 1))  # no live watcher
    finally:
        watcher.stop()
