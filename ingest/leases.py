"""Several nodes on one PostgreSQL ledger: each watch folder leased by one node at a time.

The coordination is the ledger's own database, as Apache Airflow's HA scheduler does it:
rows and row locks, no consensus service of our own.

- ``nodes``: one row per node name, beaten every third of a lease. A second node with a
  live node's name is refused (:class:`NodeNameTaken`); a node restarted on the same host
  after its process died takes its row back at once.
- ``leases``: one row per watch folder: holder, epoch, expiry. A node renews its leases
  each tick; one that stops (dead, frozen, cut off) lets them expire, and a live node
  takes them with ``SELECT ... FOR UPDATE SKIP LOCKED``, the epoch one higher.
- Every time is the database server's clock (``now()``), never a node's: two hosts'
  clocks may disagree by more than a lease.
- Fair share: a node takes at most ``ceil(folders / live nodes)``; one that holds more
  gives the excess back while another live node holds less.

Fencing (:func:`fence`): every ledger transaction that writes for a folder first checks,
in that same transaction, that this node still holds the folder at the epoch it took it
at, and holds the lease row ``FOR SHARE`` until it commits. A taker's ``FOR UPDATE SKIP
LOCKED`` passes over that row meanwhile, so the lease cannot move under a write in hand;
and a node that lost a folder (even one that took it back since: the epoch moved) can
never commit an intent for it, so never calls DIVA for it.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import LedgerError
from .ledger import Batch, Ledger

__all__ = ["LeaseLost", "Leases", "NodeNameTaken", "Tick", "fence"]

#: the database's clock, epoch seconds (the transaction's start: one instant per tick)
NOW = "CAST(EXTRACT(EPOCH FROM now()) AS DOUBLE PRECISION)"


class LeaseLost(LedgerError):
    """This node no longer holds a folder at the epoch it took it at."""

    def __init__(self, watches: Iterable[str]) -> None:
        self.watches = frozenset(watches)
        super().__init__(
            "lease lost on " + ", ".join(sorted(self.watches)) + ": another node holds it now"
        )


class NodeNameTaken(LedgerError):
    """A live node already runs under this node's name."""


@dataclass(frozen=True)
class Tick:
    """What one :meth:`Leases.tick` changed: folders taken (watch -> epoch) and lost."""

    gained: Mapping[str, int] = field(default_factory=dict)
    lost: frozenset[str] = frozenset()


def _read(tx: Batch, sql: str, params: Sequence[Any] = ()) -> Any:
    """``sql`` in ``tx``, ``@now`` standing for the database's clock."""
    return tx._execute(sql.replace("@now", NOW), params)


def _write(tx: Batch, sql: str, params: Sequence[Any] = ()) -> Any:
    return tx._write(sql.replace("@now", NOW), params)


def fence(tx: Batch, node: str, held: Mapping[str, int], watches: Iterable[str]) -> None:
    """Check, inside the transaction ``tx``, that ``node`` holds each of ``watches`` at
    its epoch in ``held``, and keep those lease rows from moving until ``tx`` ends.

    Raises :class:`LeaseLost` naming the folders lost: nothing of the transaction commits.
    """
    wanted = sorted(set(watches))
    if not wanted:
        return
    rows = _read(
        tx,
        "SELECT watch, epoch FROM leases WHERE holder = ? AND watch = ANY(?) "
        "AND expires_at > @now ORDER BY watch FOR SHARE",
        (node, wanted),
    ).fetchall()
    mine = {watch: epoch for watch, epoch in rows}
    lost = [w for w in wanted if w not in held or mine.get(w) != held[w]]
    if lost:
        raise LeaseLost(lost)
    # Each step the transaction writes names this node and the epoch just checked.
    tx.stamp(node, {w: held[w] for w in wanted})


