"""The disk side of a drop's life: from a hint or a scan to a request queued at DIVA's door.

::

    Hint / scan ─▶ look ─▶ DETECTED ─▶ settled ─▶ ready marker? ─▶ archive body ─▶ Tracker
                              │  (Settler timers)                 (the rules' word)
                              └─ vanished: SKIPPED, or asked of DIVA if a call may have gone

:class:`Intake` decides what the watch folders show means: a new drop (its DETECTED row),
one still changing (its settle timer restarts), one settled (its ready marker, then its
archive body from the rules, then the Tracker's queue), one gone. It holds the settle
timers; what a settled drop still waits for (its marker, its sidecar, a file set's listed
files, its checksums) its :class:`~ingest.engine.waits.Waits` holds. The drops themselves
are the Tracker's, held once. Everything it writes goes through the turn it is handed;
the only side effect it decides on, tidying a drop folder after DIVA archived and deleted
the drop, goes on the turn too, for after the commit.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from .. import defaults
from ..drop import Drop, absent
from ..ledger import State
from ..rulefiles import RuleBook
from ..rules import Match
from ..settle import Settler, Signature
from ..watch import Scan, ignored_name, pack
from .checksums import HashDone, Hasher, verify
from .dispatch import Key, Turn
from .drops import Tracked
from .folders import Folder, Folders, Hint, Tidy, same_file
from .submissions import Tracker
from .waits import Waits

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
        self.last_seen = time.monotonic()  # when a file last moved, or a drop appeared
        self._looks: dict[str, set[str]] = {}  # watch -> relpaths hints pointed at, this turn
        self._hinted: dict[str, tuple[Key, float]] = {}  # path -> (drop key, settle seconds)
        self._swept: dict[str, float] = {}  # watch -> when a scan last looked for gone files
        self._missed: dict[str, dict[str, float]] = {}  # watch -> settled path -> missed since
        #: drops a rule edit newly matched, held until ``ingest rules accept`` (the
        #: RulesRecord fills and empties it; ``[rules] confirm_new_matches``)
        self.held: set[Key] = set()
        #: settled drops waiting for their marker, sidecar, listed files or checksums
        self.waits = Waits(book, folders, tracker, self.settler, hasher)

    def __repr__(self) -> str:
        return f"<Intake settling={len(self.settler)} waiting_marker={len(self.waits.marker)}>"

    def reset(self) -> None:
        self.settler = Settler()
        self.waits.reset(self.settler)

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
        marker, sets = self.waits.marker, self.waits.listed
        if any(key not in sets for key in self.settler):
            return False
        return all(key in marker or key in sets for key in self.tracker.drops)

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
        if cached is not None:
            if cached[0] in self.settler:
                self.settler.touch(cached[0], settle=cached[1], now=now)
                return
            if cached[0][1] in self._looks.get(watch, ()):
                return  # this turn's look reads it: a new file's create, writes and close
        looks = self._looks.setdefault(watch, set())
        match = self.book.rules.match(Path(path))
        if match is not None and not match.marker:
            key = (watch, match.drop)
            if len(self._hinted) >= defaults.ENGINE_HINT_CACHE_SIZE:
                self._hinted.clear()
            self._hinted[path] = (key, match.rule.settle_seconds)
            if key in self.settler:
                self.settler.touch(key, settle=match.rule.settle_seconds, now=now)
            elif key not in self.tracker or key in self.waits.marker:
                looks.add(match.drop)  # (a drop in flight is DIVA's business now)
            return
        looks.update(k[1] for k in self.waits.marker if k[0] == watch)
        looks.update(k[1] for k in self.waits.sidecar if k[0] == watch)
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
                if key in self.waits.marker:
                    self.waits.complete(turn, self.tracker.drops[key])
                elif key in self.waits.sidecar and key in self.tracker.drops:
                    self.settler.forget(key)  # completed now, or observed again
                    self.waits.complete(turn, self.tracker.drops[key])
                elif (files := self.folders.look(folder, relpath)) is not None:
                    for drop, (match, sig) in self.folders.group(folder, files).items():
                        self._consider(turn, folder, drop, match, sig)

    def scan(self, turn: Turn, folder: Folder) -> None:
        """A full scan of ``folder``: new and changed drops, and those that vanished."""
        seen = self.folders.scan(turn.tx, folder, turn.now, lambda: self._expects(folder))
        if seen is None:
            return
        found, changed, polled = seen
        drops = self.folders.group(folder, changed)
        for key, (match, sig) in drops.items():
            self._consider(turn, folder, key, match, sig)
        self._vanished(turn, folder, drops, found)
        # A polled folder is scanned every few seconds: its sweep, a pass over every
        # settled path, waits for the interval of a native folder's rescans.
        since = turn.now - self._swept.get(folder.watch, float("-inf"))
        if not polled or since >= self.folders.rescan_seconds:
            self._swept[folder.watch] = turn.now
            self._sweep(turn, folder, found)
        self.folders.scanned(turn.tx, folder, polled)

    def _sweep(self, turn: Turn, folder: Folder, found: Scan) -> None:
        """Final drops whose files left the folder (an operator removed a refused file):
        memory keeps nothing of them, and the ledger says when, so that a start-up does
        not read them back either. A file there later is a new drop.

        Only once a second sweep, a rescan interval on, still misses them: a share that
        read empty for a moment must not turn the files it kept (archived without
        delete-on-source, say) into new drops when it is back.
        """
        watch = folder.watch
        settled = self.folders.settled.get(watch)
        missed = self._missed.setdefault(watch, {})
        if not settled:
            missed.clear()
            return
        # (a folder drop's name is never found as a file: its folder is there, or not)
        missing = [p for p in found.missing if settled.get(p) is not None]
        gone = {p for p in missing if absent(f"{watch}/{p}")}
        if missing:
            log.debug("%s: %d settled paths not found by its scan, %d of them gone",
                      watch, len(missing), len(gone))  # fmt: skip
        for path in missed.keys() - gone:
            del missed[path]  # back, or settled anew
        for path in gone:
            since = missed.setdefault(path, turn.now)
            if turn.now - since < self.folders.rescan_seconds:
                continue
            del missed[path]
            turn.tx.files_gone(watch, path, "its files are no longer in the watch folder")
            self.folders.forget(watch, path)
            self._hinted.pop(os.path.join(watch, path), None)
            log.info("%s/%s: its files are gone; forgotten", watch, path)

    def _expects(self, folder: Folder) -> bool:
        """Whether drops still settling here should be on disk (files of drops in flight
        may vanish at any time: DIVA deletes them)."""
        settling = [k for k in self.settler if isinstance(k, tuple)]
        return any(k[0] == folder.watch for k in (*settling, *self.waits.marker))

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
        if self.folders.settled[folder.watch].get(key[1]) == pack(sig[0], sig[1]):
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

    def _vanished(self, turn: Turn, folder: Folder, drops: dict[Key, Any], found: Scan) -> None:
        gone = [k for k in self.tracker.drops if k[0] == folder.watch and k not in drops]
        for key in gone:
            if key in self.settler and not found.found(key[1]):
                tr = self.tracker.drops[key]
                if self.folders.read(folder, tr.rule, tr.path, tr.kind)[0] is None:
                    self.settler.forget(key)
                    self.waits.gone(turn, tr, "vanished before it settled")

    # -- settling and completing ------------------------------------------------------

    def settle(self, turn: Turn) -> None:
        """Drops whose settle window is over: still changing, gone, or complete."""
        now = turn.now
        self.waits.hash_progress(turn)
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
            # (counted only for a drop that reads gone: once per due drop, the count made
            # settling a burst of n drops cost n x n steps)
            if sig is None and folder.looks_away(empty_means_away=self._crowd(folder)):
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
                    self.waits.gone(turn, tr, "vanished before it settled")
                continue
            assert sig is not None
            tr.drop = tr.drop.signed(sig, members)
            self.waits.complete(turn, tr)

    def _crowd(self, folder: Folder) -> bool:
        """Whether more than one live drop is in ``folder`` (counting stops at two)."""
        mine = (k for k in self.tracker.drops if k[0] == folder.watch)
        return next(mine, None) is not None and next(mine, None) is not None

    def hashed(self, turn: Turn, done: HashDone) -> None:
        """A drop's checksums (or why there are none): see :meth:`Waits.hashed`."""
        self.waits.hashed(turn, done)

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
        self.waits.forget(tr.key)
        self.settler.forget(tr.key)
        if tr.state == State.COMPLETED and tr.source_deleted:
            # Its files are gone: memory keeps nothing of it (nor does a start-up read it).
            self.folders.forget(tr.watch, tr.path)
            self._shed_hints(tr)
        else:
            size, mtime = tr.size, tr.mtime_ns
            final = None if size is None or mtime is None else pack(size, mtime)
            self.folders.remember(tr.watch, tr.path, final)
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
