"""The engine: one loop, one ledger transaction per turn, every side effect after its commit.

::

    watchers ─Hint─▶ ┌──────────────── Engine (one thread) ──────────────────┐
    scans ──files──▶ │ Intake: settle ▶ rules ▶ Tracker: intent ─────── Job ──┼─▶ Dispatcher ─▶ DIVA
                     │                          Tracker: answers ◀── Outcome ─┼── (worker threads)
                     └────────────────────────────────────────────────────────┘

Each turn is one ledger transaction (a :class:`~.dispatch.Turn`): the hints and answers
that arrived, the drops that settled, the intents of the calls about to be made. Every
side effect a turn decides on (a DIVA call; removing a ready marker or a folder DIVA
emptied) is only collected on the turn, and run once its transaction has committed; when
the commit fails none runs, so no request is ever sent without its intent on disk. A
crash at any point leaves rows that the next start reconciles with DIVA (:meth:`_recover`).
"""

from __future__ import annotations

import gc
import json
import logging
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from .. import defaults
from ..client import DivaClient
from ..config import ServiceConfig
from ..errors import DivaError, DivaUnavailable, LedgerError
from ..leases import LeaseLost
from ..ledger import ACTIVE_STATES, Batch, Ledger, State
from ..rulefiles import RuleBook
from ..rules import RuleSet
from .checksums import HashDone, Hasher, Verified
from .cluster import Membership
from .dispatch import Dispatcher, Job, Outcome, Turn
from .drops import Tracked
from .folders import Folders, Hint
from .intake import Intake
from .monitor import Monitor
from .retention import Retention
from .rulestate import RulesRecord
from .submissions import Tracker

__all__ = ["Engine"]

log = logging.getLogger("ingest.engine")


@dataclass(frozen=True)
class Wake:
    """Look at the stop flag now (sent by :meth:`Engine.stop`)."""


Message = Hint | Wake | Outcome[Any] | HashDone


