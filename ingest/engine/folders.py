"""The watch folders: how each is watched, what a scan of it shows, and when it looks away.

A :class:`Folder` is one watch folder's watcher and scan state. :class:`Folders` holds the
folders of the rules in force: it starts native watchers, restarts dead ones with backoff
(the folder is polled meanwhile), runs full scans, writes each folder's health row, and
reads drops from disk (files grouped into drops by the rules, with their signatures).

It also guards rule 4 of the README's Reliability section: a folder that looks away
(gone, unreadable, on another filesystem than before, or suddenly empty while drops are
expected in it, as an unmounted share's mount point is) is paused, and nothing in it is
treated as gone until it has stayed so for ``ENGINE_BLIP_GRACE_SECONDS``.

It decides nothing about drops (the engine does), and removes nothing but what a
:class:`Tidy` names, run by the engine after the turn that decided it has committed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .. import defaults
from ..ledger import Batch, Ledger
from ..members import fileset_members, folder_members
from ..rulefiles import RuleBook
from ..rules import Match, Rule
from ..settle import Signature
from ..watch import (
    TRUSTED_FOLDER_MTIMES,
    Listing,
    NativeWatcher,
    Packed,
    Scan,
    pack,
    resolve_observer,
    scan,
    unpack,
)
from .dispatch import Key
from .drops import Tracked

__all__ = ["Files", "Folder", "Folders", "Hint", "Tidy", "same_file"]

log = logging.getLogger("ingest.engine")

#: relpath -> (size, mtime_ns) :func:`ingest.watch.pack`-ed, as :func:`ingest.watch.scan`
#: gives them
Files = dict[str, Packed]


@dataclass(frozen=True)
class Hint:
    """A watcher saw something at ``path`` in ``watch``: a reason to look, never the truth."""

    watch: str
    path: str


@dataclass
class Folder:
    """One watch folder: its rules, its watcher's health, and what its last scans saw."""

    watch: str
    rules: tuple[Rule, ...]
    observer: str  # native | polling
    why: str
    watcher: NativeWatcher | None = None
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
    #: what the last scan could not read (said once while it lasts, again if it comes back)
    unreadable: set[str] = field(default_factory=set)
    reported: tuple[str, str, str] | None = None  # the health last written to the ledger
    reported_at: float = 0.0
    #: the last scan's files not as the ledger settled them, kept only while the folder is
    #: polled (the next poll passes over those still the same)
    recent: Files | None = None
    #: the filesystem type of the folder's mount
    fstype: str = "unknown"
    #: each folder's listing by the last poll, kept only while polled on a filesystem
    #: whose folder mtimes are trusted (:data:`ingest.watch.TRUSTED_FOLDER_MTIMES`)
    listings: dict[str, Listing] | None = None
    #: what the ledger settled here, as last read whole: (paths, seconds), for the log
    #: line of the first scan after it
    loaded: tuple[int, float] | None = None

    @property
    def settle_max(self) -> float:
        return max((r.settle_seconds for r in self.rules), default=0.0)

    @property
    def polled(self) -> bool:
        """Scanned every few seconds: a network share, or a native watcher that is down."""
        return self.observer == "polling" or self.health == "down"

    def vouches(self, sig: Signature | None) -> bool:
        """Whether a live native watcher, having seen no event for a whole settle window,
        vouches for a drop whose first read caught it mid-copy (its mtime that old)."""
        return (
            sig is not None
            and self.observer == "native"
            and self.watcher is not None
            and self.watcher.alive
            and time.time() - sig[1] / 1e9 >= self.settle_max
        )

    def looks_away(self, *, empty_means_away: bool) -> bool:
        """Whether the folder as a whole looks away, rather than one drop having left it:
        gone or unreadable, on another filesystem than at the last scan, or (when other
        drops are expected in it) suddenly empty, as an unmounted share's mount point is."""
        try:
            if self.dev is not None and os.stat(self.watch).st_dev != self.dev:
                return True
            with os.scandir(self.watch) as entries:
                return empty_means_away and next(entries, None) is None
        except OSError:
            return True


