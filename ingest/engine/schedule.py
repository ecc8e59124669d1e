"""When live drops make their next DIVA call, and how many may be at DIVA at once.

The :class:`Schedule` is the Tracker's (see :mod:`.submissions`): it decides nothing about
a drop's life, it only orders the drops waiting for their next call and counts the places
they hold at DIVA.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from .. import defaults
from ..states import State
from .drops import Tracked

__all__ = ["IN_FLIGHT", "Schedule"]

#: the states of a drop holding a place at DIVA (counted against max_in_flight)
IN_FLIGHT = frozenset({State.SUBMITTING, State.SUBMITTED, State.RUNNING})


class Schedule:
    """When live drops make their next DIVA call, and how many may be at DIVA at once.

    The ready queue (rule priority, then age), polls and retries are heaps; an entry stays
    when its drop moves on, and the Tracker skips such stale entries as they come up. The
    in-flight count is one set of drop ids, changed only by :meth:`account`, from the
    drop's own state; capacity is ``max_in_flight`` less that count, none while DIVA is
    out (:meth:`pause`).
    """

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self._flying: set[int] = set()
        self._ready: list[tuple[int, int, int, Tracked]] = []  # (-priority, id, seq, drop)
        #: queued drops that already hold a place at DIVA (a request DIVA forgot, a restart
        #: mid-submission): they go first and need no free place, or a full house of them
        #: would wait for ever
        self._held: list[tuple[int, int, int, Tracked]] = []
        self._polls: list[tuple[float, int, Tracked, int]] = []  # (when, seq, drop, token)
        self._retries: list[tuple[float, int, Tracked, int]] = []
        self._seq = itertools.count()
        self._pause_until = 0.0

    def __repr__(self) -> str:
        return f"<Schedule in_flight={self.in_flight} ready={len(self._ready)}>"

    def clear(self) -> None:
        self._flying.clear()
        self._ready.clear()
        self._held.clear()
        self._polls.clear()
        self._retries.clear()

    # -- in flight --------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Drops holding a place at DIVA: submitted and not finished, or being asked about."""
        return len(self._flying)

    @staticmethod
    def holds(tr: Tracked) -> bool:
        """Whether the drop holds a place at DIVA, by its own state."""
        return tr.state in IN_FLIGHT or tr.asking in ("check", "rename")

    def account(self, tr: Tracked) -> None:
        if self.holds(tr):
            self._flying.add(tr.id)
        else:
            self._flying.discard(tr.id)

    def paused(self, now: float) -> bool:
        """True while DIVA is unreachable, refuses our login or says its queue is full:
        submit nothing."""
        return now < self._pause_until

    @property
    def pause_until(self) -> float:
        """When the pause in force ends (monotonic seconds; in the past when none is)."""
        return self._pause_until

    def pause(self, until: float) -> None:
        self._pause_until = max(self._pause_until, until)

    def capacity(self, now: float) -> int:
        return 0 if self.paused(now) else self.max_in_flight - self.in_flight

    # -- the queues -------------------------------------------------------------------

    @property
    def has_ready(self) -> bool:
        return bool(self._ready or self._held)

    def next_deadline(self, now: float) -> float | None:
        times = [t[0] for t in self._polls[:1]] + [t[0] for t in self._retries[:1]]
        if self._pause_until > now:
            times.append(self._pause_until)
        if (self._ready and self.capacity(now) > 0) or (self._held and not self.paused(now)):
            times.append(now)
        return min(times) if times else None

    def ready(self, tr: Tracked) -> None:
        default = defaults.ENGINE_QUEUE_DEFAULT_PRIORITY
        priority = tr.priority if tr.priority and tr.priority > 0 else default
        queue = self._held if self.holds(tr) else self._ready
        heapq.heappush(queue, (-priority, tr.id, next(self._seq), tr))

    def poll_at(self, tr: Tracked, when: float) -> None:
        heapq.heappush(self._polls, (when, next(self._seq), tr, tr.token))

    def retry_at(self, tr: Tracked, when: float) -> None:
        heapq.heappush(self._retries, (when, next(self._seq), tr, tr.token))

    def next_ready(self) -> Tracked | None:
        return heapq.heappop(self._ready)[-1] if self._ready else None

    def next_held(self) -> Tracked | None:
        return heapq.heappop(self._held)[-1] if self._held else None

    def due_retries(self, now: float) -> Iterator[tuple[Tracked, int]]:
        while self._retries and self._retries[0][0] <= now:
            _, _, tr, token = heapq.heappop(self._retries)
            yield tr, token

    def due_polls(self, now: float) -> Iterator[tuple[Tracked, int]]:
        while self._polls and self._polls[0][0] <= now:
            _, _, tr, token = heapq.heappop(self._polls)
            yield tr, token
