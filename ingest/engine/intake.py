"""The disk side of a drop's life: from a hint or a scan to a request queued at DIVA's door.

::

    Hint / scan ─▶ look ─▶ DETECTED ─▶ settled ─▶ ready marker? ─▶ archive body ─▶ Tracker
                              │  (Settler timers)                 (the rules' word)
                              └─ vanished: SKIPPED, or asked of DIVA if a call may have gone

:class:`Intake` decides what the watch folders show means: a new drop (its DETECTED row),
one still changing (its settle timer restarts), one settled (its ready marker, then its
archive body from the rules, then the Tracker's queue), one gone. It holds the settle
timers and the drops waiting for a marker; the drops themselves are the Tracker's, held
once. Everything it writes goes through the turn it is handed; the only side effect it
decides on, tidying a drop folder after DIVA archived and deleted the drop, goes on the
turn too, for after the commit.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

from .. import defaults
from ..drop import Drop
from ..ledger import State
from ..rulefiles import RuleBook
from ..rules import Match, Rule, build_archive_body, build_fileset_body
from ..settle import Settler, Signature
from ..sidecar import SidecarError
from ..templates import DropRefused
from ..watch import ignored_name
from .checksums import HashDone, Hasher, verify
from .dispatch import Key, Turn
from .drops import Tracked
from .folders import Files, Folder, Folders, Hint, Tidy, same_file
from .submissions import Tracker

__all__ = ["Intake"]

log = logging.getLogger("ingest.engine")


class Intake:
    """Hints and scans in, settled drops with their request out. Engine thread only."""

    def __init__(
        self, book: RuleBook, folders: Folders, tracker: Tracker, hasher: Hasher | None = None
    ) -> None:
        self.book = book
        self.folders = folders
        self.tracker = tracker
        self.settler = Settler()
        self.waiting_marker: set[Key] = set()
        self.last_seen = time.monotonic()  # when a file last moved, or a drop appeared
        self._looks: dict[str, set[str]] = {}  # watch -> relpaths hints pointed at, this turn
        self._hinted: dict[str, tuple[Key, float]] = {}  # path -> (drop key, settle seconds)
        #: drops a rule edit newly matched, held until ``ingest rules accept`` (the
        #: RulesRecord fills and empties it; ``[rules] confirm_new_matches``)
        self.held: set[Key] = set()
        #: file sets waiting for listed files: what the ledger was last told they lack
        self._fileset_waiting: dict[Key, str] = {}
        #: settled drops waiting for their sidecar: until when (monotonic seconds)
        self.waiting_sidecar: dict[Key, float] = {}
        #: the checksums' thread, and the token of the hash each drop awaits
        self.hasher = hasher
        self.hashing: dict[Key, int] = {}
        self._hash_tokens = 0
        self._hash_shown: dict[Key, float] = {}  # when its progress was last written

    def __repr__(self) -> str:
        return f"<Intake settling={len(self.settler)} waiting_marker={len(self.waiting_marker)}>"

    def reset(self) -> None:
        self.settler = Settler()
        self.waiting_marker.clear()
        self.waiting_sidecar.clear()
        self.hashing.clear()  # answers to hashes started before are stale now

    def rules_changed(self) -> None:
        self._hinted.clear()

    def release(self, keys: set[Key]) -> None:
        """Look at drops no longer held on the next turn (a polled folder's scan would
        pass them over: they have not changed)."""
        for watch, relpath in keys:
            self._looks.setdefault(watch, set()).add(relpath)

    def resettle(self, tr: Tracked, now: float) -> None:
        """Settle a drop read back from the ledger again (its request is built anew)."""
        folder = self.folders.get(tr.watch)
        self.settler.touch(tr.key, settle=folder.settle_max if folder else 0.0, now=now)

    def next_deadline(self) -> float | None:
        return self.settler.next_deadline()

    def idle(self) -> bool:
        """Nothing settling, and no live drop but those waiting for their marker or, file
        sets, for listed files (any other is queued, at DIVA, or awaiting an answer)."""
        sets = self._fileset_waiting
        if any(key not in sets for key in self.settler):
            return False
        return all(key in self.waiting_marker or key in sets for key in self.tracker.drops)

    # -- what the folders show --------------------------------------------------------

    def hint(self, hint: Hint, now: float) -> None:
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
        self.last_seen = now
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
            elif key not in self.tracker or key in self.waiting_marker:
                looks.add(match.drop)  # (a drop in flight is DIVA's business now)
            return
        looks.update(k[1] for k in self.waiting_marker if k[0] == watch)
        looks.update(k[1] for k in self.waiting_sidecar if k[0] == watch)
        if match is None and os.path.isdir(path) and not os.path.islink(path):
            looks.add(relpath)  # a folder copied or moved in with its content

    def look(self, turn: Turn) -> None:
        """Read what this turn's hints pointed at: files, folders moved in, drops
        awaiting a marker."""
        looks, self._looks = self._looks, {}
        for watch, relpaths in looks.items():
            folder = self.folders.get(watch)
            if folder is None or folder.paused:
                continue
            for relpath in relpaths:
                key = (watch, relpath)
                if key in self.waiting_marker:
                    self._complete(turn, self.tracker.drops[key])
                elif key in self.waiting_sidecar and key in self.tracker.drops:
                    self.settler.forget(key)  # completed now, or observed again
                    self._complete(turn, self.tracker.drops[key])
                elif (files := self.folders.look(folder, relpath)) is not None:
                    for drop, (match, sig) in self.folders.group(folder, files).items():
                        self._consider(turn, folder, drop, match, sig)

    def scan(self, turn: Turn, folder: Folder) -> None:
        """A full scan of ``folder``: new and changed drops, and those that vanished."""
        seen = self.folders.scan(turn.tx, folder, turn.now, lambda: self._expects(folder))
        if seen is None:
            return
        files, changed, polled = seen
        drops = self.folders.group(folder, changed)
        for key, (match, sig) in drops.items():
            self._consider(turn, folder, key, match, sig)
        self._vanished(turn, folder, drops, files)
        self.folders.scanned(turn.tx, folder, polled)

    def _expects(self, folder: Folder) -> bool:
        """Whether drops still settling here should be on disk (files of drops in flight
        may vanish at any time: DIVA deletes them)."""
        settling = [k for k in self.settler if isinstance(k, tuple)]
        return any(k[0] == folder.watch for k in (*settling, *self.waiting_marker))

    def _consider(
        self, turn: Turn, folder: Folder, key: Key, match: Match | None, sig: Signature
    ) -> None:
        """A drop seen with ``sig``: new, changed, settling, or already dealt with."""
        if match is not None and match.kind == "fileset":
            # A scan sees the manifest alone; its drop is signed with its files too.
            sig = self.folders.read(folder, match.rule.name, key[1], "fileset")[0] or sig
        if key in self.settler:
            settle = match.rule.settle_seconds if match else folder.settle_max
            self.settler.observe(key, sig, settle=settle, now=turn.now)
            return
        if key in self.tracker or key in self.held:
            return
        if self.folders.settled[folder.watch].get(key[1]) == sig[:2]:
            return  # archived, rejected or failed as it is: only a change brings it back
        if match is None:
            return
        rule = match.rule
        drop = Drop(rule.name, folder.watch, key[1], match.kind)
        # The ledger records what was seen; the drop is signed in memory once it settles.
        drop_id = turn.tx.add(
            **drop.signed(sig).columns(),
            detail=f"detected by rule {rule.name!r}, settling for {rule.settle_seconds:g} s",
        )
        tr = Tracked(drop_id, drop, State.DETECTED)
        self.tracker.hold(tr)
        self.folders.remember(folder.watch, key[1], None)
        self.settler.observe(key, sig, settle=rule.settle_seconds, now=turn.now)
        self.last_seen = turn.now
        log.info("%s %s: detected (%s drop), settling", rule.name, key[1], match.kind)

    def _vanished(self, turn: Turn, folder: Folder, drops: dict[Key, Any], files: Files) -> None:
        gone = [k for k in self.tracker.drops if k[0] == folder.watch and k not in drops]
        for key in gone:
            if key in self.settler and key[1] not in files:
                tr = self.tracker.drops[key]
                if self.folders.read(folder, tr.rule, tr.path, tr.kind)[0] is None:
                    self.settler.forget(key)
                    self._gone(turn, tr, "vanished before it settled")

    # -- settling and completing ------------------------------------------------------

    def settle(self, turn: Turn) -> None:
        """Drops whose settle window is over: still changing, gone, or complete."""
        now = turn.now
        if self.hashing:
            self._hash_progress(turn)
        for key in self.settler.due(now):
            assert isinstance(key, tuple)
            folder = self.folders.get(key[0])
            tr = self.tracker.drops.get(key)
            if tr is None:
                self.settler.forget(key)
                continue
            if folder is None:
                self.settler.forget(key)
                self.tracker.move(turn, tr, State.SKIPPED, "no rule watches its folder any more")
                continue
            if folder.paused:
                self.settler.recheck(key, after=defaults.ENGINE_AWAY_RECHECK_SECONDS, now=now)
                continue
            sig, members = self.folders.read(folder, tr.rule, tr.path, tr.kind)
            crowd = sum(1 for k in self.tracker.drops if k[0] == folder.watch) > 1
            if sig is None and folder.looks_away(empty_means_away=crowd):
                # The whole folder is away (a share dropped, perhaps leaving an empty
                # mount point behind): its files did not vanish.
                self.folders.pause(turn.tx, folder, "the watch folder is gone or reads empty")
                again = defaults.ENGINE_AWAY_RECHECK_SECONDS
                folder.next_scan = min(folder.next_scan, now + again)
                self.settler.recheck(key, after=again, now=now)
                continue
            # (a file set's files send events its key never sees: no watcher vouches)
            vouched = folder.vouches(sig) and tr.kind != "fileset"
            if not self.settler.check(key, sig, now=now, vouched=vouched):
                if sig is None:
                    self._gone(turn, tr, "vanished before it settled")
                continue
            assert sig is not None
            tr.drop = tr.drop.signed(sig, members)
            self._complete(turn, tr)

    def _gone(self, turn: Turn, tr: Tracked, why: str) -> None:
        """A drop's files are gone. If an archive call of its own may have reached DIVA,
        that is what success looks like (DIVA deletes on source): ask DIVA, never SKIP."""
        if tr.uncertain and tr.body is not None and tr.object_name:
            log.info("%s: its files are gone; asking DIVA whether it archived them", tr.label)
            self.settler.forget(tr.key)
            self.tracker.queue(tr)
            return
        self.tracker.move(turn, tr, State.SKIPPED, why)

    def _complete_fileset(self, turn: Turn, tr: Tracked, rule: Rule) -> None:
        """A settled manifest: every file it lists there and settled, or wait for them
        (until ``incomplete_after_seconds``: then FAILED); never submitted partially."""
        fileset = rule.read_fileset(tr.path)
        if fileset is None:
            self._gone(turn, tr, "its manifest vanished before it settled")
            return
        tr.drop = tr.as_drop(rule).signed(fileset.signature, fileset.members.files)
        if fileset.missing and fileset.error is None:
            age = time.time() - fileset.written_ns / 1e9
            missing = "; ".join(fileset.missing[: defaults.MANIFEST_MISSING_SHOWN])
            more = len(fileset.missing) - defaults.MANIFEST_MISSING_SHOWN
            missing += f" (and {more} more)" if more > 0 else ""
            if age < rule.incomplete_after_seconds:
                waiting = f"waiting for {len(fileset.missing)} listed file(s): {missing}"
                if self._fileset_waiting.get(tr.key) != waiting:
                    self._fileset_waiting[tr.key] = waiting
                    log.info("%s %s: settled, %s", rule.name, tr.path, waiting)
                    turn.tx.update(tr.id, error=waiting)
                # Look again each settle window: a file that appears settles like any.
                again = max(rule.settle_seconds, defaults.MANIFEST_RECHECK_SECONDS)
                self.settler.observe(tr.key, fileset.signature, settle=again, now=turn.now)
                return
            why = (
                f"its files are still incomplete {rule.incomplete_after_seconds:g} s after "
                f"the manifest was written; missing: {missing}"
            )
            self._fileset_waiting.pop(tr.key, None)
            self.tracker.move(turn, tr, State.FAILED, why, error=why, size=tr.size,
                              mtime_ns=tr.mtime_ns, file_count=tr.file_count)  # fmt: skip
            return
        self._fileset_waiting.pop(tr.key, None)
        try:
            body = build_fileset_body(rule, tr.drop, fileset)
        except DropRefused as exc:
            # A manifest that cannot be read as written, or names a path outside the
            # watch folder: refused, naming the line; its files stay where they are.
            signature = {"size": tr.size, "mtime_ns": tr.mtime_ns, "file_count": tr.file_count}
            self.tracker.move(turn, tr, State.REJECTED, exc.reason, error=exc.reason, **signature)
            return
        tr.set_body(body)
        tr.priority, tr.on_conflict = body["priority"], rule.on_conflict
        turn.tx.update(
            tr.id, settled_at=time.time(), size=tr.size, mtime_ns=tr.mtime_ns,
            file_count=tr.file_count, object_name=tr.object_name, collection=tr.collection,
            media=body["media"], qos=rule.wire_qos, priority=body["priority"], error=None,
            body=tr.body_json, rules_version=self.book.version.version,
        )  # fmt: skip
        if rule.checksum and self.hasher is not None:
            self._hash(turn, tr, rule.checksum)
            return
        self.tracker.queue(tr)

    def _complete(self, turn: Turn, tr: Tracked) -> None:
        """A settled drop: its marker, then its request (the rules' word), then the queue."""
        key = tr.key
        match = self.book.rules.match(Path(tr.watch, tr.path))
        if match is None or match.drop != tr.path:
            self.waiting_marker.discard(key)
            self.tracker.move(turn, tr, State.SKIPPED, "no rule matches it any more")
            return
        rule = match.rule
        if rule.mode == "fileset":
            self._complete_fileset(turn, tr, rule)
            return
        drop = tr.as_drop(rule)
        marker = rule.marker_path(drop)
        if marker is not None and not os.path.lexists(marker):
            if key not in self.waiting_marker:
                self.waiting_marker.add(key)
                log.info("%s %s: settled, waiting for its ready marker %s", rule.name,
                         tr.path, marker.name)  # fmt: skip
                turn.tx.update(tr.id, error=f"waiting for the ready marker {marker.name}")
            return
        self.waiting_marker.discard(key)
        meta, sidecar = self._sidecar(turn, tr, rule, drop)
        if meta is None:
            return  # waiting for it, or the drop has failed for want of it
        try:
            body = build_archive_body(rule, drop, meta=meta, sidecar=sidecar)
        except DropRefused as exc:
            # It cannot be archived safely (an unsafe name...): refused, files in place.
            self.tracker.move(turn, tr, State.REJECTED, exc.reason, error=exc.reason)
            return
        tr.set_body(body)
        tr.priority, tr.on_conflict = rule.priority, rule.on_conflict
        turn.tx.update(
            tr.id, settled_at=time.time(), size=tr.size, mtime_ns=tr.mtime_ns,
            file_count=tr.file_count, object_name=tr.object_name, collection=tr.collection,
            media=rule.media, qos=rule.wire_qos, priority=rule.priority, error=None,
            body=tr.body_json, rules_version=self.book.version.version,
        )  # fmt: skip
        if rule.checksum and self.hasher is not None:
            self._hash(turn, tr, rule.checksum)
            return
        self.tracker.queue(tr)

    def _sidecar(
        self, turn: Turn, tr: Tracked, rule: Rule, drop: Drop
    ) -> tuple[dict[str, str] | None, str | None]:
        """The sidecar's field values and its relpath (None when absent); (None, None)
        while the drop waits for it, or once it is FAILED or REJECTED for want of it."""
        path = rule.sidecar_path(drop)
        if path is None:
            return {}, None
        key, now = tr.key, turn.now
        try:
            st: os.stat_result | None = os.stat(path, follow_symlinks=False)
        except OSError:
            st = None
        # A sidecar is read once it is a plain file left alone for the rule's settle
        # time (capped: it is small), so a half-written one is not taken for bad XML.
        quiet = min(rule.settle_seconds, defaults.SIDECAR_SETTLE_MAX_SECONDS)
        age = time.time() - st.st_mtime if st is not None else 0.0
        if st is not None and stat.S_ISREG(st.st_mode) and age >= quiet:
            self.waiting_sidecar.pop(key, None)
            try:
                return rule.read_sidecar(drop), rule.sidecar_relpath(drop)
            except SidecarError as exc:
                why = f"sidecar {exc}"
                self.tracker.move(turn, tr, State.REJECTED, why, error=why)
                return None, None
        deadline = self.waiting_sidecar.get(key)
        if deadline is None:
            deadline = now + rule.sidecar_wait_seconds
            self.waiting_sidecar[key] = deadline
            log.info("%s %s: settled, waiting for its sidecar %s", rule.name, tr.path, path.name)
            turn.tx.update(tr.id, error=f"waiting for its sidecar {path.name}")
        if now < deadline:
            step = min(deadline - now, defaults.SIDECAR_RECHECK_SECONDS)
            if st is not None:
                step = min(step, max(quiet - age, 0.05))
            sig = (tr.size or 0, tr.mtime_ns or 0, tr.file_count or 0)
            self.settler.observe(key, sig, settle=step, now=now)
            return None, None
        self.waiting_sidecar.pop(key, None)
        if rule.sidecar_required:
            why = f"its sidecar {path.name} did not come within {rule.sidecar_wait_seconds:g} s"
            self.tracker.move(turn, tr, State.FAILED, why, error=why)
            return None, None
        log.info("%s %s: no sidecar %s after %g s; going ahead without it", rule.name,
                 tr.path, path.name, rule.sidecar_wait_seconds)  # fmt: skip
        return {}, None

    # -- checksums --------------------------------------------------------------------

    def _hash(self, turn: Turn, tr: Tracked, algorithm: str) -> None:
        """Hash the settled drop's components on the hashing thread; it is queued for
        DIVA once :meth:`hashed` has its checksums."""
        assert self.hasher is not None and tr.body is not None
        self._hash_tokens += 1
        self.hashing[tr.key] = self._hash_tokens
        components = list(tr.body["components"])
        turn.tx.update(tr.id, error=f"hashing ({algorithm}) {len(components)} file(s)")
        self.hasher.start(tr.key, self._hash_tokens, algorithm, tr.watch, components, tr.size or 0)

    def _hash_progress(self, turn: Turn) -> None:
        """How far the hashing of a large drop has come, in its row for ``ingest status``
        (every few seconds: a row write per block would cost more than it tells)."""
        assert self.hasher is not None
        for key, (done, total) in self.hasher.progress().items():
            tr = self.tracker.drops.get(key)
            last = self._hash_shown.get(key, 0.0)
            if tr is None or total < defaults.HASH_PROGRESS_MIN_BYTES:
                continue
            if turn.now - last < defaults.HASH_PROGRESS_SECONDS:
                continue
            self._hash_shown[key] = turn.now
            share = min(done / total, 1.0)
            size = f"{total / 1e9:.1f} GB" if total >= 1e9 else f"{total / 1e6:.0f} MB"
            turn.tx.update(tr.id, error=f"hashing: {share:.0%} of {size}")

    def hashed(self, turn: Turn, done: HashDone) -> None:
        """A drop's checksums (or why there are none): record them, then queue it."""
        if self.hashing.get(done.key) != done.token:
            return  # stale: the drop was hashed again, or memory rebuilt
        del self.hashing[done.key]
        self._hash_shown.pop(done.key, None)
        tr = self.tracker.drops.get(done.key)
        if tr is None or tr.queued:
            return
        if done.changed:
            folder = self.folders.get(tr.watch)
            settle = folder.settle_max if folder else 0.0
            self.settler.touch(tr.key, settle=settle, now=turn.now)
            log.info("%s %s: %s; settling again", tr.rule, tr.path, done.error)
            turn.tx.update(tr.id, error=f"{done.error}; settling again")
            return
        if done.hashed is None:
            self.tracker.move(turn, tr, State.FAILED, done.error, error=done.error)
            return
        found = done.hashed
        log.info("%s %s: %s of %d file(s), %d bytes in %.1f s", tr.rule, tr.path,
                 found.algorithm, len(found.digests), found.bytes_read, found.seconds)  # fmt: skip
        tr.checksum_algo, tr.checksums = found.algorithm, found.digests
        turn.tx.update(
            tr.id, checksum_algo=found.algorithm, error=None,
            checksums=json.dumps(found.digests, sort_keys=True, separators=(",", ":")),
        )  # fmt: skip
        self.tracker.queue(tr)

    def still_there(self, turn: Turn, tr: Tracked) -> bool:
        """Just before the intent: is the settled file still the one we settled?"""
        if tr.kind != "file" or tr.size is None or tr.uncertain:
            return True
        same = same_file(os.path.join(tr.watch, tr.path), tr.size, tr.mtime_ns)
        if same is None:
            if tr.attempts:
                # DIVA has just said it holds nothing of an earlier attempt's, yet the files
                # left: a person should look (only DIVA may delete them).
                why = "its files vanished after DIVA said it had not archived them"
                self.tracker.move(turn, tr, State.FAILED, why, error=why)
            else:
                why = "vanished between settling and submitting"
                self.tracker.move(turn, tr, State.SKIPPED, why)
            return False
        if same:
            return True
        tr.queued = False
        folder = self.folders.get(tr.watch)
        settle = folder.settle_max if folder else 0.0
        self.settler.touch(tr.key, settle=settle, now=time.monotonic())
        log.info("%s %s: changed after it settled; settling again", tr.rule, tr.path)
        return False

    def _shed_hints(self, tr: Tracked) -> None:
        """Forget the watcher's paths that pointed at a drop whose files are gone."""
        if tr.kind == "file":
            self._hinted.pop(os.path.join(tr.watch, tr.path), None)
            return
        for path in [p for p, (key, _) in self._hinted.items() if key == tr.key]:
            del self._hinted[path]

    def finished(self, turn: Turn, tr: Tracked) -> None:
        """A drop reached a final state: it leaves memory, the settled index keeps it."""
        self.waiting_marker.discard(tr.key)
        self.waiting_sidecar.pop(tr.key, None)
        self.hashing.pop(tr.key, None)
        self.settler.forget(tr.key)
        if tr.state == State.COMPLETED and tr.source_deleted:
            # Its files are gone: memory keeps nothing of it (nor does a start-up read it).
            self.folders.forget(tr.watch, tr.path)
            self._shed_hints(tr)
        else:
            size, mtime = tr.size, tr.mtime_ns
            final = None if size is None or mtime is None else (size, mtime)
            self.folders.remember(tr.watch, tr.path, final)
        self._fileset_waiting.pop(tr.key, None)
        # (a file set's manifest is its ready marker: removed once COMPLETED, as DIVA
        # keeps the files it was not asked to delete)
        if tr.state == State.COMPLETED and (tr.source_deleted or tr.kind == "fileset"):
            turn.removals.append(Tidy.of(tr, self.book.rules.get(tr.rule)))
        if tr.state == State.COMPLETED and tr.checksums and tr.checksum_algo and tr.object_name:
            # Compare with what DIVA says it stored (once this turn has committed).
            turn.calls.append(
                verify(tr.key, tr.id, tr.object_name, tr.collection or "", tr.checksum_algo,
                       tr.checksums)
            )  # fmt: skip
