"""What is worth a notification, found by looking, and a digest of it as one message.

:class:`Lookout` looks, on the notifier's thread, at what the engine already publishes:
the ledger's new transitions (:class:`~ingest.follow.Follower`: drops FAILED or
REJECTED), the engine's snapshot (:attr:`Monitor.snapshot <ingest.engine.monitor.Monitor>`:
folders paused or down, DIVA unreachable), the requests DIVA keeps waiting
(:func:`ingest.overview.stuck`) and the ``rules_state`` row (a refused rule edit). Each
thing is told once: a folder when it goes down, a request when it first counts as
stuck, an outage once it has lasted ``outage_after_seconds``, a refused edit once per
refusal. :func:`digest` turns what a window gathered into one message, however many.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import defaults, overview, queries
from ..follow import Follower
from ..report import ago_span, iso_utc

if TYPE_CHECKING:
    from ..engine.monitor import Monitor

__all__ = ["Event", "Lookout", "digest"]

#: kind -> heading of its part of a message, and the title's word for a count of them
_KINDS = {
    "failed": ("FAILED (DIVA could not archive them; retries are over)", "FAILED"),
    "rejected": ("REJECTED (refused by DIVA or by the rules; not retried)", "REJECTED"),
    "stuck": ("kept waiting by DIVA (stuck; ingest does not resubmit them)", "stuck"),
    "folder": ("watch folders paused or down", "folder(s) down"),
    "outage": ("DIVA", "DIVA unreachable"),
    "rules": ("rule files", "rule edit refused"),
    "checksum": ("checksums DIVA reports differently (ingest ledger ack ID)", "checksum mismatch"),
}


@dataclass(frozen=True)
class Event:
    """One thing to tell: its kind (a ``[notify] events`` name) and its line."""

    kind: str
    line: str
    #: whether this counts in the title (a recovery is told, but is no alarm)
    alarm: bool = True


def _drop_line(rule: str, watch: str, path: str, code: int | None, reason: str, id: int) -> str:
    said = f"DIVA {code}: {reason}" if code is not None else reason
    return f"{watch}/{path} (rule {rule}): {said or 'no reason given'} — ingest ledger show {id}"


class Lookout:
    """Finds what is new since the last look. Not thread-safe: the notifier's thread only."""

    def __init__(
        self,
        monitor: Monitor,
        ledger: queries.LedgerAt,
        *,
        events: frozenset[str],
        outage_after: float,
        stuck_after: float,
    ) -> None:
        self.monitor = monitor
        self.ledger = ledger
        self.events = events
        self.outage_after = outage_after
        self.stuck_after = stuck_after
        # From now on: what earlier runs recorded was told (or not) by them.
        self._follower = Follower(ledger)
        self._down: dict[str, str] = {}  # watch -> health told
        self._outage_since: float | None = None  # wall clock, as DIVA calls are stamped
        self._outage_told = False
        self._stuck_told: set[int] = set()
        self._refusal_told: float | None = None  # refused_since of the refusal told
        self._mismatch_told: set[int] = set()

    def __repr__(self) -> str:
        return f"<Lookout {self.ledger}>"

    def look(self, now: float) -> list[Event]:
        """What happened since the last look (``now``: wall clock, epoch seconds)."""
        found: list[Event] = []
        found += self._transitions()
        found += self._folders()
        found += self._outage(now)
        if self.events & {"stuck", "rules", "checksum"}:
            with queries.open_ledger(self.ledger) as conn, queries.errors(self.ledger):
                with queries.snapshot(conn):
                    _, stuck = overview.stuck(conn, now - self.stuck_after, 1000)
                    rules = queries.rules_state(conn)
                    _, mismatched = overview.checksum_mismatches(conn, 1000)
            found += self._stuck(stuck)
            found += self._rules(rules)
            found += self._mismatches(mismatched)
        return [e for e in found if e.kind in self.events]

    def _transitions(self) -> list[Event]:
        found: list[Event] = []
        for step in self._follower.new():
            kind = step.to_state.lower()
            if kind in ("failed", "rejected"):
                line = _drop_line(
                    step.rule, step.watch, step.path, step.status_code, step.detail, step.drop_id
                )
                found.append(Event(kind, line))
        return found

    def _folders(self) -> list[Event]:
        found: list[Event] = []
        now_down = {f.watch: f for f in self.monitor.snapshot.folders if not f.up}
        for watch, folder in now_down.items():
            if self._down.get(watch) != folder.health:
                found.append(Event("folder", f"{watch}: {folder.health}: {folder.detail}"))
        for watch in set(self._down) - set(now_down):
            found.append(Event("folder", f"{watch}: watched again", alarm=False))
        self._down = {w: f.health for w, f in now_down.items()}
        return found

    def _outage(self, now: float) -> list[Event]:
        diva = self.monitor.snapshot.diva
        if diva.reachable is False:
            if self._outage_since is None:
                self._outage_since = diva.at if diva.at is not None else now
            lasted = now - self._outage_since
            if not self._outage_told and lasted >= self.outage_after:
                self._outage_told = True
                line = f"unreachable for {ago_span(lasted)}: {diva.detail}; submissions wait"
                return [Event("outage", line)]
            return []
        if self._outage_since is None:
            return []
        lasted, told = now - self._outage_since, self._outage_told
        self._outage_since, self._outage_told = None, False
        if told:
            return [Event("outage", f"answering again, after {ago_span(lasted)}", alarm=False)]
        return []

    def _stuck(self, rows: Iterable[Any]) -> list[Event]:
        found: list[Event] = []
        ids: set[int] = set()
        for row in rows:
            ids.add(row["id"])
            if row["id"] in self._stuck_told:
                continue
            waited = ago_span(time.time() - row["waiting_since"])
            reason = f"request {row['request_id']} waiting in DIVA for {waited}"
            line = _drop_line(row["rule"], row["watch"], row["path"], None, reason, row["id"])
            found.append(Event("stuck", line))
        self._stuck_told = ids
        return found

    def _mismatches(self, rows: Iterable[Any]) -> list[Event]:
        """Each drop whose checksums DIVA reports differently, once (until acknowledged)."""
        found: list[Event] = []
        ids: set[int] = set()
        for row in rows:
            ids.add(row["id"])
            if row["id"] not in self._mismatch_told:
                files = ", ".join(sorted(json.loads(row["checksum_mismatch"])))
                reason = f"archived, but DIVA's {row['checksum_algo']} of {files} differs from ours"
                line = _drop_line(row["rule"], row["watch"], row["path"], None, reason, row["id"])
                found.append(Event("checksum", line))
        self._mismatch_told = ids
        return found

    def _rules(self, row: Any) -> list[Event]:
        since = None if row is None else row["refused_since"]
        if since is None or since == self._refusal_told:
            self._refusal_told = since
            return []
        self._refusal_told = since
        problems = json.loads(row["problems"]) if row is not None and row["problems"] else []
        said = "; ".join(str(p.get("text") or p.get("message")) for p in problems)
        version = str(row["version"] if row is not None else "")[:12]
        line = (
            f"the rule files on disk are refused since {iso_utc(since)}, the daemon keeps "
            f"version {version}: {said or 'see ingest rules check'}"
        )
        return [Event("rules", line)]