class Folders(Mapping[str, Folder]):
    """The watch folders of the rules in force, by path, and what the ledger settled in each."""

    def __init__(
        self,
        book: RuleBook,
        ledger: Ledger,
        report: Callable[[Hint], None],
        *,
        rescan_seconds: float,
        watch_poll_seconds: float,
    ) -> None:
        self.book = book
        self.ledger = ledger
        self._report = report  # called by native watchers, from their own threads
        self.rescan_seconds = rescan_seconds
        self.watch_poll_seconds = watch_poll_seconds
        self._folders: dict[str, Folder] = {}
        #: by watch folder: path -> (size, mtime_ns) of its final drop, packed, None while
        #: its drop is live. A scan compares the disk with it, the ledger is not asked again.
        self.settled: dict[str, dict[str, Packed | None]] = {}

    def __getitem__(self, watch: str) -> Folder:
        return self._folders[watch]

    def __iter__(self) -> Iterator[str]:
        return iter(self._folders)

    def __len__(self) -> int:
        return len(self._folders)

    def __repr__(self) -> str:
        return f"<Folders {list(self._folders)}>"

    @property
    def settle_max(self) -> float:
        return max((f.settle_max for f in self._folders.values()), default=0.0)

    def next_scan(self) -> float | None:
        return min((f.next_scan for f in self._folders.values()), default=None)

    def reload(self, now: float) -> None:
        """Read what the ledger settled anew, and scan every folder again from scratch."""
        for folder in self._folders.values():
            self._load(folder)
            folder.next_scan = now
            folder.scanned = False
            folder.recent = None

    def _load(self, folder: Folder) -> None:
        """Read what the ledger settled in ``folder``, timed for its first scan's log line."""
        started = time.perf_counter()
        self.settled[folder.watch] = settled = self.ledger.settled_by_path(folder.watch)
        folder.loaded = (len(settled), time.perf_counter() - started)

    def remember(self, watch: str, path: str, value: Packed | None) -> None:
        """A drop at ``path`` is live (None), or final as it is on disk now (its size and
        mtime, :func:`ingest.watch.pack`-ed)."""
        if (settled := self.settled.get(watch)) is not None:
            settled[path] = value

    def forget(self, watch: str, path: str) -> None:
        """A drop at ``path`` is final and its files are gone: nothing is left to compare
        a scan with (a file there later is a new drop), so memory keeps no entry."""
        if (settled := self.settled.get(watch)) is not None:
            settled.pop(path, None)

    # -- watchers ---------------------------------------------------------------------

    def apply(
        self, wanted: Mapping[str, tuple[Rule, ...]], now: float, *, load: bool = True
    ) -> None:
        """Watch exactly the folders of ``wanted`` with their rules. A folder new, or
        watched another way than before, reads what the ledger settled in it (``load``)."""
        for watch in list(self._folders):
            if watch not in wanted:
                self.settled.pop(watch, None)
                gone = self._folders.pop(watch)
                if gone.watcher is not None:
                    gone.watcher.stop()
                log.info("no rule watches %s any more: stopped watching it", watch)
        for watch, rules in wanted.items():
            chosen = resolve_observer(watch, rules)
            observer, why = chosen.kind, chosen.why
            old = self._folders.get(watch)
            folder = old if old is not None and old.observer == observer else None
            if folder is None:
                if old is not None and old.watcher is not None:
                    old.watcher.stop()
                folder = self._folders[watch] = Folder(watch, rules, observer, why)
                folder.fstype = chosen.fstype
                if observer == "polling" and chosen.fstype not in TRUSTED_FOLDER_MTIMES:
                    log.info(
                        "%s: folder mtimes on %s are not trusted: every poll lists every "
                        "folder", watch, chosen.fstype,
                    )  # fmt: skip
                if load:
                    self._load(folder)
                else:
                    self.settled[watch] = {}
                if observer == "native":
                    self._start_watcher(folder, now)
            folder.rules = rules
            folder.unmatched.clear()
            folder.recent = None  # new rules may take files that did not change
            folder.next_scan = now
            names = ", ".join(r.name for r in rules)
            log.info("watching %s with %s events (%s) for rules: %s", watch, observer, why, names)

    def _start_watcher(self, folder: Folder, now: float) -> None:
        report = self._report
        watcher = NativeWatcher(folder.watch, lambda watch, path: report(Hint(watch, path)))
        try:
            # The folder itself now; the folders below it as the full scan, due now,
            # lists them (one walk of the tree, not two).
            watcher.start(walk=False)
        except OSError as exc:
            self._watcher_failed(folder, now, exc)
            return
        folder.watcher = watcher
        folder.next_scan = now
        if folder.health == "down":
            folder.health, folder.detail = "ok", ""
            log.info("watching %s natively again", folder.watch)

    def _watcher_failed(self, folder: Folder, now: float, exc: OSError) -> None:
        """The native watcher could not start, or could not watch a folder below: the
        folder is polled, and watched again after a backoff."""
        if folder.watcher is not None:
            folder.watcher.stop()
            folder.watcher = None
        folder.watcher_failures += 1
        delay = min(
            defaults.ENGINE_WATCHER_RETRY_MAX_SECONDS,
            defaults.ENGINE_WATCHER_RETRY_SECONDS * 2 ** (folder.watcher_failures - 1),
        )
        folder.watcher_retry_at = now + delay
        folder.health, folder.detail = "down", f"native watcher failed: {exc}"
        log.error(
            "cannot watch %s natively (%s); scanning it every %.0f s instead, and trying "
            "again in %.0f s", folder.watch, exc, self.watch_poll_seconds, delay,
        )  # fmt: skip

    def revive(self, folder: Folder, now: float) -> None:
        """Restart a native watcher that died (or never started), once its backoff is over."""
        if folder.observer != "native" or folder.paused:
            return
        alive = folder.watcher is not None and folder.watcher.alive
        if alive or now < folder.watcher_retry_at:
            return
        if folder.watcher is not None:
            log.error("the native watcher of %s died; restarting it", folder.watch)
            folder.watcher.stop()
            folder.watcher = None
            folder.next_scan = now  # whatever happened while it was dead
        self._start_watcher(folder, now)

    def stop(self) -> None:
        for folder in self._folders.values():
            if folder.watcher is not None:
                folder.watcher.stop()

    # -- scans and health -------------------------------------------------------------

    def scan(
        self, tx: Batch, folder: Folder, now: float, expects_files: Callable[[], bool]
    ) -> tuple[Scan, Files, bool] | None:
        """A full scan: what it found (``Scan.found``, ``Scan.missing``); the files for
        the rules to look at (new or not as the ledger settled them, less those a poll
        saw the same last time; every file for a file set's rules); and whether the
        folder is polled. None when it looks away: it is paused. ``expects_files``:
        should drops there be on disk?"""
        polling = folder.polled
        folder.next_scan = now + (self.watch_poll_seconds if polling else self.rescan_seconds)
        watcher = folder.watcher if folder.observer == "native" else None
        # A poll of a folder whose mtimes can be trusted lists only the folders that
        # changed (and still lstats every file); any other scan lists every folder.
        reuse = polling and folder.fstype in TRUSTED_FOLDER_MTIMES
        listings = (folder.listings or {}) if reuse else None
        folder.listings = None
        # Polling an idle share: what is not as the ledger settled it but as the last
        # cycle saw it needs no second look either (a file dropped and still settling).
        recent = folder.recent
        if recent is None or not all(r.mode == "file" for r in folder.rules):
            recent = None
        # A file set's manifest can stay as it was while the files it lists arrive: it
        # goes to the rules (and reads them) on every scan.
        sets = any(r.mode == "fileset" for r in folder.rules)
        started = time.perf_counter()
        try:
            result = scan(
                folder.watch,
                on_folder=None if watcher is None else watcher.add,
                listings=listings,
                known=self.settled.get(folder.watch, {}),
                every=sets,
            )
        except OSError as exc:
            self.pause(tx, folder, f"cannot read the folder: {exc.strerror or exc}")
            return None
        took = time.perf_counter() - started
        if folder.dev is not None and result.dev != folder.dev and not result.count:
            self.pause(tx, folder, "the folder now reads empty on another filesystem")
            return None
        if not result.count and folder.last_count and expects_files():
            # A share that went away often leaves an empty mount point behind: give it a
            # grace period before believing that everything vanished at once.
            if folder.empty_since is None:
                folder.empty_since = now
            if now - folder.empty_since < defaults.ENGINE_BLIP_GRACE_SECONDS:
                self.pause(tx, folder, "the folder suddenly reads empty")
                folder.next_scan = min(folder.next_scan, now + defaults.ENGINE_AWAY_RECHECK_SECONDS)
                return None
        if watcher is not None and watcher.error is not None:
            # A folder below could not be watched: polled until a watcher watches it all.
            self._watcher_failed(folder, now, watcher.error)
            polling = True
            folder.next_scan = now + self.watch_poll_seconds
        elif watcher is not None:
            folder.watcher_failures = 0  # every folder is watched: the backoff starts over
        folder.empty_since = None
        if not folder.scanned:
            # What a start costs, where an admin of a large tree would look for it: the
            # scan is the walk, the read the ledger's part (docs/performance.md).
            read = ""
            if folder.loaded is not None:
                paths, seconds = folder.loaded
                read = f"; the ledger's {paths:,} settled paths read in {seconds:.2f} s"
            log.info(
                "%s: first scan: %s files in %s folders in %.2f s%s", folder.watch,
                f"{result.count:,}", f"{result.folders:,}", took, read,
            )  # fmt: skip
            folder.loaded = None
        folder.dev = result.dev
        folder.last_count = result.count
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
        for relpath, error in result.errors.items():
            if relpath not in folder.unreadable:
                log.warning(
                    "cannot read %s/%s (%s): nothing in it is archived until it can be read",
                    folder.watch, relpath, error,
                )  # fmt: skip
        folder.unreadable = set(result.errors)
        # Files that matched no rule and have left since: their names need no memory
        # (looked up one by one: a set of every path, on every poll, costs more).
        if folder.unmatched:
            found, skipped = result.found, result.skipped
            folder.unmatched = {p for p in folder.unmatched if found(p) or p in skipped}
        # New or not as the ledger settled them: the very files group() would not pass
        # over, found as they were read.
        changed = result.changed
        if sets:
            changed = result.files
        elif recent:
            changed = {p: v for p, v in changed.items() if recent.get(p) != v}
        folder.recent = result.changed if polling else None
        folder.listings = result.listings if polling else None
        return result, changed, polling

    def scanned(self, tx: Batch, folder: Folder, polled: bool) -> None:
        """A full scan is over: record the folder's health."""
        folder.scanned = True
        if folder.health != "down":
            folder.health, folder.detail = "ok", ""
        report = (folder.observer, folder.health, folder.detail or folder.why)
        wall = time.time()
        # A polled folder is scanned every few seconds: its health row (a commit, an
        # fsync) is rewritten when it changes, and otherwise only now and then.
        stale = not polled or wall - folder.reported_at >= defaults.ENGINE_WATCHER_REPORT_SECONDS
        if report != folder.reported or stale:
            tx.watcher(folder.watch, *report, last_scan_at=wall)
            folder.reported, folder.reported_at = report, wall

    def pause(self, tx: Batch, folder: Folder, why: str) -> None:
        if folder.paused != why:
            log.warning("pausing %s: %s; nothing in it is treated as gone", folder.watch, why)
        folder.paused = why
        tx.watcher(folder.watch, folder.observer, "paused", why)
        folder.reported = (folder.observer, "paused", why)

    # -- reading drops ----------------------------------------------------------------

    def group(self, folder: Folder, files: Files) -> dict[Key, tuple[Match | None, Signature]]:
        """Files -> drops with their signatures. Files the ledger settled as they are skip
        the rules entirely (the fast path of a start-up over a tree already archived)."""
        drops: dict[Key, tuple[Match | None, Signature]] = {}
        base = folder.watch
        settled = self.settled[base]
        # A file set's manifest can stay as it was while the files it lists arrive: it
        # goes to the rules (and reads them) on every scan, never by the fast path.
        fast = all(rule.mode != "fileset" for rule in folder.rules)
        for relpath, value in files.items():
            if fast and settled.get(relpath) == value:
                continue  # archived, rejected or failed as it is
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
            size, mtime = unpack(value)
            if match.kind == "file":
                drops[key] = (match, (size, mtime, 1))
            else:
                _, (total, newest, count) = drops.get(key, (match, (0, 0, 0)))
                drops[key] = (match, (total + size, max(newest, mtime), count + 1))
        return drops

    def look(self, folder: Folder, relpath: str) -> Files | None:
        """The files at ``relpath`` (a file, or a folder moved in); None when unreadable."""
        try:
            files = scan(folder.watch, prefix=relpath).files
        except NotADirectoryError:
            files = {}  # a file: read it below (this must come before OSError, its base)
        except OSError:
            return None
        if not files:
            full = os.path.join(folder.watch, relpath)
            try:
                st = os.lstat(full)
            except OSError:
                return None
            if not os.path.isdir(full):
                files = {relpath: pack(st.st_size, st.st_mtime_ns)} if regular(st) else {}
        return files

    def read(
        self, folder: Folder, rule_name: str, relpath: str, kind: str
    ) -> tuple[Signature | None, tuple[str, ...]]:
        """A drop's signature now, and its member files (folder drops); None when gone.

        A folder's members are :func:`ingest.members.folder_members`'s, as ``ingest rules
        explain`` lists them; a file set's, :func:`ingest.members.fileset_members`'s: its
        signature takes in the manifest and every listed file found."""
        if kind == "file":
            try:
                st = os.lstat(os.path.join(folder.watch, relpath))
            except OSError:
                return None, ()
            return ((st.st_size, st.st_mtime_ns, 1) if regular(st) else None), ()
        if kind == "fileset":
            found_set = fileset_members(folder.watch, relpath, self.book.rules.get(rule_name))
            if found_set is None:
                return None, ()
            return found_set.signature, found_set.members.files
        found = folder_members(folder.watch, relpath, self.book.rules.get(rule_name))
        if not found.files:
            return None, ()
        return (found.size, found.mtime_ns, found.count), found.files


