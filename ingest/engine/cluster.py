"""The engine's side of several nodes on one PostgreSQL ledger: which folders it holds.

A heartbeat thread renews this node's folder leases (:mod:`ingest.leases`) every third of
a lease, takes free ones up to its fair share, and wakes the engine whenever the set it
holds changed. The engine then watches and tracks only those folders:

- every turn's transaction is fenced (:func:`ingest.leases.fence`) on the folders the
  engine works on, so it commits nothing for a folder it lost;
- an archive call leaves only while this node's lease on its folder, counted on this
  host's monotonic clock from before the renewal that granted it, still has a third of a
  lease to run: a process frozen (SIGSTOP, a VM paused) between a commit and its call
  wakes up past that point and sends nothing;
- a folder taken from another node is recovered from the ledger as after a crash, its
  in-flight rows reconciled with DIVA before anything is submitted again.

A ledger outage stops the renewals: the leases run out, and other nodes take over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from ..config import ClusterConfig
from ..errors import LedgerError
from ..leases import Leases, Tick
from ..leases import fence as fence_in
from ..ledger import Batch, Ledger

__all__ = ["Membership"]

log = logging.getLogger("ingest.engine")


class Membership:
    """This node's folders on a shared ledger, kept by a heartbeat thread."""

    def __init__(self, ledger: Ledger, config: ClusterConfig, wake: Callable[[], None]) -> None:
        self.leases = Leases(ledger, config.node_name(), config.lease_seconds)
        self._wake = wake
        self._lock = threading.Lock()
        self._watches: tuple[str, ...] = ()
        #: folder -> (epoch, monotonic time until which the lease is surely ours)
        self._held: dict[str, tuple[int, float]] = {}
        self._changed = False
        #: the folders the engine works on (and fences): what it last adopted
        self.working: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def node(self) -> str:
        return self.leases.node

    def start(self, watches: Sequence[str]) -> None:
        """Join (a live node of the same name refuses: :class:`~ingest.leases.NodeNameTaken`),
        take a first share of ``watches``, and start renewing."""
        self.leases.join()
        self._watches = tuple(sorted(watches))
        self.tick()
        self._thread = threading.Thread(target=self._beat, name="ingest-leases", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and give the folders back (the others take them at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.leases.lease_seconds)
        try:
            self.leases.leave()
        except LedgerError as exc:
            log.warning("could not give the folder leases back (they will expire): %s", exc)

    def watch(self, watches: Sequence[str]) -> None:
        """The folders the rules name (the ones to share out)."""
        with self._lock:
            self._watches = tuple(sorted(watches))

    def held(self) -> dict[str, int]:
        """The folders held now, with their epochs."""
        with self._lock:
            return {w: epoch for w, (epoch, _) in self._held.items()}

    def changed(self) -> bool:
        """Whether the folders held changed since the engine last adopted them."""
        with self._lock:
            return self._changed

    def adopt(self) -> dict[str, int]:
        """Make the folders held now the ones the engine works on (and fences)."""
        with self._lock:
            self._changed = False
            self.working = {w: epoch for w, (epoch, _) in self._held.items()}
            return self.working

    def fence(self, tx: Batch) -> None:
        """Check in ``tx`` that every folder the engine works on is still this node's, at
        the epoch it adopted it at: else :class:`~ingest.leases.LeaseLost`."""
        fence_in(tx, self.node, self.working, self.working)

    def sendable(self, watch: str) -> bool:
        """Whether a DIVA call for ``watch`` may leave now (see the module's docstring)."""
        with self._lock:
            entry = self._held.get(watch)
        margin = self.leases.lease_seconds / 3
        return entry is not None and time.monotonic() < entry[1] - margin

    def lost(self, watches: Sequence[str]) -> None:
        """Forget folders a fenced transaction found lost (before the heartbeat did)."""
        with self._lock:
            for watch in watches:
                self._held.pop(watch, None)
            self._changed = True
        self._wake()

    def tick(self) -> Tick:
        """Renew and rebalance once (the heartbeat thread does it every third of a lease)."""
        began = time.monotonic()
        with self._lock:
            watches = self._watches
        try:
            tick = self.leases.tick(watches)
        except LedgerError:
            # Not renewed: the leases are only as good as before (they run out).
            raise
        until = began + self.leases.lease_seconds
        with self._lock:
            held = dict(self.leases.held)
            changed = set(held) != set(self._held) or any(
                self._held[w][0] != e for w, e in held.items() if w in self._held
            )
            self._held = {w: (e, until) for w, e in held.items()}
            self._changed = self._changed or changed
        if tick.gained or tick.lost:
            log.info(
                "node %s: folder leases taken %s, lost %s; holds %d of %d",
                self.node, sorted(tick.gained) or "none", sorted(tick.lost) or "none",
                len(held), len(watches),
            )  # fmt: skip
        if changed:
            self._wake()
        return tick

    def _beat(self) -> None:
        while not self._stop.wait(self.leases.renew_seconds):
            try:
                self.tick()
            except LedgerError as exc:
                log.error("node %s: could not renew the folder leases: %s", self.node, exc)
            except Exception:
                log.exception("node %s: lease renewal crashed", self.node)