class Engine:
    """Watches every rule's folder, settles drops, archives them, and tracks the requests.

    >>> engine = Engine(load_config("ingest.toml"))   # doctest: +SKIP
    >>> engine.run(until_idle=True)                   # doctest: +SKIP
    0
    """

    def __init__(
        self,
        config: ServiceConfig,
        *,
        client: DivaClient | None = None,
        seed: int | None = None,
    ) -> None:
        self.config = config
        diva = config.require_diva()
        self.reload_seconds = config.engine.reload_seconds
        # A rule file must stay gone for a whole reload period before its rules go.
        self.book = RuleBook(
            config.rules.paths, config.base_dir, vanish_grace=self.reload_seconds * 1.5
        )
        self.ledger = Ledger.open(config.ledger.url, password=config.ledger.password())
        #: the folders this node holds, when several share a PostgreSQL ledger
        self.cluster: Membership | None = None
        if self.ledger.postgresql:
            self.cluster = Membership(self.ledger, config.cluster, lambda: self._queue.put(Wake()))
        self.client = client if client is not None else DivaClient.from_config(diva)
        self._queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.dispatcher = Dispatcher(self.client, self._queue.put)
        self.folders = Folders(
            self.book, self.ledger, self._queue.put,
            rescan_seconds=config.engine.rescan_seconds,
            watch_poll_seconds=config.engine.watch_poll_seconds,
        )  # fmt: skip
        self.tracker = Tracker(
            poll_seconds=diva.poll_seconds,
            max_attempts=diva.max_attempts,
            max_in_flight=diva.max_in_flight,
            rng=random.Random(seed),
            on_final=lambda turn, tr: self.intake.finished(turn, tr),
        )
        self.hasher = Hasher(self._queue.put, config.engine.hash_mb_per_second)
        self.intake = Intake(self.book, self.folders, self.tracker, self.hasher)
        self.rules_record = RulesRecord(
            self.book,
            remind_seconds=self.reload_seconds * 60,
            confirm=config.rules.confirm_new_matches,
            held=self.intake.held,
            known=self._known,
            release=self.intake.release,
        )
        self._held: Message | None = None  # taken by _wait, for the next turn's drain
        self._next_reload = 0.0
        self._next_fold = 0.0
        self._last_answer = time.monotonic()
        self._ledger_down_until = 0.0
        self._needs_recover = False
        #: what the status page and /metrics read (ingest.web); never waits for this loop
        self.monitor = Monitor()
        self.retention = Retention(config.ledger, time.monotonic())  # [ledger] keep_days

    def __repr__(self) -> str:
        return f"<Engine folders={len(self.folders)} live={len(self.tracker.drops)}>"

    # -- public -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to stop after the turn in hand (safe from a signal handler)."""
        self._stop.set()
        self._queue.put(Wake())

    def run(self, *, until_idle: bool = False) -> int:
        """Run until :meth:`stop` (or, with ``until_idle``, until there is nothing to do)."""
        self._start()
        frozen = until_idle  # a batch run freezes nothing
        if not until_idle:  # a service: its first drop need not wait for the login
            self.dispatcher.log_in()
            self._freeze()
            # The engine thread gives the GIL up at every stat and ledger call, then waited
            # up to 5 ms (the default) for it while a DIVA or watcher thread ran: turns of
            # 8-15 ms for one settle. Back to back, detection's p99 at 20/s was 5.4-5.5 ms
            # against 5.9-10.8 ms, and the burst 1.14x against 0.93x (docs/performance.md).
            switch = sys.getswitchinterval()
            sys.setswitchinterval(defaults.ENGINE_GIL_SWITCH_SECONDS)
        try:
            while not self._stop.is_set():
                self._turn()
                self.monitor.publish(self.folders.values(), self.tracker.schedule)
                if until_idle and self._idle():
                    log.info("idle: every drop is in a final state; exiting")
                    break
                if not frozen and self.dispatcher.login_over:
                    self._freeze()
                    frozen = True
                self._wait(self._quiet_at() if until_idle else None)
        finally:
            self._shutdown()
            if not until_idle:  # an engine run inside a longer process leaves it as it was
                gc.unfreeze()
                sys.setswitchinterval(switch)
        return 0

    @staticmethod
    def _freeze() -> None:
        """Move what the service made so far out of the collector's sight: once started,
        then once the login is over (its first call made the DIVA client's connection
        pool, and imported httpcore and what it brings: some 10,000 objects)."""
        # What start-up made (modules, rules, the ledger's paths) lives as long as the
        # service: frozen, a full collection no longer walks it all. Such a collection
        # held a turn, and the drops due in it, for 28-73 ms (57 ms on a run's first
        # drop); 16-43 ms with only the first freeze, over some 22,000 objects made
        # since, the login's imports among them. With the second, no full collection
        # came between start and stop in three instrumented detection runs
        # (gc.callbacks); the second collection itself took 2.7-3.6 ms.
        gc.collect()
        gc.freeze()

    # -- the loop ---------------------------------------------------------------------

    def _start(self) -> None:
        rules = self.book.rules
        diva = self.config.require_diva()
        log.info(
            "ingest engine starting: %d rules, ledger %s, DIVA %s (poll every %.0f s, "
            "at most %d in flight)",
            len(rules), self.ledger.where, self.client.manager_url,
            diva.poll_seconds, diva.max_in_flight,
        )  # fmt: skip
        if self.cluster is not None:
            self.cluster.start([str(w) for w in rules.watch_folders()])
            self.cluster.adopt()  # what _recover is about to build from
        self._apply_rules(rules, load_settled=False)  # _recover loads them, once
        self._recover()

    def _turn(self) -> None:
        now = time.monotonic()
        if now < self._ledger_down_until:
            return
        if self._needs_recover:
            try:
                (self._regroup if self.cluster is not None else self._recover)()
            except LedgerError as exc:
                self.monitor.ledger_failed(exc)
                log.error("ledger still unusable, trying again shortly: %s", exc)
                self._ledger_down_until = now + defaults.ENGINE_LEDGER_RETRY_SECONDS
                return
            self._needs_recover = False
            log.info("ledger writable again: resuming")
        try:
            if self.cluster is not None and self.cluster.changed():
                self._regroup()
            self._commit(now, self._step)
            self.dispatcher.short_of_places = self.tracker.short_of_places(now)
        except LeaseLost as exc:
            # Nothing of the turn committed; the next turn forgets those folders (not the
            # next heartbeat).
            assert self.cluster is not None
            log.warning("node %s: %s; dropping them", self.cluster.node, exc)
            self.cluster.lost(sorted(exc.watches))
        except LedgerError as exc:
            # Memory is rebuilt from the ledger once it can be written again.
            self.monitor.ledger_failed(exc)
            log.error("ledger write failed, not submitting until it recovers: %s", exc)
            self._ledger_down_until = now + defaults.ENGINE_LEDGER_RETRY_SECONDS
            self._needs_recover = True

    def _commit(self, now: float, step: Callable[[Turn], None]) -> None:
        """Run ``step`` in one ledger transaction, then the side effects it decided on,
        only once that transaction has committed: when the commit fails (LedgerError),
        nothing of the turn is on disk, and none of them happens."""
        with self.ledger.batch() as tx:
            if self.cluster is not None:
                self.cluster.fence(tx)  # first: this node's folders cannot move until commit
            turn = Turn(tx, now)
            step(turn)
            commit = self.monitor.commit_starts(tx)
        self.monitor.committed(commit)
        for remove in turn.removals:
            remove()
        for job in turn.calls:
            if self.cluster is not None:
                job = self._leased(job)
            self.dispatcher.run(self.monitor.timed(job))

    def _leased(self, job: Job[Any]) -> Job[Any]:
        """``job``, sent only while this node's lease on its folder surely runs."""
        cluster, inner = self.cluster, job.call
        assert cluster is not None

        def call(client: DivaClient) -> Any:
            if not cluster.sendable(job.key[0]):
                cluster.lost([job.key[0]])  # the engine regroups at once
                raise DivaUnavailable(f"not sent: the lease on {job.key[0]} ran out")
            return inner(client)

        return replace(job, call=call)

    def _regroup(self) -> None:
        """The folders held changed: watch those, and read a folder taken over from the
        ledger as after a crash (its in-flight rows reconciled with DIVA first). A folder
        lost rebuilds all of memory, as after a ledger failure: nothing of it may stay."""
        before = {} if self.cluster is None else dict(self.cluster.working)
        after = {} if self.cluster is None else self.cluster.adopt()
        lost = any(after.get(w) != epoch for w, epoch in before.items())
        self._apply_rules(self.book.rules)
        if lost or self.cluster is None:
            self._recover()
            return
        # Only gains: the folders kept, and their calls in flight, are left alone.
        gained = {w for w, epoch in after.items() if before.get(w) != epoch}
        now = time.monotonic()
        for row in self.ledger.rows(*ACTIVE_STATES):
            if row["watch"] in gained:
                self._take(Tracked.from_row(row), now)

    def _step(self, turn: Turn) -> None:
        self._drain(turn)
        self._housekeeping(turn)
        self.intake.settle(turn)
        self.tracker.advance(turn, self.intake.still_there)

    def _wait(self, quiet_at: float | None = None) -> None:
        if self._held is not None:
            return
        now = time.monotonic()
        deadlines = [
            now + defaults.ENGINE_WAKE_SECONDS,
            quiet_at,
            self._next_reload,
            self.folders.next_scan(),
            self.intake.next_deadline(),
            self.tracker.schedule.next_deadline(now),
            self._ledger_down_until if self._ledger_down_until > now else None,
        ]
        timeout = max(0.0, min(d for d in deadlines if d is not None) - now)
        self._held = self._next_message(timeout if timeout > 0 else None)

    def _next_message(self, timeout: float | None = None) -> Message | None:
        if self._held is not None:
            message, self._held = self._held, None
            return message
        try:
            return self._queue.get_nowait() if timeout is None else self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _drain(self, turn: Turn) -> None:
        for _ in range(defaults.ENGINE_MAX_EVENTS_PER_TURN):
            message = self._next_message()
            if message is None:
                break
            if isinstance(message, Hint):
                self.intake.hint(message, turn.now)
            elif isinstance(message, Verified):
                self._verified(turn, message)
            elif isinstance(message, Outcome):
                self.tracker.on_outcome(turn, message)
                self._last_answer = turn.now
            elif isinstance(message, HashDone):
                self.intake.hashed(turn, message)
        self.intake.look(turn)

    def _idle(self) -> bool:
        if any(not f.scanned for f in self.folders.values()):
            return False
        if self.tracker.schedule.has_ready or not self.intake.idle():
            return False
        return time.monotonic() >= self._quiet_at()

    def _quiet_at(self) -> float:
        """When ``--until-idle`` may call the folders quiet: nothing seen and no answer
        for a settle window (half a second at least). The loop wakes then to look."""
        quiet = max(self.folders.settle_max, defaults.ENGINE_IDLE_QUIET_SECONDS)
        return max(self._last_answer, self.intake.last_seen) + quiet

    def _shutdown(self) -> None:
        self.folders.stop()
        deadline = time.monotonic() + defaults.ENGINE_STOP_GRACE_SECONDS
        # Record the answers to calls already made, so the next start has less to reconcile.
        while self.tracker.awaiting() and (left := deadline - time.monotonic()) > 0:
            message = self._next_message(timeout=left)
            if not isinstance(message, Outcome):
                if message is None:
                    break
                continue
            try:
                self._commit(time.monotonic(), partial(self._answer, outcome=message))
            except LedgerError as exc:
                log.error("ledger write failed while stopping: %s", exc)
        self.dispatcher.shutdown(wait=False)
        if self.cluster is not None:
            self.cluster.stop()
        self.hasher.shutdown()
        self.retention.join(timeout=30)  # a batch in hand commits (or rolls back) whole
        self.client.close()
        self.ledger.close()
        log.info("ingest engine stopped")

    def _answer(self, turn: Turn, outcome: Outcome[Any]) -> None:
        if isinstance(outcome, Verified):
            self._verified(turn, outcome)
            return
        self.tracker.on_outcome(turn, outcome)

    def _verified(self, turn: Turn, outcome: Verified) -> None:
        """DIVA's checksums of a completed drop against ours: a mismatch is recorded (the
        drop stays COMPLETED: DIVA has it) and ``ingest status`` exits 1 until it is
        acknowledged."""
        verdict = outcome.result
        if isinstance(verdict, DivaError):
            log.warning("%s: could not read DIVA's checksums to compare: %s", outcome.key[1],
                        verdict)  # fmt: skip
            return
        if verdict.mismatches:
            names = ", ".join(sorted(verdict.mismatches))
            log.error("%s: CHECKSUM MISMATCH: DIVA's %s of %s differs from ours",
                      outcome.key[1], verdict.algorithm, names)  # fmt: skip
            turn.tx.update(verdict.drop_id, checksum_mismatch=json.dumps(verdict.mismatches))
        elif verdict.compared:
            log.info("%s: DIVA's %s of %d file(s) match ours", outcome.key[1],
                     verdict.algorithm, verdict.compared)  # fmt: skip

    # -- recovery ---------------------------------------------------------------------

    def _recover(self) -> None:
        """(Re)build every in-memory structure from the ledger: at start, and after the
        ledger failed a write (the turn's changes were rolled back)."""
        now = time.monotonic()
        self.intake.reset()
        self.tracker.reset()
        self.rules_record.reset()
        counts: dict[str, int] = {}
        held = None if self.cluster is None else self.cluster.working
        for row in self.ledger.rows(*ACTIVE_STATES):
            if held is not None and row["watch"] not in held:
                continue  # another node's folder
            tr = Tracked.from_row(row)
            if self._take(tr, now):
                counts[tr.state] = counts.get(tr.state, 0) + 1
        self.folders.reload(now)
        if counts:
            summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            log.info("resuming from the ledger: %s", summary)

    def _take(self, tr: Tracked, now: float, *, external: bool = False) -> bool:
        """Hold an active ledger row in memory and give it its next step."""
        if tr.key in self.tracker:
            return False  # an older row for the same path: the newest one wins
        rule = self.book.rules.get(tr.rule)
        if rule is not None:
            tr.on_conflict = rule.on_conflict
        if tr.state == State.DETECTED or tr.body is None or external:
            # Not settled, never given a request body, or requeued by an operator (who may
            # have mended the rule since): settle it again and build its request anew.
            self.tracker.hold(tr)
            # An earlier attempt may have reached DIVA: ask before anything else.
            tr.uncertain = external and (tr.submitted_at is not None or tr.request_id is not None)
            self.intake.resettle(tr, now)
        else:
            self.tracker.resume(tr, now)
        return True

    def _known(self, watch: str, path: str) -> bool:
        """Whether a drop is live or in the ledger: an edit does not newly match it."""
        return (watch, path) in self.tracker or path in self.folders.settled.get(watch, {})

    def _adopt_external(self, tx: Batch, now: float) -> None:
        """Pick up drops an operator put back in the queue (``ingest retry``).

        Read through this turn's own transaction: a drop this turn just finished is no
        longer in memory, and another connection would still see it waiting."""
        held = None if self.cluster is None else self.cluster.working
        for row in tx.rows(State.RETRY_WAIT):
            if held is not None and row["watch"] not in held:
                continue
            if (row["watch"], row["path"]) not in self.tracker:
                tr = Tracked.from_row(row)
                if self._take(tr, now, external=True):
                    log.info("%s: requeued by an operator", tr.label)

    # -- rules and folders ------------------------------------------------------------

    def _apply_rules(self, rules: RuleSet, *, load_settled: bool = True) -> None:
        wanted = {str(watch): tuple(rs) for watch, rs in rules.watch_folders().items()}
        if self.cluster is not None:
            self.cluster.watch(list(wanted))
            held = self.cluster.working
            wanted = {w: rs for w, rs in wanted.items() if w in held}
        self.folders.apply(wanted, time.monotonic(), load=load_settled)

    def _housekeeping(self, turn: Turn) -> None:
        now = turn.now
        if now >= self._next_reload:
            self._next_reload = now + self.reload_seconds
            if self.book.maybe_reload():
                self.intake.rules_changed()
                self._apply_rules(self.book.rules)
            self._adopt_external(turn.tx, now)
        self.rules_record.publish(turn.tx, now)
        self.retention.tick(now)
        if now >= self._next_fold:
            self._next_fold = now + defaults.LEDGER_COUNTS_FOLD_SECONDS
            rows, least = defaults.LEDGER_COUNTS_FOLD_ROWS, defaults.LEDGER_COUNTS_FOLD_LEAST
            turn.tx.fold_counts(rows, least)
        for folder in self.folders.values():
            self.folders.revive(folder, now)
            if now >= folder.next_scan:
                self.intake.scan(turn, folder)