class Leases:
    """This node's membership and folder leases on a PostgreSQL ledger."""

    def __init__(self, ledger: Ledger, node: str, lease_seconds: float) -> None:
        if not ledger.postgresql:
            raise LedgerError("folder leases need a PostgreSQL ledger")
        self.ledger = ledger
        self.node = node
        self.lease_seconds = lease_seconds
        self.host = socket.gethostname()
        self.pid = os.getpid()
        #: watch folder -> the epoch this node took it at
        self.held: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<Leases {self.node} holds {sorted(self.held)}>"

    @property
    def renew_seconds(self) -> float:
        """How often :meth:`tick` runs: a third of the lease."""
        return self.lease_seconds / 3

    def join(self) -> None:
        """Register this node, or raise :class:`NodeNameTaken` naming the live one."""
        with self.ledger.batch() as tx:
            row = _read(
                tx,
                "SELECT host, pid, expires_at > @now FROM nodes WHERE name = ? FOR UPDATE",
                (self.node,),
            ).fetchone()
            if row is not None:
                host, pid, alive = row
                if alive and not (host == self.host and not _process_alive(pid)):
                    raise NodeNameTaken(
                        f'node name "{self.node}" is taken by a live node (pid {pid} on '
                        f"host {host}): give this one another [cluster] node or "
                        "INGEST_NODE"
                    )
            _write(
                tx,
                "INSERT INTO nodes (name, host, pid, started_at, heartbeat_at, expires_at) "
                "VALUES (?, ?, ?, @now, @now, @now + ?) ON CONFLICT (name) DO UPDATE "
                "SET host = excluded.host, pid = excluded.pid, started_at = excluded.started_at, "
                "heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at",
                (self.node, self.host, self.pid, self.lease_seconds),
            )

    def tick(self, watches: Sequence[str]) -> Tick:
        """Beat, renew this node's leases, give back an excess, take free folders among
        ``watches`` up to the fair share; one transaction. Run every :attr:`renew_seconds`."""
        lease = self.lease_seconds
        with self.ledger.batch() as tx:
            beat = _write(
                tx,
                "UPDATE nodes SET heartbeat_at = @now, expires_at = @now + ? "
                "WHERE name = ? AND host = ? AND pid = ?",
                (lease, self.node, self.host, self.pid),
            ).rowcount
            if not beat:
                raise NodeNameTaken(f'node "{self.node}" was taken over by another process')
            renewed = dict(
                _write(
                    tx,
                    "UPDATE leases SET expires_at = @now + ? WHERE holder = ? "
                    "AND watch = ANY(?) AND expires_at > @now RETURNING watch, epoch",
                    (lease, self.node, sorted(self.held)),
                ).fetchall()
            )
            lost = {w for w, epoch in self.held.items() if renewed.get(w) != epoch}
            lost |= set(self.held) - set(watches)  # no rule names them any more
            for watch in lost:
                del self.held[watch]
            self._retire(tx, watches)
            for watch in sorted(watches):
                # A folder named again goes on from its last epoch (lease_takes): an epoch
                # is never given twice, even across its row's removal.
                _write(
                    tx,
                    "INSERT INTO leases (watch, epoch) VALUES (?, (SELECT coalesce(max(epoch), "
                    "0) FROM lease_takes WHERE watch = ?)) ON CONFLICT (watch) DO NOTHING",
                    (watch, watch),
                )
            live = _read(tx, "SELECT count(*) FROM nodes WHERE expires_at > @now").fetchone()[0]
            share = math.ceil(len(watches) / max(1, live))
            self._give_back(tx, watches, share, lost)
            gained = self._take(tx, watches, share - len(self.held))
        return Tick(gained, frozenset(lost))

    def _retire(self, tx: Batch, watches: Sequence[str]) -> None:
        """Remove the lease rows of folders no rule of this node names, unless another
        node holds one live (its rules may name it still: a reload not yet everywhere);
        else ``ingest status`` would show them as folders nobody holds."""
        _write(
            tx,
            "DELETE FROM leases WHERE NOT watch = ANY(?) "
            "AND (expires_at <= @now OR holder IS NULL OR holder = ?)",
            (sorted(watches), self.node),
        )

    def _give_back(self, tx: Batch, watches: Sequence[str], share: int, lost: set[str]) -> None:
        excess = len(self.held) - share
        if excess <= 0:
            return
        counts = dict(
            _read(
                tx,
                "SELECT holder, count(*) FROM leases WHERE expires_at > @now "
                "AND holder IS NOT NULL AND watch = ANY(?) GROUP BY holder",
                (list(watches),),
            ).fetchall()
        )
        nodes = [
            name
            for (name,) in _read(
                tx,
                "SELECT name FROM nodes WHERE expires_at > @now AND name <> ?",
                (self.node,),
            ).fetchall()
        ]
        wanting = sum(max(0, share - counts.get(name, 0)) for name in nodes)
        for watch in sorted(self.held, reverse=True)[: min(excess, wanting)]:
            # Expired now, holder and epoch kept: a taker's epoch is one higher.
            _write(
                tx,
                "UPDATE leases SET expires_at = @now WHERE watch = ? AND holder = ? AND epoch = ?",
                (watch, self.node, self.held.pop(watch)),
            )
            lost.add(watch)

    def _take(self, tx: Batch, watches: Sequence[str], want: int) -> dict[str, int]:
        if want <= 0:
            return {}
        # A lease of this node's name that this process does not know of is a previous
        # life's (a restart before it expired): taken again, at a new epoch.
        free = _read(
            tx,
            "SELECT watch FROM leases WHERE watch = ANY(?) AND (expires_at <= @now "
            "OR holder IS NULL OR (holder = ? AND NOT watch = ANY(?))) "
            "ORDER BY watch LIMIT ? FOR UPDATE SKIP LOCKED",
            (list(watches), self.node, sorted(self.held), want),
        ).fetchall()
        gained: dict[str, int] = {}
        for (watch,) in free:
            epoch = _write(
                tx,
                "UPDATE leases SET holder = ?, epoch = epoch + 1, expires_at = @now + ?, "
                "taken_at = @now WHERE watch = ? RETURNING epoch",
                (self.node, self.lease_seconds, watch),
            ).fetchone()[0]
            gained[watch] = self.held[watch] = int(epoch)
            # The lease row keeps only the latest holder: the history is kept beside it.
            _write(
                tx,
                "INSERT INTO lease_takes (watch, epoch, holder, taken_at) VALUES (?, ?, ?, @now)",
                (watch, int(epoch), self.node),
            )
        return gained

    def leave(self) -> None:
        """Give every folder back and mark this node gone (a clean stop): the others take
        over at once instead of after a lease."""
        with self.ledger.batch() as tx:
            _write(
                tx,
                "UPDATE leases SET expires_at = @now WHERE holder = ? AND watch = ANY(?)",
                (self.node, sorted(self.held)),
            )
            _write(
                tx,
                "UPDATE nodes SET expires_at = @now WHERE name = ? AND pid = ?",
                (self.node, self.pid),
            )
        self.held.clear()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
