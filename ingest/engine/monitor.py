"""What the engine shows the outside: a :class:`Snapshot` it publishes after each turn, and
the metrics only its own thread can measure (DIVA calls, ledger commits).

The status page, ``/healthz`` and ``/metrics`` (:mod:`ingest.web`) run on other threads.
They never ask the engine anything and never wait for it: they read
:attr:`Monitor.snapshot`, an immutable value the engine replaces whole after each turn
(one reference assignment, atomic under the GIL), and read the ledger themselves through
their own read-only connection. The page of a busy or stuck engine answers at once, and
says how long ago the engine last turned.

Metrics live in a :class:`~prometheus_client.CollectorRegistry` of the monitor's own, not
the process-wide one, so several engines in one process (the tests) do not collide.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from ..errors import (
    DivaAuthError,
    DivaError,
    DivaProtocolError,
    DivaRefused,
    DivaServerError,
    DivaStatusTransient,
    DivaUnavailable,
)
from .dispatch import Checked, Job, Polled, Renamed, Submitted

if TYPE_CHECKING:
    from ..client import DivaClient
    from ..ledger import Batch
    from .folders import Folder
    from .schedule import Schedule

__all__ = ["DivaView", "FolderView", "Monitor", "Snapshot"]

#: a job's answer type -> the ``call`` label of its metrics
CALLS: dict[type[Any], str] = {
    Submitted: "archive",
    Polled: "poll",
    Checked: "reconcile",
    Renamed: "rename",
}

#: seconds; DIVA calls span a LAN round trip to a timed-out call (30 s by default)
DIVA_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: seconds; a commit is an fsync or two, slow disks and network storage take longer
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


def outcome_of(error: BaseException | None) -> str:
    """The ``outcome`` label of a DIVA call: ``ok`` or the kind of failure.

    >>> outcome_of(None), outcome_of(DivaUnavailable("down"))
    ('ok', 'unreachable')
    """
    if error is None:
        return "ok"
    for kind, label in (
        (DivaUnavailable, "unreachable"),
        (DivaAuthError, "auth"),
        (DivaServerError, "server_error"),
        (DivaStatusTransient, "transient"),
        (DivaRefused, "refused"),
        (DivaProtocolError, "protocol"),
    ):
        if isinstance(error, kind):
            return label
    return "error"


@dataclass(frozen=True)
class FolderView:
    """One watch folder as the engine sees it now."""

    watch: str
    observer: str  # native | polling
    health: str  # ok | paused | down
    detail: str  # why it is paused or down ("" when ok)

    @property
    def up(self) -> bool:
        return self.health == "ok"


@dataclass(frozen=True)
class DivaView:
    """Whether DIVA answered the engine's latest call (None: no call yet)."""

    reachable: bool | None
    detail: str
    at: float | None  # epoch seconds of that call's end


@dataclass(frozen=True)
class Snapshot:
    """The engine's state after its latest turn; immutable, safe to read from any thread."""

    started_at: float  # epoch seconds
    turned_at: float | None  # epoch seconds of the latest turn's end; None before the first
    turns: int
    ledger_error: str | None  # the latest failed write's reason, until a write succeeds
    diva: DivaView
    folders: tuple[FolderView, ...]
    ready_queue: int  # drops settled and waiting for a place at DIVA
    in_flight: int  # drops holding a place at DIVA

    def since_turn(self, now: float) -> float | None:
        """Seconds since the latest turn, or None before the first."""
        return None if self.turned_at is None else max(0.0, now - self.turned_at)

    @property
    def paused(self) -> tuple[FolderView, ...]:
        return tuple(f for f in self.folders if not f.up)


class Monitor:
    """The engine's side of what :mod:`ingest.web` shows; one per engine."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.diva_calls = Counter(
            "ingest_diva_calls", "DIVA calls made, by call and outcome.",
            ["call", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.diva_seconds = Histogram(
            "ingest_diva_call_seconds", "How long DIVA calls took, seconds.",
            ["call"], buckets=DIVA_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.commit_seconds = Histogram(
            "ingest_ledger_commit_seconds",
            "How long the engine's ledger commits took (turns that wrote), seconds.",
            buckets=COMMIT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        started = time.time()
        self._diva = DivaView(None, "no call to DIVA yet", None)
        self._ledger_error: str | None = None
        self._turns = 0
        self.snapshot = Snapshot(started, None, 0, None, self._diva, (), 0, 0)

    def __repr__(self) -> str:
        return f"<Monitor turns={self._turns}>"

    # -- called by the engine, on its thread ---------------------------------------------

    def publish(self, folders: Iterable[Folder], schedule: Schedule) -> None:
        """Replace the snapshot with the engine's state now (after a turn)."""
        self._turns += 1
        views = tuple(
            FolderView(
                f.watch, f.observer, "paused" if f.paused else f.health,
                f.paused or (f.detail if f.health != "ok" else ""),
            )
            for f in folders
        )  # fmt: skip
        # The ready heaps keep entries of drops that moved on until they come up: the
        # count is the queue's length, an upper bound that settles as the queue drains.
        ready = len(schedule._ready) + len(schedule._held)
        self.snapshot = Snapshot(
            self.snapshot.started_at, time.time(), self._turns, self._ledger_error,
            self._diva, views, ready, schedule.in_flight,
        )  # fmt: skip

    @staticmethod
    def commit_starts(tx: Batch) -> tuple[float, bool]:
        """The mark :meth:`committed` takes: now, and whether the transaction wrote (a turn
        that wrote nothing commits nothing, and proves nothing about the ledger)."""
        return time.perf_counter(), tx.wrote

    def committed(self, mark: tuple[float, bool]) -> None:
        """A turn's transaction committed; ``mark`` is :meth:`commit_starts`'s."""
        began, wrote = mark
        if wrote:
            self.commit_seconds.observe(time.perf_counter() - began)
            self._ledger_error = None

    def ledger_failed(self, error: BaseException) -> None:
        self._ledger_error = str(error)

    def timed(self, job: Job[Any]) -> Job[Any]:
        """``job``, counted and timed when it runs (on a dispatcher thread)."""
        call = CALLS.get(job.answer, job.answer.__name__.lower())
        inner = job.call

        def timed_call(client: DivaClient) -> Any:
            began = time.perf_counter()
            error: BaseException | None = None
            try:
                return inner(client)
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._called(call, error, time.perf_counter() - began)

        return replace(job, call=timed_call)

    def _called(self, call: str, error: BaseException | None, seconds: float) -> None:
        outcome = outcome_of(error)
        self.diva_calls.labels(call, outcome).inc()
        self.diva_seconds.labels(call).observe(seconds)
        if outcome == "unreachable":
            detail = str(error) or "DIVA could not be reached"
            self._diva = DivaView(False, detail, time.time())
        elif outcome == "auth":
            self._diva = DivaView(True, "DIVA refuses the login", time.time())
        elif isinstance(error, DivaError) or error is None:
            self._diva = DivaView(True, "DIVA answered", time.time())
