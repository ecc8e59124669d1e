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

import contextlib
import heapq
import itertools
import json
import logging
import os
import queue
import random
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import defaults
from ..client import DivaClient
from ..config import ServiceConfig
from ..errors import LedgerError
from ..ledger import ACTIVE_STATES, Batch, Ledger, State
from ..rulefiles import RuleBook
from ..rules import Match, Rule, RuleSet
from ..settle import Settler, Signature
from ..watch import NativeWatcher, choose_observer, ignored_name, scan
from .dispatch import Dispatcher
from .submissions import Tracked, Tracker

__all__ = ["Engine"]

log = logging.getLogger("ingest.engine")

Key = tuple[str, str]  # (watch folder, drop relpath)

#: a watch folder's unchanged health is written to the ledger at most this often, seconds
WATCHER_REPORT_SECONDS = 10.0


@dataclass
class Folder:
    """One watch folder: how it is watched, and what the ledger knows of its paths."""

    watch: str
    rules: tuple[Rule, ...]
    observer: str  # native | polling
    why: str
    watcher: NativeWatcher | None = None
    #: what the ledger settled: path -> (size, mtime_ns) of its final drop (None: active)
    known: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    next_scan: float = 0.0
    scanned: bool = False
    dev: int | None = None
    last_count: int = 0
    paused: str | None = None
    empty_since: float | None = None
    watcher_failures: int = 0
    watcher_retry_at: float = 0.0
    health: str = "ok"
    detail: str = ""
    unmatched: set[str] = field(default_factory=set)
    reported: tuple[str, str, str] | None = None  # the health last written to the ledger
    reported_at: float = 0.0
    #: the last scan's files, kept only while the folder is polled (to diff the next one)
    last_files: dict[str, tuple[int, int]] | None = None
    looks: set[str] = field(default_factory=set)  # relpaths to look at this turn

    @property
    def settle_max(self) -> float:
        return max((r.settle_seconds for r in self.rules), default=0.0)


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
        self.rescan_seconds = config.engine.rescan_seconds
        self.watch_poll_seconds = config.engine.watch_poll_seconds
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
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.dispatcher = Dispatcher(client, lambda o: self._queue.put(("outcome", o)))
        self.tracker = Tracker(
            self.dispatcher,
            poll_seconds=diva.poll_seconds,
            max_attempts=diva.max_attempts,
            rng=random.Random(seed),
            on_final=self._on_final,
            requeue=self._enqueue,
        )
        self.settler = Settler()
        self.folders: dict[str, Folder] = {}
        self.by_key: dict[Key, int] = {}
        self.waiting_marker: dict[Key, int] = {}
        self._ready: list[tuple[int, int, int]] = []
        self._seq = itertools.count()
        self._next_reload = 0.0
        self._last_activity = time.monotonic()
        self._ledger_down_until = 0.0
        self._needs_recover = False
        self._held: tuple[Any, ...] | None = None
        self._hinted: dict[str, tuple[Key, float]] = {}  # path -> (drop key, settle seconds)

    def __repr__(self) -> str:
        return f"<Engine folders={len(self.folders)} active={len(self.tracker.drops)}>"

    # -- public -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to stop after the turn in hand (safe from a signal handler)."""
        self._stop.set()
        self._queue.put(("wake",))

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
        self._apply_rules(rules, load_known=False)  # _recover loads it, once
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
            if item[0] == "hint":
                self._hint(item[1], item[2], now)
            elif item[0] == "outcome":
                self.dispatcher.finished()
                self.tracker.on_outcome(item[1], now)
                self._last_activity = now
        for folder in self.folders.values():
            if folder.looks:
                looks, folder.looks = folder.looks, set()
                self._look(tx, folder, looks, now)

    def _idle(self) -> bool:
        if any(not f.scanned for f in self.folders.values()):
            return False
        if self.dispatcher.running or len(self.settler) or self._ready:
            return False
        waiting = set(self.waiting_marker.values())
        if any(drop_id not in waiting for drop_id in self.tracker.drops):
            return False
        settle = max((f.settle_max for f in self.folders.values()), default=0.0)
        return time.monotonic() - self._last_activity >= max(settle, 0.5)

    def _shutdown(self) -> None:
        for folder in self.folders.values():
            if folder.watcher is not None:
                folder.watcher.stop()
        deadline = time.monotonic() + defaults.ENGINE_STOP_GRACE_SECONDS
        # Record the answers to calls already made, so the next start has less to reconcile.
        while self.dispatcher.running and time.monotonic() < deadline:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item[0] == "outcome":
                self.dispatcher.finished()
                try:
                    with self.ledger.batch() as tx:
                        self.tracker.tx = tx
                        self.tracker.on_outcome(item[1], time.monotonic())
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
        for folder in self.folders.values():
            folder.known = self.ledger.settled_by_path(folder.watch)
            folder.next_scan = now
            folder.scanned = False
            folder.last_files = None
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

    def _apply_rules(self, rules: RuleSet, *, load_known: bool = True) -> None:
        wanted = {str(watch): tuple(rs) for watch, rs in rules.watch_folders().items()}
        now = time.monotonic()
        for watch in list(self.folders):
            if watch not in wanted:
                gone = self.folders.pop(watch)
                if gone.watcher is not None:
                    gone.watcher.stop()
                log.info("no rule watches %s any more: stopped watching it", watch)
        for watch, folder_rules in wanted.items():
            settings = {r.observer for r in folder_rules}
            setting = "polling" if "polling" in settings else (
                "native" if settings == {"native"} else "auto"
            )  # fmt: skip
            observer, why = choose_observer(watch, setting)
            old = self.folders.get(watch)
            folder = old if old is not None and old.observer == observer else None
            if folder is None:
                if old is not None and old.watcher is not None:
                    old.watcher.stop()
                folder = Folder(watch, folder_rules, observer, why)
                if load_known:
                    folder.known = self.ledger.settled_by_path(watch)
                self.folders[watch] = folder
                if observer == "native":
                    self._start_watcher(folder, now)
            folder.rules = folder_rules
            folder.unmatched.clear()
            folder.last_files = None  # new rules may take files that did not change
            folder.next_scan = now
            names = ", ".join(r.name for r in folder_rules)
            log.info("watching %s with %s events (%s) for rules: %s", watch, observer, why, names)

    def _start_watcher(self, folder: Folder, now: float) -> None:
        watcher = NativeWatcher(folder.watch, self._report)
        try:
            watcher.start()
        except OSError as exc:
            folder.watcher_failures += 1
            delay = min(300.0, 2.0**folder.watcher_failures)
            folder.watcher_retry_at = now + delay
            folder.health, folder.detail = "down", f"native watcher failed: {exc}"
            log.error(
                "cannot watch %s natively (%s); scanning it every %.0f s instead, and trying "
                "again in %.0f s", folder.watch, exc, self.watch_poll_seconds, delay,
            )  # fmt: skip
            return
        folder.watcher = watcher
        folder.watcher_failures = 0
        if folder.health == "down":
            folder.health, folder.detail = "ok", ""
            log.info("watching %s natively again", folder.watch)

    def _report(self, watch: str, path: str) -> None:
        """Called by the watchers' threads: only queue the hint."""
        self._queue.put(("hint", watch, path))

    def _housekeeping(self, tx: Batch, now: float) -> None:
        if now >= self._next_reload:
            self._next_reload = now + self.reload_seconds
            if self.book.maybe_reload():
                self._hinted.clear()
                self._apply_rules(self.book.rules)
            self._adopt_external(tx, now)
        for folder in self.folders.values():
            if folder.observer == "native" and not folder.paused:
                alive = folder.watcher is not None and folder.watcher.alive
                if not alive and now >= folder.watcher_retry_at:
                    if folder.watcher is not None:
                        log.error("the native watcher of %s died; restarting it", folder.watch)
                        folder.watcher.stop()
                        folder.watcher = None
                        folder.next_scan = now  # whatever happened while it was dead
                    self._start_watcher(folder, now)
            if now >= folder.next_scan:
                self._full_scan(tx, folder, now)

    # -- seeing files -----------------------------------------------------------------

    def _full_scan(self, tx: Batch, folder: Folder, now: float) -> None:
        polling = folder.observer == "polling" or folder.health == "down"
        folder.next_scan = now + (self.watch_poll_seconds if polling else self.rescan_seconds)
        try:
            result = scan(folder.watch)
        except OSError as exc:
            self._pause(tx, folder, f"cannot read the folder: {exc.strerror or exc}")
            return
        if folder.dev is not None and result.dev != folder.dev and not result.files:
            self._pause(tx, folder, "the folder now reads empty on another filesystem")
            return
        if not result.files and folder.last_count and self._expects_files(folder):
            # A share that went away often leaves an empty mount point behind: give it a
            # grace period before believing that everything vanished at once.
            if folder.empty_since is None:
                folder.empty_since = now
            if now - folder.empty_since < defaults.ENGINE_BLIP_GRACE_SECONDS:
                self._pause(tx, folder, "the folder suddenly reads empty")
                folder.next_scan = min(folder.next_scan, now + 1.0)
                return
        folder.empty_since = None
        folder.dev = result.dev
        folder.last_count = len(result.files)
        if folder.paused:
            log.info("%s is back (%s); resuming", folder.watch, folder.paused)
            folder.paused = None
            if folder.observer == "native" and folder.watcher is not None:
                folder.watcher.stop()
                folder.watcher = None
                self._start_watcher(folder, now)
        for relpath, why in result.skipped.items():
            if relpath not in folder.unmatched:
                folder.unmatched.add(relpath)
                log.warning("%s/%s is %s: not archived", folder.watch, relpath, why)
        files = result.files
        previous = folder.last_files
        if previous is not None and all(r.mode == "file" for r in folder.rules):
            # Polling an idle share: only what changed since the last cycle needs a look.
            changed = {k: v for k, v in files.items() if previous.get(k) != v}
        else:
            changed = files
        folder.last_files = files if polling else None
        drops = self._group(folder, changed)
        for key, (match, sig) in drops.items():
            self._consider(tx, folder, key, match, sig, now)
        self._vanished(tx, folder, drops, files, now)
        folder.scanned = True
        if folder.health != "down":
            folder.health, folder.detail = "ok", ""
        report = (folder.observer, folder.health, folder.detail or folder.why)
        wall = time.time()
        # A polled folder is scanned every few seconds: its health row (a commit, an
        # fsync) is rewritten when it changes, and otherwise only now and then.
        stale = not polling or wall - folder.reported_at >= WATCHER_REPORT_SECONDS
        if report != folder.reported or stale:
            tx.watcher(folder.watch, *report, last_scan_at=wall)
            folder.reported, folder.reported_at = report, wall

    def _expects_files(self, folder: Folder) -> bool:
        """Whether drops still settling here should be on disk (files of drops in flight
        may vanish at any time: DIVA deletes them)."""
        settling = [k for k in self.settler if isinstance(k, tuple)]
        return any(k[0] == folder.watch for k in (*settling, *self.waiting_marker))

    def _pause(self, tx: Batch, folder: Folder, why: str) -> None:
        if folder.paused != why:
            log.warning("pausing %s: %s; nothing in it is treated as gone", folder.watch, why)
        folder.paused = why
        tx.watcher(folder.watch, folder.observer, "paused", why)
        folder.reported = (folder.observer, "paused", why)

    def _group(
        self, folder: Folder, files: dict[str, tuple[int, int]]
    ) -> dict[Key, tuple[Match | None, Signature]]:
        """Files -> drops with their signatures; files the ledger already settled skip the
        rules entirely (the fast path of a start-up over a tree already archived)."""
        drops: dict[Key, tuple[Match | None, Signature]] = {}
        known = folder.known
        base = folder.watch
        for relpath, value in files.items():
            if known.get(relpath) == value:
                continue  # archived, rejected or failed as it is
            size, mtime = value
            if relpath in folder.unmatched:
                continue
            match = self.book.rules.match(Path(base, relpath))
            if match is None:
                folder.unmatched.add(relpath)
                log.info("%s/%s matches no rule: ignored", base, relpath)
                continue
            if match.marker:
                continue
            key = (base, match.drop)
            if match.kind == "file":
                drops[key] = (match, (size, mtime, 1))
            else:
                _, (total, newest, count) = drops.get(key, (match, (0, 0, 0)))
                drops[key] = (match, (total + size, max(newest, mtime), count + 1))
        return drops

    def _hint(self, watch: str, path: str, now: float) -> None:
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
        match = self.book.rules.match(Path(path))
        if match is not None and not match.marker:
            key = (watch, match.drop)
            if len(self._hinted) >= defaults.ENGINE_HINT_CACHE_SIZE:
                self._hinted.clear()
            self._hinted[path] = (key, match.rule.settle_seconds)
            if key in self.settler:
                self.settler.touch(key, settle=match.rule.settle_seconds, now=now)
                return
            if key in self.by_key and key not in self.waiting_marker:
                return  # in flight; what happens to its files now is DIVA's business
            folder.looks.add(match.drop)
            return
        if self.waiting_marker:
            for key in [k for k in self.waiting_marker if k[0] == watch]:
                folder.looks.add(key[1])
        if match is None and os.path.isdir(path) and not os.path.islink(path):
            folder.looks.add(relpath)  # a folder copied or moved in with its content

    def _look(self, tx: Batch, folder: Folder, relpaths: set[str], now: float) -> None:
        """Read what events pointed at: files, folders moved in, drops awaiting a marker."""
        if folder.paused:
            return
        for relpath in relpaths:
            key = (folder.watch, relpath)
            if key in self.waiting_marker:
                self._complete(tx, folder, self.tracker.drops[self.waiting_marker[key]], now)
                continue
            try:
                files = scan(folder.watch, prefix=relpath).files
            except NotADirectoryError:
                files = {}  # a file: read it below (this must come before OSError, its base)
            except OSError:
                continue
            if not files:
                try:
                    st = os.lstat(os.path.join(folder.watch, relpath))
                except OSError:
                    continue
                if not os.path.isdir(os.path.join(folder.watch, relpath)):
                    files = {relpath: (st.st_size, st.st_mtime_ns)} if _regular(st) else {}
            for key2, (match, sig) in self._group(folder, files).items():
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
        if folder.known.get(key[1]) == sig[:2]:
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
        folder.known[key[1]] = None
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

    def _read(self, folder: Folder, tr: Tracked) -> tuple[Signature | None, tuple[str, ...]]:
        """The drop's signature now, and its member files (folder drops); None when gone."""
        full = os.path.join(folder.watch, tr.path)
        if tr.kind == "file":
            try:
                st = os.lstat(full)
            except OSError:
                return None, ()
            return ((st.st_size, st.st_mtime_ns, 1) if _regular(st) else None), ()
        try:
            result = scan(folder.watch, prefix=tr.path)
        except OSError:
            return None, ()
        rule = self.book.rules.get(tr.rule)
        members = []
        total = newest = 0
        for relpath, (size, mtime) in result.files.items():
            if rule is not None:
                match = rule.try_path(Path(folder.watch, relpath)).match
                if match is None or match.marker:
                    continue
            members.append(relpath)
            total += size
            newest = max(newest, mtime)
        if not members:
            return None, ()
        return (total, newest, len(members)), tuple(sorted(members))

    def _read_or_forget(self, tx: Batch, folder: Folder, key: Key, now: float) -> None:
        drop_id = self.by_key.get(key)
        tr = self.tracker.drops.get(drop_id) if drop_id is not None else None
        if tr is None:
            self.settler.forget(key)
            return
        sig, _ = self._read(folder, tr)
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
            sig, members = self._read(folder, tr)
            crowd = sum(1 for k in self.by_key if k[0] == folder.watch) > 1
            if sig is None and _looks_away(folder.watch, folder.dev, empty_means_away=crowd):
                # The whole folder is away (a share dropped, perhaps leaving an empty
                # mount point behind): its files did not vanish.
                self._pause(tx, folder, "the watch folder is gone or reads empty")
                folder.next_scan = min(folder.next_scan, now + 1.0)
                self.settler.recheck(key, after=1.0, now=now)
                continue
            vouched = (
                sig is not None
                and folder.observer == "native"
                and folder.watcher is not None
                and folder.watcher.alive
                and time.time() - sig[1] / 1e9 >= folder.settle_max
            )
            if not self.settler.check(key, sig, now=now, vouched=vouched):
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
        """A settled drop: check its marker, build its request, and queue it."""
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
        if not self.tracker.prepare(tr, rule, drop):
            return
        tx.update(
            tr.id, settled_at=time.time(), size=tr.size, mtime_ns=tr.mtime_ns,
            file_count=tr.file_count, object_name=tr.object_name, collection=tr.collection,
            media=rule.media, qos=rule.wire_qos, priority=rule.priority, error=None,
            body=json.dumps(tr.body, sort_keys=True, ensure_ascii=False),
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
        try:
            st = os.lstat(os.path.join(tr.watch, tr.path))
        except OSError:
            if tr.attempts:
                # DIVA has just said it holds nothing of an earlier attempt's, yet the files
                # left: a person should look (only DIVA may delete them).
                why = "its files vanished after DIVA said it had not archived them"
                self.tracker.move(tr, State.FAILED, why, error=why)
            else:
                self.tracker.move(tr, State.SKIPPED, "vanished between settling and submitting")
            return False
        if _regular(st) and (st.st_size, st.st_mtime_ns) == (tr.size, tr.mtime_ns):
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
        folder = self.folders.get(tr.watch)
        if folder is not None:
            size, mtime = tr.size, tr.mtime_ns
            folder.known[tr.path] = None if size is None or mtime is None else (size, mtime)
        if tr.state == State.COMPLETED and tr.source_deleted:
            self._tidy(tr)

    def _tidy(self, tr: Tracked) -> None:
        """After DIVA archived and deleted a drop, remove what only marked it: its ready
        marker (a stale one would make the next drop of that name ready at once) and the
        folders DIVA emptied. Only empty folders and the marker are ever removed."""
        rule = self.book.rules.get(tr.rule)
        if rule is not None and rule.ready_marker:
            marker = rule.marker_path(tr.as_drop(rule))
            if marker is not None and marker.is_file() and not marker.is_symlink():
                with contextlib.suppress(OSError):
                    marker.unlink()
                    log.info("%s: removed its ready marker %s", tr.label, marker.name)
        if tr.kind == "folder":
            top = os.path.join(tr.watch, tr.path)
            for current, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(current)  # fails, as it should, on anything not empty


def _regular(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


def _looks_away(watch: str, dev: int | None, *, empty_means_away: bool) -> bool:
    """Whether the watch folder as a whole looks away, rather than one drop having left it:
    gone or unreadable, on another filesystem than at the last scan, or (when other drops
    are expected in it) suddenly empty, as an unmounted share's mount point is."""
    try:
        if dev is not None and os.stat(watch).st_dev != dev:
            return True
        with os.scandir(watch) as entries:
            return empty_means_away and next(entries, None) is None
    except OSError:
        return True
