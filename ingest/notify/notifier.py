"""The notifier: ``[notify]`` beside the engine, on threads of its own.

Two threads of their own, none of the engine's time:

- the **notifier** looks every second at what the engine already publishes (the ledger's
  transitions, its snapshot, the ``rules_state`` row: :class:`~.events.Lookout`) and
  gathers what is news for ``digest_seconds``; then the window's events become one
  message (:func:`~.events.digest`): a thousand failures send one message, not a thousand;
- the **sender** (:class:`~.sender.Sender`) sends each message to each URL, retrying a
  few times with backoff, then drops it, logged and counted.

The engine never calls either and never waits for them: a receiver that hangs delays
only the messages behind it.

    with notifying(config, engine.monitor):
        engine.run()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .. import defaults, overview, queries
from ..config import NotifyConfig, ServiceConfig
from ..errors import LedgerError
from .events import Event, Lookout, digest
from .sender import Message, Sender
from .urls import shown

if TYPE_CHECKING:
    from ..engine.monitor import Monitor

__all__ = ["Notifier", "notifying"]

log = logging.getLogger("ingest.notify")


class Notifier:
    """Gathers events into digests and hands them to its :class:`Sender`."""

    def __init__(
        self,
        config: NotifyConfig,
        monitor: Monitor,
        ledger: queries.LedgerAt,
        *,
        stuck_after: float,
        look_seconds: float = defaults.NOTIFY_LOOK_SECONDS,
    ) -> None:
        self.config = config
        self.look_seconds = look_seconds
        self.lookout = Lookout(
            monitor, ledger, events=config.events,
            outage_after=config.outage_after_seconds, stuck_after=stuck_after,
        )  # fmt: skip
        self.sender = Sender(config.urls, monitor.registry)
        self._pending: list[Event] = []
        self._window_ends: float | None = None  # monotonic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-notify", daemon=True)
        self._failing = False

    def __repr__(self) -> str:
        return f"<Notifier {len(self._pending)} pending>"

    def start(self) -> Notifier:
        self.sender.start()
        self._thread.start()
        targets = ", ".join(shown(url) for url in self.config.urls)
        log.info(
            "notifications to %s (%s; digest every %g s)",
            targets, ", ".join(sorted(self.config.events)), self.config.digest_seconds,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        """Look once more, send what was gathered (a while at most), then stop."""
        self._stop.set()
        self._thread.join(defaults.NOTIFY_STOP_SECONDS)
        self.sender.stop()

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            self._look()
            now = time.monotonic()
            if self._pending and (
                stopping or (self._window_ends is not None and now >= self._window_ends)
            ):
                self._flush()
            if stopping:
                return
            self._stop.wait(self.look_seconds)

    def _look(self) -> None:
        try:
            found = self.lookout.look(time.time())
        except LedgerError as exc:
            # The ledger is the engine's to worry about (/healthz, the log); once said here.
            if not self._failing:
                log.warning("notifications: cannot read the ledger: %s", exc)
            self._failing = True
            return
        self._failing = False
        if found and not self._pending:
            self._window_ends = time.monotonic() + self.config.digest_seconds
        self._pending += found

    def _flush(self) -> None:
        events, self._pending, self._window_ends = self._pending, [], None
        title, body = digest(events)
        self.sender.put(Message(title, body, alarm=any(e.alarm for e in events)))


@contextmanager
def notifying(config: ServiceConfig, monitor: Monitor) -> Iterator[Notifier | None]:
    """The notifier for ``config``'s ``[notify]`` while the block runs (None when off)."""
    ledger = queries.readable_ledger(config)
    if config.notify is None or ledger is None:
        if config.notify is not None:
            log.warning("[notify]: the ledger is in memory; notifications need a ledger file")
        yield None
        return
    stuck_after = overview.stuck_after(config)
    notifier = Notifier(config.notify, monitor, ledger, stuck_after=stuck_after).start()
    try:
        yield notifier
    finally:
        notifier.stop()
