"""Settling: deciding when a drop is complete, with one timer heap for every drop.

A drop is complete when its signature (size, newest mtime, file count) has not changed
for its rule's settle window. Events and scans only *report* that something may have
changed (:meth:`Settler.touch`) or what they saw (:meth:`Settler.observe`); the
engine re-reads the drop when its timer fires (:meth:`Settler.due`) and hands the fresh
signature to :meth:`Settler.check`, which says whether the drop is complete.

No thread per file: tens of thousands of settling drops cost one heap entry each, and a
file written a million times while it copies costs one timestamp update per event, not a
heap push.

>>> s = Settler()
>>> s.observe("a.mxf", (10, 1, 1), settle=5.0, now=0.0)
>>> s.due(now=4.0)
[]
>>> s.due(now=5.0)
['a.mxf']
>>> s.check("a.mxf", (10, 1, 1), now=5.0)
True
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Iterator
from dataclasses import dataclass

__all__ = ["Settler", "Signature"]

#: (total size in bytes, newest mtime in ns, number of files); None: could not be read
Signature = tuple[int, int, int]


@dataclass(slots=True)
class _Entry:
    signature: Signature | None
    changed_at: float  # when a change was last seen (monotonic seconds)
    settle: float
    scheduled: float  # the due time of this entry's live heap item


class Settler:
    """Timers for drops that are settling, keyed by any hashable drop key."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, _Entry] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __repr__(self) -> str:
        return f"<Settler settling={len(self._entries)}>"

    def _push(self, key: Hashable, entry: _Entry, when: float) -> None:
        entry.scheduled = when
        heapq.heappush(self._heap, (when, next(self._seq), key))

    def touch(self, key: Hashable, *, settle: float, now: float) -> None:
        """Something in the drop may have changed (an event): restart its settle window."""
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(None, now, settle, 0.0)
            self._entries[key] = entry
            self._push(key, entry, now + settle)
            return
        entry.changed_at = now
        entry.settle = settle
        # The live heap item fires early and re-arms itself (see due), so no push here.

    def observe(self, key: Hashable, signature: Signature, *, settle: float, now: float) -> None:
        """A scan saw the drop with this signature: start or restart its window if it differs."""
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(signature, now, settle, 0.0)
            self._entries[key] = entry
            self._push(key, entry, now + settle)
            return
        entry.settle = settle
        if entry.signature != signature:
            entry.signature = signature
            entry.changed_at = now

    def due(self, now: float) -> list[Hashable]:
        """Keys whose window has run out: the engine should re-read them and call check."""
        ready: list[Hashable] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is None or entry.scheduled != when:
                continue  # forgotten, or superseded by a later item
            deadline = entry.changed_at + entry.settle
            if deadline > now:
                self._push(key, entry, deadline)
                continue
            ready.append(key)
        return ready

    def check(
        self, key: Hashable, signature: Signature | None, *, now: float, vouched: bool = False
    ) -> bool:
        """Compare a fresh read with the last one: True when the drop is complete.

        A drop that changed is re-armed for another full window, unless ``vouched``: the
        caller saw no event for the whole window from a live native watcher (which reports
        every write) and the drop's newest mtime is older than the window, so the change
        is one our earlier read caught mid-copy, not a new one. A drop that is complete is
        forgotten (the engine takes it from here); so is one that can no longer be read
        (``signature=None``): the engine decides what vanishing means.
        """
        entry = self._entries.get(key)
        if entry is None:
            return False
        if signature is None:
            self.forget(key)
            return False
        if entry.signature != signature and vouched and now - entry.changed_at >= entry.settle:
            self.forget(key)
            return True
        if entry.signature != signature:
            entry.signature = signature
            entry.changed_at = now
            self._push(key, entry, now + entry.settle)
            return False
        if now - entry.changed_at < entry.settle:
            self._push(key, entry, entry.changed_at + entry.settle)
            return False
        self.forget(key)
        return True

    def recheck(self, key: Hashable, *, after: float, now: float) -> None:
        """Keep a complete-but-waiting drop (e.g. for its ready marker) and look again later."""
        entry = self._entries.get(key)
        if entry is not None:
            self._push(key, entry, now + after)

    def forget(self, key: Hashable) -> None:
        """Stop tracking a drop (its heap item is dropped lazily)."""
        self._entries.pop(key, None)

    def next_deadline(self) -> float | None:
        """When :meth:`due` may next return something (for the engine's sleep)."""
        while self._heap:
            when, _, key = self._heap[0]
            entry = self._entries.get(key)
            if entry is None or entry.scheduled != when:
                heapq.heappop(self._heap)
                continue
            return when
        return None

    def __iter__(self) -> Iterator[Hashable]:
        """The keys of the drops settling now (a copy: safe to forget while iterating)."""
        return iter(list(self._entries))
