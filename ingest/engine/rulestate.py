"""The rules in force, told to the ledger: each version loaded, and any edit refused.

The daemon is the only one who knows which rules it runs; ``ingest status``, ``ingest
rules check`` and ``ingest rules history`` read what it publishes here. Each version put
in force (at start, on every accepted reload) is a ``rules_versions`` row, once per
content; the one ``rules_state`` row says which version runs and, while the files on disk
are refused, their problems and since when. While they stay refused, the log says so
again every ``[engine] reload_seconds`` × 60, not only once.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ..ledger import Batch
from ..rulefiles import RuleBook
from ..ruleversions import Refusal, RulesVersion

__all__ = ["RulesRecord"]

log = logging.getLogger("ingest.rules")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


class RulesRecord:
    """Publishes the book's rules version and refusal to the ledger. Engine thread only."""

    def __init__(self, book: RuleBook, remind_seconds: float) -> None:
        self.book = book
        self.remind_seconds = remind_seconds
        self._published: tuple[RulesVersion, Refusal | None] | None = None
        self._next_reminder: float | None = None

    def reset(self) -> None:
        """Publish again on the next turn (the ledger lost the last turn's writes)."""
        self._published = None

    def publish(self, tx: Batch, now: float) -> None:
        """Write what changed since the last turn; remind while an edit stays refused.

        ``now`` is the monotonic clock (for the reminders); rows hold wall-clock times."""
        version, refusal = self.book.version, self.book.refusal
        published = self._published
        if published is None or published[0] is not version:
            new = tx.rules_loaded(
                version.version,
                version.loaded_at,
                len(version.rules),
                _dumps(list(version.files)),
                _dumps(list(version.rules)),
            )
            log.info(
                "rules version %s in force (%s, %d rules)",
                version.short,
                "new" if new else "seen before",
                len(version.rules),
            )
        if published is None or published != (version, refusal):
            problems = None if refusal is None else _dumps(list(refusal.problems))
            since = None if refusal is None else refusal.since
            tx.rules_state(version.version, version.loaded_at, since, problems)
            self._published = (version, refusal)
        self._remind(refusal, now)

    def _remind(self, refusal: Refusal | None, now: float) -> None:
        if refusal is None:
            self._next_reminder = None
            return
        if self._next_reminder is None:
            self._next_reminder = now + self.remind_seconds  # the refusal itself was logged
            return
        if now < self._next_reminder:
            return
        self._next_reminder = now + self.remind_seconds
        minutes = (time.time() - refusal.since) / 60
        log.error(
            "rule files are still invalid (for %.0f min); the daemon keeps rules version %s, "
            "not what is on disk:\n  %s",
            minutes,
            self.book.version.short,
            "\n  ".join(refusal.lines()),
        )