def digest(events: list[Event], *, host: str | None = None) -> tuple[str, str]:
    """One message (title, body) for everything a window gathered.

    >>> title, body = digest([Event("rejected", "/w/a.mxf (rule r): DIVA 1017: x")], host="h")
    >>> title
    'ingest on h: 1 REJECTED'
    """
    host = host or socket.gethostname()
    counts = Counter(e.kind for e in events if e.alarm)
    title_parts = [f"{counts[k]} {_KINDS[k][1]}" for k in _KINDS if counts[k]]
    title = f"ingest on {host}: " + (", ".join(title_parts) or "back to normal")
    lines: list[str] = []
    for kind, (heading, _) in _KINDS.items():
        mine = [e.line for e in events if e.kind == kind]
        if not mine:
            continue
        shown = mine[: defaults.NOTIFY_DROPS_SHOWN]
        lines.append(f"{len(mine)} {heading}:" if kind in ("failed", "rejected", "stuck") else
                     f"{heading}:")  # fmt: skip
        lines += [f"  {line}" for line in shown]
        if len(mine) > len(shown):
            more = f"  ... and {len(mine) - len(shown)} more"
            if kind in ("failed", "rejected"):
                more += f": ingest ledger list --state {kind.upper()}"
            lines.append(more)
        lines.append("")
    lines.append("More: ingest status (the status page, when [http] is on)")
    return title, "\n".join(lines)
