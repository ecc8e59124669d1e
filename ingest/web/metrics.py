"""``/metrics``: Prometheus text format, from the engine's monitor and the ledger.

Three sources, one registry (the engine's own, :attr:`Monitor.registry`):

- what only the engine can time, recorded as it happens: ``ingest_diva_calls_total``,
  ``ingest_diva_call_seconds``, ``ingest_ledger_commit_seconds`` (:mod:`ingest.engine.monitor`);
- what the ledger records, followed at each scrape from the last transition seen
  (:class:`~ingest.follow.Follower`: the cost is the transitions since the last scrape):
  ``ingest_transitions_total`` and ``ingest_settle_to_submit_seconds``;
- what is true now, read at each scrape: ``ingest_drops`` (the ledger's counts),
  ``ingest_folder_up``, ``ingest_ready_queue``, ``ingest_in_flight`` (the snapshot),
  ``ingest_rules_refused`` (the ``rules_state`` row).

No label ever holds a secret: rules, states, watch folders and call names only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from prometheus_client import Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import overview, queries
from ..engine.monitor import Monitor
from ..follow import Follower

__all__ = ["LedgerMetrics"]

#: seconds; from a few seconds of settling in a burst to hours of an outage
SETTLE_TO_SUBMIT_BUCKETS = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0,
)  # fmt: skip


class LedgerMetrics:
    """The metrics of one engine, rendered for a scrape; safe from several threads."""

    def __init__(self, monitor: Monitor, ledger: queries.LedgerAt) -> None:
        self.monitor = monitor
        self.ledger = ledger
        registry = monitor.registry
        self.transitions = Counter(
            "ingest_transitions", "Drop state transitions since the daemon started.",
            ["rule", "state"], registry=registry,
        )  # fmt: skip
        self.settle_to_submit = Histogram(
            "ingest_settle_to_submit_seconds",
            "From a drop settling to DIVA accepting its archive request, seconds.",
            buckets=SETTLE_TO_SUBMIT_BUCKETS, registry=registry,
        )  # fmt: skip
        registry.register(_Now(monitor, ledger))
        self._lock = threading.Lock()
        # "Since start": the transitions of earlier runs are not counted.
        self._follower = Follower(ledger)

    def render(self) -> bytes:
        """The whole exposition, with the ledger's new transitions counted first."""
        with self._lock:
            self._catch_up()
            return generate_latest(self.monitor.registry)

    def _catch_up(self) -> None:
        for step in self._follower.new():
            self.transitions.labels(step.rule, step.to_state).inc()
            if step.to_state == "SUBMITTED" and step.settled_at is not None:
                self.settle_to_submit.observe(max(0.0, step.at - step.settled_at))


class _Now(Collector):
    """The gauges read at scrape time."""

    def __init__(self, monitor: Monitor, ledger: queries.LedgerAt) -> None:
        self.monitor = monitor
        self.ledger = ledger

    def describe(self) -> list[Metric]:
        return []  # not checked for clashes: the names are this module's own

    def collect(self) -> Iterator[Metric]:
        snap = self.monitor.snapshot
        drops = GaugeMetricFamily(
            "ingest_drops", "Drops in the ledger, by rule and state.", labels=["rule", "state"]
        )
        counts_of, refused = _read(self.ledger)
        for rule, counts in sorted(counts_of.items()):
            for state in queries.STATES:
                drops.add_metric([rule, state], counts.get(state, 0))
        yield drops
        up = GaugeMetricFamily(
            "ingest_folder_up", "1 while a watch folder is watched, 0 paused or down.",
            labels=["watch"],
        )  # fmt: skip
        for folder in snap.folders:
            up.add_metric([folder.watch], 1 if folder.up else 0)
        yield up
        yield GaugeMetricFamily(
            "ingest_ready_queue", "Drops settled and waiting for a place at DIVA.",
            value=snap.ready_queue,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "ingest_in_flight", "Drops holding a place at DIVA (max_in_flight).",
            value=snap.in_flight,
        )  # fmt: skip
        since = snap.since_turn(time.time())
        yield GaugeMetricFamily(
            "ingest_seconds_since_turn", "Seconds since the engine loop last turned (-1: not yet).",
            value=-1 if since is None else since,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "ingest_ledger_writable", "1 unless the engine's latest ledger write failed.",
            value=1 if snap.ledger_error is None else 0,
        )  # fmt: skip
        reachable = snap.diva.reachable
        yield GaugeMetricFamily(
            "ingest_diva_up",
            "1 when DIVA answered the latest call, 0 unreachable, -1 no call yet.",
            value=-1 if reachable is None else int(reachable),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "ingest_rules_refused",
            "1 while the rule files on disk are refused (an invalid edit; the daemon keeps "
            "the rules in force), else 0.",
            value=int(refused),
        )  # fmt: skip


def _read(ledger: queries.LedgerAt) -> tuple[dict[str, dict[str, int]], bool]:
    """rule -> state -> drops, and whether the daemon refuses the rule files on disk."""
    with queries.open_ledger(ledger) as conn, queries.errors(ledger):
        pairs = overview.state_rule_counts(conn)
        rules = queries.rules_state(conn)
    counts: dict[str, dict[str, int]] = {}
    for state, rule, n in pairs:
        counts.setdefault(rule, {})[state] = n
    return counts, rules is not None and rules["refused_since"] is not None
