"""A settled drop's last waits before the Tracker's queue.

::

    settled ─▶ ready marker? ─▶ sidecar? ─▶ archive body ─▶ checksums? ─▶ Tracker
       └─ file set: every listed file there and settled (or FAILED after a while)

:class:`Waits` holds the drops that wait for one of these (for their marker, their
sidecar, a file set's listed files, their hashing), and builds a drop's archive body
once nothing is missing. The settle timers are the :class:`~ingest.engine.intake.Intake`'s:
a drop waiting for a sidecar or for listed files is looked at again through them.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path

from .. import defaults
from ..drop import Drop
from ..ledger import State
from ..rulefiles import RuleBook
from ..rules import Rule, build_archive_body, build_fileset_body
from ..settle import Settler
from ..sidecar import SidecarError
from ..templates import DropRefused
from .checksums import HashDone, Hasher
from .dispatch import Key, Turn
from .drops import Tracked
from .folders import Folders
from .submissions import Tracker

__all__ = ["Waits"]

log = logging.getLogger("ingest.engine")


class Waits:
    """Settled drops on their way to the queue: what each still waits for. Engine thread only."""

    def __init__(
        self,
        book: RuleBook,
        folders: Folders,
        tracker: Tracker,
        settler: Settler,
        hasher: Hasher | None = None,
    ) -> None:
        self.book = book
        self.folders = folders
        self.tracker = tracker
        self.settler = settler
        #: settled drops waiting for their ready marker
        self.marker: set[Key] = set()
        #: settled drops waiting for their sidecar: until when (monotonic seconds)
        self.sidecar: dict[Key, float] = {}
        #: file sets waiting for listed files: what the ledger was last told they lack
        self.listed: dict[Key, str] = {}
        #: the checksums' thread, and the token of the hash each drop awaits
        self.hasher = hasher
        self.hashing: dict[Key, int] = {}
        self._hash_tokens = 0
        self._hash_shown: dict[Key, float] = {}  # when its progress was last written

    def __repr__(self) -> str:
        return (
            f"<Waits marker={len(self.marker)} sidecar={len(self.sidecar)} "
            f"listed={len(self.listed)} hashing={len(self.hashing)}>"
        )

    def reset(self, settler: Settler) -> None:
        """Memory rebuilt from the ledger: nothing waits, and ``settler`` is the new timers."""
        self.settler = settler
        self.marker.clear()
        self.sidecar.clear()
        # (the tokens go on counting: answers to hashes started before are stale now)
        self.hashing.clear()

    def forget(self, key: Key) -> None:
        """A drop reached a final state: it waits for nothing any more."""
        self.marker.discard(key)
        self.sidecar.pop(key, None)
        self.hashing.pop(key, None)
        self.listed.pop(key, None)

    def gone(self, turn: Turn, tr: Tracked, why: str) -> None:
        """A drop's files are gone. If an archive call of its own may have reached DIVA,
        that is what success looks like (DIVA deletes on source): ask DIVA, never SKIP."""
        if tr.uncertain and tr.body is not None and tr.object_name:
            log.info("%s: its files are gone; asking DIVA whether it archived them", tr.label)
            self.settler.forget(tr.key)
            self.tracker.queue(tr)
            return
        self.tracker.move(turn, tr, State.SKIPPED, why)

    # -- completing -------------------------------------------------------------------

    def complete(self, turn: Turn, tr: Tracked) -> None:
        """A settled drop: its marker, then its request (the rules' word), then the queue."""
        key = tr.key
        match = self.book.rules.match(Path(tr.watch, tr.path))
        if match is None or match.drop != tr.path:
            self.marker.discard(key)
            self.tracker.move(turn, tr, State.SKIPPED, "no rule matches it any more")
            return
        rule = match.rule
        if rule.mode == "fileset":
            self._complete_fileset(turn, tr, rule)
            return
        drop = tr.as_drop(rule)
        marker = rule.marker_path(drop)
        if marker is not None and not os.path.lexists(marker):
            if key not in self.marker:
                self.marker.add(key)
                log.info("%s %s: settled, waiting for its ready marker %s", rule.name,
                         tr.path, marker.name)  # fmt: skip
                turn.tx.update(tr.id, error=f"waiting for the ready marker {marker.name}")
            return
        self.marker.discard(key)
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
        self._hash_or_queue(turn, tr, rule)

    def _complete_fileset(self, turn: Turn, tr: Tracked, rule: Rule) -> None:
        """A settled manifest: every file it lists there and settled, or wait for them
        (until ``incomplete_after_seconds``: then FAILED); never submitted partially."""
        fileset = rule.read_fileset(tr.path)
        if fileset is None:
            self.gone(turn, tr, "its manifest vanished before it settled")
            return
        tr.drop = tr.as_drop(rule).signed(fileset.signature, fileset.members.files)
        if fileset.missing and fileset.error is None:
            age = time.time() - fileset.written_ns / 1e9
            missing = "; ".join(fileset.missing[: defaults.MANIFEST_MISSING_SHOWN])
            more = len(fileset.missing) - defaults.MANIFEST_MISSING_SHOWN
            missing += f" (and {more} more)" if more > 0 else ""
            if age < rule.incomplete_after_seconds:
                waiting = f"waiting for {len(fileset.missing)} listed file(s): {missing}"
                if self.listed.get(tr.key) != waiting:
                    self.listed[tr.key] = waiting
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
            self.listed.pop(tr.key, None)
            self.tracker.move(turn, tr, State.FAILED, why, error=why, size=tr.size,
                              mtime_ns=tr.mtime_ns, file_count=tr.file_count)  # fmt: skip
            return
        self.listed.pop(tr.key, None)
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
        self._hash_or_queue(turn, tr, rule)

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
            self.sidecar.pop(key, None)
            try:
                return rule.read_sidecar(drop), rule.sidecar_relpath(drop)
            except SidecarError as exc:
                why = f"sidecar {exc}"
                self.tracker.move(turn, tr, State.REJECTED, why, error=why)
                return None, None
        deadline = self.sidecar.get(key)
        if deadline is None:
            deadline = now + rule.sidecar_wait_seconds
            self.sidecar[key] = deadline
            log.info("%s %s: settled, waiting for its sidecar %s", rule.name, tr.path, path.name)
            turn.tx.update(tr.id, error=f"waiting for its sidecar {path.name}")
        if now < deadline:
            step = min(deadline - now, defaults.SIDECAR_RECHECK_SECONDS)
            if st is not None:
                step = min(step, max(quiet - age, 0.05))
            sig = (tr.size or 0, tr.mtime_ns or 0, tr.file_count or 0)
            self.settler.observe(key, sig, settle=step, now=now)
            return None, None
        self.sidecar.pop(key, None)
        if rule.sidecar_required:
            why = f"its sidecar {path.name} did not come within {rule.sidecar_wait_seconds:g} s"
            self.tracker.move(turn, tr, State.FAILED, why, error=why)
            return None, None
        log.info("%s %s: no sidecar %s after %g s; going ahead without it", rule.name,
                 tr.path, path.name, rule.sidecar_wait_seconds)  # fmt: skip
        return {}, None

    # -- checksums --------------------------------------------------------------------

    def _hash_or_queue(self, turn: Turn, tr: Tracked, rule: Rule) -> None:
        """Hash the settled drop's components on the hashing thread, if its rule asks;
        it is queued for DIVA once :meth:`hashed` has its checksums."""
        if not rule.checksum or self.hasher is None:
            self.tracker.queue(tr)
            return
        assert tr.body is not None
        self._hash_tokens += 1
        self.hashing[tr.key] = self._hash_tokens
        components = list(tr.body["components"])
        turn.tx.update(tr.id, error=f"hashing ({rule.checksum}) {len(components)} file(s)")
        self.hasher.start(
            tr.key, self._hash_tokens, rule.checksum, tr.watch, components, tr.size or 0
        )

    def hash_progress(self, turn: Turn) -> None:
        """How far the hashing of a large drop has come, in its row for ``ingest status``
        (every few seconds: a row write per block would cost more than it tells)."""
        if not self.hashing:
            return
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