@dataclass(frozen=True)
class Tidy:
    """What ingest removes once DIVA archived a drop and deleted its files: the drop's
    ready marker (a stale one would make the next drop of that name ready at once) and
    the folders DIVA emptied; a file set's manifest, which is its ready marker. Nothing
    else, ever: ``rmdir`` fails on anything not empty."""

    label: str
    marker: Path | None = None
    top: str | None = None  # a folder drop's folder
    #: a file set's manifest modified after this (ns) is a new one, for the next set
    marker_newest_ns: int | None = None

    @classmethod
    def of(cls, tr: Tracked, rule: Rule | None) -> Tidy:
        marker = rule.marker_path(tr.as_drop(rule)) if rule and rule.ready_marker else None
        if tr.kind == "fileset":
            marker = Path(tr.watch, *tr.path.split("/"))  # (gone already if DIVA took it)
            return cls(tr.label, marker, None, tr.mtime_ns)
        return cls(
            tr.label, marker, os.path.join(tr.watch, tr.path) if tr.kind == "folder" else None
        )

    def __call__(self) -> None:
        marker = self.marker
        if marker is not None and self.marker_newest_ns is not None:
            with contextlib.suppress(OSError):
                if marker.lstat().st_mtime_ns > self.marker_newest_ns:
                    log.info("%s: its manifest %s was written again: left for the next set",
                             self.label, marker.name)  # fmt: skip
                    marker = None
        if marker is not None and marker.is_file() and not marker.is_symlink():
            with contextlib.suppress(OSError):
                marker.unlink()
                log.info("%s: removed its ready marker %s", self.label, marker.name)
        if self.top is not None:
            for current, _dirs, _files in sorted(os.walk(self.top), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(current)


def same_file(path: str, size: int | None, mtime_ns: int | None) -> bool | None:
    """Whether ``path`` is still a regular file of that size and mtime; None when gone."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return regular(st) and (st.st_size, st.st_mtime_ns) == (size, mtime_ns)


def regular(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)
