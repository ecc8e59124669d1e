"""The engine: the one owner of every drop's state, from first sight to DIVA's last word.

::

    watchers ──hint──▶ ┌────────── engine loop (one thread) ──────────┐
    scans ──files────▶ │ settle ▶ rules ▶ ledger intent ▶ dispatch ───┼──▶ DIVA (worker threads)
                       │ ◀──────────── outcomes (request id, state) ◀─┼───
                       └──────────────────────────────────────────────┘

Each turn of the loop is one ledger transaction: the hints and outcomes that arrived, the
drops that settled, and the intents of the archive calls about to be made. The calls go
out only after that transaction commits, so no request is ever sent without its intent
on disk; a crash at any point leaves rows that the next start reconciles with DIVA.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import defaults
from ..client import DivaClient
from ..config import ServiceConfig
from ..errors import LedgerError
from ..ledger import ACTIVE_STATES, Batch, Ledger, State
from ..rulefiles import RuleBook
from ..rules import Match, RuleSet, build_archive_body
from ..settle import Settler, Signature
from ..templates import DropRefused
from ..watch import ignored_name
from .dispatch import Dispatcher, Key, Outcome
from .folders import Folder, Folders, Hint, Tidy, same_file
from .submissions import Tracked, Tracker

__all__ = ["Engine"]

log = logging.getLogger("ingest.engine")


@dataclass(frozen=True)
class Wake:
    """Look at the stop flag now (sent by :meth:`Engine.stop`)."""


Message = Hint | Wake | Outcome


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
        self.poll_seconds = diva.poll_seconds
        self.max_in_flight = diva.max_in_flight
        self.reload_seconds = config.engine.reload_seconds
        self.book = RuleBook(config.rules.paths, config.base_dir)
        self.ledger = Ledger.open(config.ledger.url)
        if client is None:
            verify: bool | str = diva.verify if isinstance(diva.verify, bool) else str(diva.verify)
            client = DivaClient(
                diva.url, diva.username, diva.password(),
                data_url=diva.data_url, manager_url=diva.manager_url,
                auth_scheme=diva.auth_scheme, verify=verify, timeout=diva.timeout_seconds,
                object_info_path=diva.object_info_path, session_minutes=diva.session_minutes,
            )  # fmt: skip
        self.client = client
        self._queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.dispatcher = Dispatcher(client, self._queue.put)
        self.tracker = Tracker(
            self.dispatcher,
            poll_seconds=diva.poll_seconds,
            max_attempts=diva.max_attempts,
            rng=random.Random(seed),
            on_final=self._on_final,
            requeue=self._enqueue,
        )
        self.settler = Settler()
        self.folders = Folders(
            self.book, self.ledger, self._report,
            rescan_seconds=config.engine.rescan_seconds,
            watch_poll_seconds=config.engine.watch_poll_seconds,
        )  # fmt: skip
        self._looks: dict[str, set[str]] = {}  # watch -> relpaths hints pointed at, this turn
        self.by_key: dict[Key, int] = {}
        self.waiting_marker: dict[Key, int] = {}
        self._ready: list[tuple[int, int, int]] = []
        self._seq = itertools.count()
        self._next_reload = 0.0
        self._last_activity = time.monotonic()
        self._ledger_down_until = 0.0
        self._needs_recover = False
        self._held: Message | None = None
        self._hinted: dict[str, tuple[Key, float]] = {}  # path -> (drop key, settle seconds)

    def __repr__(self) -> str:
        return f"<Engine folders={len(self.folders)} active={len(self.tracker.drops)}>"

    # -- public -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to stop after the turn in hand (safe from a signal handler)."""
        self._stop.set()
        self._queue.put(Wake())

    def run(self, *, until_idle: bool = False) -> int:
        """Run until :meth:`stop` (or, with ``until_idle``, until there is nothing to do)."""
        self._start()
        try:
            while not self._stop.is_set():
                self._turn()
                if until_idle and self._idle():
                    log.info("idle: every drop is in a final state; exiting")
                    break
                self._wait()
        finally:
            self._shutdown()
        return 0

    # -- the loop ---------------------------------------------------------------------

    def _start(self) -> None:
        rules = self.book.rules
        log.info(
            "ingest engine starting: %d rules, ledger %s, DIVA %s (poll every %.0f s, "
            "at most %d in flight)",
            len(rules), self.ledger.path or ":memory:", self.client.manager_url,
            self.poll_seconds, self.max_in_flight,
        )  # fmt: skip
        self._apply_rules(rules, load_settled=False)  # _recover loads them, once
        self._recover()

    def _turn(self) -> None:
        now = time.monotonic()
        if now < self._ledger_down_until:
            return
        if self._needs_recover:
            try:
                self._recover()
            except LedgerError as exc:
                log.error("ledger still unusable, trying again shortly: %s", exc)
                self._ledger_down_until = now + defaults.ENGINE_LEDGER_RETRY_SECONDS
                return
            self._needs_recover = False
            log.info("ledger writable again: resuming")
        sends: list[Callable[[], None]] = []
        try:
            with self.ledger.batch() as tx:
                self.tracker.tx = tx
                self._drain(tx, now)
                self._housekeeping(tx, now)
                self._settle(tx, now)
                self.tracker.due(now)
                sends = self._dispatch(tx, now)
        except LedgerError as exc:
            # Nothing of this turn is on disk, so nothing of it may reach DIVA: drop the
            # sends, and rebuild from the ledger once it can be written again.
            log.error("ledger write failed, not submitting until it recovers: %s", exc)
            self._ledger_down_until = now + defaults.ENGINE_LEDGER_RETRY_SECONDS
            self._needs_recover = True
            return
        finally:
            self.tracker.tx = None
        for send in sends:
            send()
        self.tracker.send_polls(now)

    def _wait(self) -> None:
        now = time.monotonic()
        deadlines = [now + 1.0, self._next_reload]
        deadlines.extend(f.next_scan for f in self.folders.values())
        if (d := self.settler.next_deadline()) is not None:
            deadlines.append(d)
        if (d := self.tracker.next_deadline()) is not None:
            deadlines.append(d)
        if self._ready and self._capacity() > 0:
            deadlines.append(now)
        if self._ledger_down_until > now:
            deadlines.append(self._ledger_down_until)
        timeout = max(0.0, min(deadlines) - now)
        if self._held is not None:
            return
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return
        self._held = item  # the wake-up call is handled first by the next turn's drain

    def _drain(self, tx: Batch, now: float) -> None:
        for _ in range(defaults.ENGINE_MAX_EVENTS_PER_TURN):
            if self._held is not None:
                item, self._held = self._held, None
            else:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if isinstance(item, Hint):
                self._hint(item, now)
            elif isinstance(item, Outcome):
                self.dispatcher.finished()
                self.tracker.on_outcome(item, now)
                self._last_activity = now
        looks, self._looks = self._looks, {}
        for watch, relpaths in looks.items():
            if (folder := self.folders.get(watch)) is not None:
                self._look(tx, folder, relpaths, now)

    def _idle(self) -> bool:
        if any(not f.scanned for f in self.folders.values()):
            return False
        if self.dispatcher.running or len(self.settler) or self._ready:
            return False
        waiting = set(self.waiting_marker.values())
        if any(drop_id not in waiting for drop_id in self.tracker.drops):
            return False
        settle = self.folders.settle_max
        return time.monotonic() - self._last_activity >= max(settle, 0.5)

    def _shutdown(self) -> None:
        self.folders.stop()
        deadline = time.monotonic() + defaults.ENGINE_STOP_GRACE_SECONDS
        # Record the answers to calls already made, so the next start has less to reconcile.
        while self.dispatcher.running and time.monotonic() < deadline:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if isinstance(item, Outcome):
                self.dispatcher.finished()
                try:
                    with self.ledger.batch() as tx:
                        self.tracker.tx = tx
                        self.tracker.on_outcome(item, time.monotonic())
                except LedgerError as exc:
                    log.error("ledger write failed while stopping: %s", exc)
                finally:
                    self.tracker.tx = None
        self.dispatcher.shutdown(wait=False)
        self.client.close()
        self.ledger.close()
        log.info("ingest engine stopped")

    # -- recovery ---------------------------------------------------------------------

    def _recover(self) -> None:
        """(Re)build every in-memory structure from the ledger: at start, and after the
        ledger failed a write (the turn's changes were rolled back)."""
        now = time.monotonic()
        self.settler = Settler()
        self.by_key.clear()
        self.waiting_marker.clear()
        self._ready.clear()
        self.tracker.reset()
        counts: dict[str, int] = {}
        for row in self.ledger.rows(*ACTIVE_STATES):
            tr = Tracked.from_row(row)
            if self._take(tr, now):
                counts[tr.state] = counts.get(tr.state, 0) + 1
        self.folders.reload(now)
        if counts:
            summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            log.info("resuming from the ledger: %s", summary)

    def _take(self, tr: Tracked, now: float, *, external: bool = False) -> bool:
        """Hold an active ledger row in memory and give it its next step."""
        key = (tr.watch, tr.path)
        if key in self.by_key:
            return False  # an older row for the same path: the newest one wins
        self.by_key[key] = tr.id
        rule = self.book.rules.get(tr.rule)
        if rule is not None:
            tr.on_conflict = rule.on_conflict
        if tr.state == State.DETECTED or tr.body is None or external:
            # Not settled, never given a request body, or requeued by an operator (who may
            # have mended the rule since): settle it again and build its request anew.
            self.tracker.drops[tr.id] = tr
            # An earlier attempt may have reached DIVA: ask before anything else.
            tr.uncertain = external and (tr.submitted_at is not None or tr.request_id is not None)
            folder = self.folders.get(tr.watch)
            self.settler.touch(key, settle=folder.settle_max if folder else 0.0, now=now)
            return True
        self.tracker.adopt(tr, now)
        if tr.state == State.SUBMITTING:
            self._enqueue(tr)  # the dispatcher reconciles it with DIVA first
        return True

    def _adopt_external(self, tx: Batch, now: float) -> None:
        """Pick up drops an operator put back in the queue (``ingest retry``).

        Read through this turn's own transaction: a drop this turn just finished is no
        longer in memory, and another connection would still see it waiting."""
        for row in tx.rows(State.RETRY_WAIT):
            if row["id"] not in self.tracker.drops:
                tr = Tracked.from_row(row)
                if self._take(tr, now, external=True):
                    log.info("%s: requeued by an operator", tr.label)

    # -- rules and folders ------------------------------------------------------------

    def _apply_rules(self, rules: RuleSet, *, load_settled: bool = True) -> None:
        wanted = {str(watch): tuple(rs) for watch, rs in rules.watch_folders().items()}
        self.folders.apply(wanted, time.monotonic(), load=load_settled)

    def _report(self, hint: Hint) -> None:
        """Called by the watchers' threads: only queue the hint."""
        self._queue.put(hint)

    def _housekeeping(self, tx: Batch, now: float) -> None:
        if now >= self._next_reload:
            self._next_reload = now + self.reload_seconds
            if self.book.maybe_reload():
                self._hinted.clear()
                self._apply_rules(self.book.rules)
            self._adopt_external(tx, now)
        for folder in self.folders.values():
            self.folders.revive(folder, now)
            if now >= folder.next_scan:
                self._scan(tx, folder, now)

    # -- seeing files -----------------------------------------------------------------

    def _scan(self, tx: Batch, folder: Folder, now: float) -> None:
        seen = self.folders.scan(tx, folder, now, lambda: self._expects_files(folder))
        if seen is None:
            return
        files, changed, polled = seen
        drops = self.folders.group(folder, changed)
        for key, (match, sig) in drops.items():
            self._consider(tx, folder, key, match, sig, now)
        self._vanished(tx, folder, drops, files, now)
        self.folders.scanned(tx, folder, polled)

    def _expects_files(self, folder: Folder) -> bool:
        """Whether drops still settling here should be on disk (files of drops in flight
        may vanish at any time: DIVA deletes them)."""
        settling = [k for k in self.settler if isinstance(k, tuple)]
        return any(k[0] == folder.watch for k in (*settling, *self.waiting_marker))

    def _hint(self, hint: Hint, now: float) -> None:
        watch, path = hint.watch, hint.path
        folder = self.folders.get(watch)
        if folder is None:
            return
        if path == watch:
            folder.next_scan = now  # the folder itself changed: moved, deleted, remounted
            return
        relpath = path[len(watch) + 1 :] if path.startswith(watch + "/") else None
        if not relpath or any(ignored_name(part) for part in relpath.split("/")):
            return
        self._last_activity = now
        # A file being written sends an event per write: once its drop is known to be
        # settling, restart the timer without matching the rules again.
        cached = self._hinted.get(path)
        if cached is not None and cached[0] in self.settler:
            self.settler.touch(cached[0], settle=cached[1], now=now)
            return
        looks = self._looks.setdefault(watch, set())
        match = self.book.rules.match(Path(path))
        if match is not None and not match.marker:
            key = (watch, match.drop)
            if len(self._hinted) >= defaults.ENGINE_HINT_CACHE_SIZE:
                self._hinted.clear()
            self._hinted[path] = (key, match.rule.settle_seconds)
            if key in self.settler:
                self.settler.touch(key, settle=match.rule.settle_seconds, now=now)
            elif key not in self.by_key or key in self.waiting_marker:
                looks.add(match.drop)  # (a drop in flight is DIVA's business now)
            return
        looks.update(k[1] for k in self.waiting_marker if k[0] == watch)
        if match is None and os.path.isdir(path) and not os.path.islink(path):
            looks.add(relpath)  # a folder copied or moved in with its content

    def _look(self, tx: Batch, folder: Folder, relpaths: set[str], now: float) -> None:
        """Read what events pointed at: files, folders moved in, drops awaiting a marker."""
        if folder.paused:
            return
        for relpath in relpaths:
            key = (folder.watch, relpath)
            if key in self.waiting_marker:
                self._complete(tx, folder, self.tracker.drops[self.waiting_marker[key]], now)
                continue
            files = self.folders.look(folder, relpath)
            if files is None:
                continue
            for key2, (match, sig) in self.folders.group(folder, files).items():
                self._consider(tx, folder, key2, match, sig, now)

    def _consider(
        self, tx: Batch, folder: Folder, key: Key, match: Match | None, sig: Signature,
        now: float,
    ) -> None:  # fmt: skip
        """A drop seen with ``sig``: new, changed, settling, or already dealt with."""
        if key in self.settler:
            settle = match.rule.settle_seconds if match else folder.settle_max
            self.settler.observe(key, sig, settle=settle, now=now)
            return
        if key in self.by_key:
            return
        if self.folders.settled[folder.watch].get(key[1]) == sig[:2]:
            return  # archived, rejected or failed as it is: only a change brings it back
        if match is None:
            return
        rule = match.rule
        drop_id = tx.add(
            rule=rule.name, watch=folder.watch, path=key[1], kind=match.kind,
            size=sig[0], mtime_ns=sig[1], file_count=sig[2],
            detail=f"detected by rule {rule.name!r}, settling for {rule.settle_seconds:g} s",
        )  # fmt: skip
        tr = Tracked(drop_id, rule.name, folder.watch, key[1], match.kind, State.DETECTED)
        self.tracker.adopt(tr, now)
        self.by_key[key] = drop_id
        self.folders.remember(folder.watch, key[1], None)
        self.settler.observe(key, sig, settle=rule.settle_seconds, now=now)
        self._last_activity = now
        log.info("%s %s: detected (%s drop), settling", rule.name, key[1], match.kind)

    def _vanished(
        self, tx: Batch, folder: Folder, drops: dict[Key, Any], files: dict[str, Any],
        now: float,
    ) -> None:  # fmt: skip
        gone = [k for k in self.by_key if k[0] == folder.watch and k not in drops]
        for key in gone:
            if key in self.settler and key[1] not in files:
                self._read_or_forget(tx, folder, key, now)

    def _read_or_forget(self, tx: Batch, folder: Folder, key: Key, now: float) -> None:
        drop_id = self.by_key.get(key)
        tr = self.tracker.drops.get(drop_id) if drop_id is not None else None
        if tr is None:
            self.settler.forget(key)
            return
        sig, _ = self.folders.read(folder, tr.rule, tr.path, tr.kind)
        if sig is None:
            self.settler.forget(key)
            self._gone(tr, "vanished before it settled")

    # -- settling and submitting ------------------------------------------------------

    def _settle(self, tx: Batch, now: float) -> None:
        for key in self.settler.due(now):
            assert isinstance(key, tuple)
            folder = self.folders.get(key[0])
            drop_id = self.by_key.get(key)
            tr = self.tracker.drops.get(drop_id) if drop_id is not None else None
            if tr is None:
                self.settler.forget(key)
                continue
            if folder is None:
                self.settler.forget(key)
                self.tracker.move(tr, State.SKIPPED, "no rule watches its folder any more")
                continue
            if folder.paused:
                self.settler.recheck(key, after=1.0, now=now)
                continue
            sig, members = self.folders.read(folder, tr.rule, tr.path, tr.kind)
            crowd = sum(1 for k in self.by_key if k[0] == folder.watch) > 1
            if sig is None and folder.looks_away(empty_means_away=crowd):
                # The whole folder is away (a share dropped, perhaps leaving an empty
                # mount point behind): its files did not vanish.
                self.folders.pause(tx, folder, "the watch folder is gone or reads empty")
                folder.next_scan = min(folder.next_scan, now + 1.0)
                self.settler.recheck(key, after=1.0, now=now)
                continue
            if not self.settler.check(key, sig, now=now, vouched=folder.vouches(sig)):
                if sig is None:
                    self._gone(tr, "vanished before it settled")
                continue
            assert sig is not None
            tr.size, tr.mtime_ns, tr.file_count = sig
            tr.members = members
            self._complete(tx, folder, tr, now)

    def _gone(self, tr: Tracked, why: str) -> None:
        """A drop's files are gone. If an archive call of its own may have reached DIVA,
        that is what success looks like (DIVA deletes on source): ask DIVA, never SKIP."""
        if tr.uncertain and tr.body is not None and tr.object_name:
            log.info("%s: its files are gone; asking DIVA whether it archived them", tr.label)
            self.settler.forget((tr.watch, tr.path))
            self._enqueue(tr)
            return
        self.tracker.move(tr, State.SKIPPED, why)

    def _complete(self, tx: Batch, folder: Folder, tr: Tracked, now: float) -> None:
        """A settled drop: check its marker, build its request (the rules' word), queue it."""
        key = (tr.watch, tr.path)
        match = self.book.rules.match(Path(tr.watch, tr.path))
        if match is None or match.drop != tr.path:
            self.waiting_marker.pop(key, None)
            self.tracker.move(tr, State.SKIPPED, "no rule matches it any more")
            return
        rule = match.rule
        drop = tr.as_drop(rule)
        marker = rule.marker_path(drop)
        if marker is not None and not os.path.lexists(marker):
            if key not in self.waiting_marker:
                self.waiting_marker[key] = tr.id
                log.info("%s %s: settled, waiting for its ready marker %s", rule.name,
                         tr.path, marker.name)  # fmt: skip
                tx.update(tr.id, error=f"waiting for the ready marker {marker.name}")
            return
        self.waiting_marker.pop(key, None)
        try:
            body = build_archive_body(rule, drop)
        except DropRefused as exc:
            # It cannot be archived safely (an unsafe name...): refused, files in place.
            self.tracker.move(tr, State.REJECTED, exc.reason, error=exc.reason)
            return
        tr.set_body(body)
        tr.priority, tr.on_conflict = rule.priority, rule.on_conflict
        tx.update(
            tr.id, settled_at=time.time(), size=tr.size, mtime_ns=tr.mtime_ns,
            file_count=tr.file_count, object_name=tr.object_name, collection=tr.collection,
            media=rule.media, qos=rule.wire_qos, priority=rule.priority, error=None,
            body=tr.body_json,
        )  # fmt: skip
        self._enqueue(tr)

    def _enqueue(self, tr: Tracked) -> None:
        tr.queued = True
        priority = tr.priority if tr.priority and tr.priority > 0 else 50
        heapq.heappush(self._ready, (-priority, tr.id, next(self._seq)))

    def _capacity(self) -> int:
        if self.tracker.paused(time.monotonic()):
            return 0
        return self.max_in_flight - self.tracker.in_flight()

    def _dispatch(self, tx: Batch, now: float) -> list[Callable[[], None]]:
        sends: list[Callable[[], None]] = []
        capacity = self._capacity()
        while self._ready and capacity > 0:
            _, drop_id, _ = heapq.heappop(self._ready)
            tr = self.tracker.drops.get(drop_id)
            if tr is None or not tr.queued:
                continue
            if not self._still_there(tr):
                continue
            send = self.tracker.start(tr, now)
            if send is not None:
                sends.append(send)
                capacity -= 1
        return sends

    def _still_there(self, tr: Tracked) -> bool:
        """Just before the intent: is the settled file still the one we settled?"""
        if tr.kind != "file" or tr.size is None or tr.uncertain:
            return True
        same = same_file(os.path.join(tr.watch, tr.path), tr.size, tr.mtime_ns)
        if same is None:
            if tr.attempts:
                # DIVA has just said it holds nothing of an earlier attempt's, yet the files
                # left: a person should look (only DIVA may delete them).
                why = "its files vanished after DIVA said it had not archived them"
                self.tracker.move(tr, State.FAILED, why, error=why)
            else:
                self.tracker.move(tr, State.SKIPPED, "vanished between settling and submitting")
            return False
        if same:
            return True
        tr.queued = False
        key = (tr.watch, tr.path)
        folder = self.folders.get(tr.watch)
        settle = folder.settle_max if folder else 0.0
        self.settler.touch(key, settle=settle, now=time.monotonic())
        log.info("%s %s: changed after it settled; settling again", tr.rule, tr.path)
        return False

    def _on_final(self, tr: Tracked) -> None:
        """A drop reached a final state: it leaves memory, the known index keeps it."""
        key = (tr.watch, tr.path)
        if self.by_key.get(key) == tr.id:
            del self.by_key[key]
        self.waiting_marker.pop(key, None)
        self.settler.forget(key)
        size, mtime = tr.size, tr.mtime_ns
        self.folders.remember(
            tr.watch, tr.path, None if size is None or mtime is None else (size, mtime)
        )
        if tr.state == State.COMPLETED and tr.source_deleted:
            rule = self.book.rules.get(tr.rule)
            marker = rule.marker_path(tr.as_drop(rule)) if rule and rule.ready_marker else None
            top = os.path.join(tr.watch, tr.path) if tr.kind == "folder" else None
            Tidy(tr.label, marker, top)()
