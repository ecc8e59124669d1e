"""Sending messages through Apprise on a thread of their own, with retries, then giving up.

Each message goes to each URL on its own (one Apprise object per URL), so a receiver
that fails is retried without sending the message again to those that took it. A try
that fails is retried after ``NOTIFY_RETRY_SECONDS``, doubled each time, up to
``NOTIFY_ATTEMPTS`` tries; then the message is dropped for that URL, logged (the URL
shown without its credentials) and counted. Messages wait in a bounded queue: a
receiver down for long loses the oldest, counted the same way, and never holds memory
nor anyone else up. ``ingest_notifications_total{outcome}`` counts, per message and URL:
``sent``, ``retried`` (a failed try that will be tried again) and ``dropped``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import apprise
from prometheus_client import CollectorRegistry, Counter

from .. import defaults
from .urls import Scrub, secrets_of, shown

__all__ = ["Message", "Sender"]

log = logging.getLogger("ingest.notify")

OUTCOMES = ("sent", "retried", "dropped")


@dataclass(frozen=True)
class Message:
    title: str
    body: str
    alarm: bool = True  # an alarm goes out as a failure, a recovery as info


class Sender:
    """The sending thread: :meth:`put` never blocks; :meth:`stop` gives the queue a while."""

    def __init__(
        self,
        urls: tuple[str, ...],
        registry: CollectorRegistry,
        *,
        attempts: int = defaults.NOTIFY_ATTEMPTS,
        retry_seconds: float = defaults.NOTIFY_RETRY_SECONDS,
    ) -> None:
        self.counts = Counter(
            "ingest_notifications", "Notification messages, per URL: sent, retried, dropped.",
            ["outcome"], registry=registry,
        )  # fmt: skip
        for outcome in OUTCOMES:
            self.counts.labels(outcome)  # 0 until it happens, rather than absent
        self.attempts = attempts
        self.retry_seconds = retry_seconds
        self._targets: list[tuple[str, apprise.Apprise]] = []
        for url in urls:
            target = apprise.Apprise()
            target.add(url)
            self._targets.append((shown(url), target))
        # Apprise names what it sends to in its log lines: never with the credentials.
        self._scrub = Scrub(secrets_of(urls))
        apprise_log = logging.getLogger("apprise")
        apprise_log.addFilter(self._scrub)
        if apprise_log.level == logging.NOTSET:
            apprise_log.setLevel(logging.WARNING)  # not its payloads, at DEBUG
        self._queue: queue.Queue[Message] = queue.Queue(defaults.NOTIFY_QUEUE_MESSAGES)
        self._deadline: float | None = None  # monotonic; set by stop()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-notify-send", daemon=True)

    def __repr__(self) -> str:
        return f"<Sender to {', '.join(name for name, _ in self._targets)}>"

    def start(self) -> Sender:
        self._thread.start()
        return self

    def put(self, message: Message) -> None:
        """Queue ``message``; when the queue is full, the oldest waiting one is dropped."""
        while True:
            try:
                self._queue.put_nowait(message)
                return
            except queue.Full:
                try:
                    lost = self._queue.get_nowait()
                except queue.Empty:
                    continue
                log.warning("notification dropped, too many waiting: %s", lost.title)
                self.counts.labels("dropped").inc(len(self._targets))

    def stop(self, within: float = defaults.NOTIFY_STOP_SECONDS) -> None:
        """Send what is queued for at most ``within`` seconds more, then drop the rest."""
        self._deadline = time.monotonic() + within
        self._stopping.set()
        if self._thread.ident is not None:  # started
            self._thread.join(within + 1)
        left = self._queue.qsize()
        if left:
            self.counts.labels("dropped").inc(left * len(self._targets))
        if left or self._thread.is_alive():
            log.warning("stopping: %d notification(s) not sent", left + self._thread.is_alive())
        logging.getLogger("apprise").removeFilter(self._scrub)

    def _run(self) -> None:
        while True:
            try:
                message = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            for name, target in self._targets:
                self._send(name, target, message)

    def _send(self, name: str, target: apprise.Apprise, message: Message) -> None:
        kind = apprise.NotifyType.FAILURE if message.alarm else apprise.NotifyType.INFO
        wait = self.retry_seconds
        tries = 0
        for attempt in range(1, self.attempts + 1):
            if self._past_deadline():
                break
            tries = attempt
            try:
                sent = target.notify(
                    body=message.body, title=message.title, notify_type=kind,
                    body_format=apprise.NotifyFormat.TEXT,
                )  # fmt: skip
                ok = bool(sent)
            except Exception as exc:  # a plugin's bug must not end the sending thread
                log.warning("notification to %s raised %s", name, type(exc).__name__)
                ok = False
            if ok:
                self.counts.labels("sent").inc()
                log.info("notification sent to %s: %s", name, message.title)
                return
            if attempt == self.attempts:
                break
            self.counts.labels("retried").inc()
            log.warning(
                "notification to %s failed (try %d of %d), retrying in %g s",
                name, attempt, self.attempts, wait,
            )  # fmt: skip
            if self._wait(wait):
                break
            wait *= 2
        self.counts.labels("dropped").inc()
        log.error("notification to %s dropped after %d tries: %s", name, tries, message.title)

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _wait(self, seconds: float) -> bool:
        """Wait ``seconds``, or less at shutdown; True when the stop deadline is reached."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._deadline is not None:
                left = min(left, self._deadline - time.monotonic())
                if left <= 0:
                    return True
            time.sleep(min(left, 0.2))
        return self._past_deadline()
