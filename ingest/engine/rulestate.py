"""The rules in force, told to the ledger: each version loaded, and any edit refused.

The daemon is the only one who knows which rules it runs; ``ingest status``, ``ingest
rules check`` and ``ingest rules history`` read what it publishes here. Each version put
in force (at start, on every accepted reload) is a ``rules_versions`` row, once per
content; the one ``rules_state`` row says which version runs and, while the files on disk
are refused, their problems and since when. While they stay refused, the log says so
again every ``[engine] reload_seconds`` × 60, not only once.

With ``[rules] confirm_new_matches``, the drops already sitting in the watch folders that a
new version takes and the one before did not (a widened glob) are held: not detected, not
archived, listed in ``rules_state`` for ``ingest status``, until ``ingest rules accept``.
Drops arriving after the reload are not held. A restart keeps them held, and an edit made
while the daemon was stopped is judged against the version it last ran.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..ledger import Batch
from ..rollout import NewMatch, new_matches, ruleset_from
from ..rulefiles import RuleBook
from ..rules import RuleSet
from ..ruleversions import Refusal, RulesVersion
from .dispatch import Key

__all__ = ["RulesRecord"]

log = logging.getLogger("ingest.rules")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


class RulesRecord:
    """Publishes the book's rules version and refusal to the ledger. Engine thread only."""

    def __init__(
        self,
        book: RuleBook,
        remind_seconds: float,
        *,
        confirm: bool = False,
        held: set[Key] | None = None,
        known: Callable[[str, str], bool] = lambda watch, path: False,
        release: Callable[[set[Key]], None] = lambda keys: None,
    ) -> None:
        self.book = book
        self.remind_seconds = remind_seconds
        self._published: tuple[RulesVersion, Refusal | None] | None = None
        self._next_reminder: float | None = None
        #: ``[rules] confirm_new_matches``: hold what an edit newly matches
        self.confirm = confirm
        #: the held drops (shared with the Intake, which passes them over), and what
        #: ``ingest status`` shows of each
        self.held: set[Key] = held if held is not None else set()
        self._held_info: dict[Key, NewMatch] = {}
        self._held_since: float | None = None
        self._known = known  # whether the engine or the ledger already has a drop
        self._release = release
        self._rules: RuleSet | None = None  # the rule set last published

    def reset(self) -> None:
        """Publish again on the next turn (the ledger lost the last turn's writes)."""
        self._published = None

    def publish(self, tx: Batch, now: float) -> None:
        """Write what changed since the last turn; remind while an edit stays refused.

        ``now`` is the monotonic clock (for the reminders); rows hold wall-clock times."""
        version, refusal = self.book.version, self.book.refusal
        published = self._published
        if self.confirm:
            self._confirm(tx, version)
        self._rules = self.book.rules
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

    # -- [rules] confirm_new_matches ---------------------------------------------------

    def _confirm(self, tx: Batch, version: RulesVersion) -> None:
        """Hold what a new version newly matches; release all on ``ingest rules accept``."""
        if self._published is None:
            self._restore(tx, version)
        elif self._published[0] is not version and self._rules is not None:
            self._hold(tx, self._rules)
        if self.held:
            row = tx.rules_state_row()
            accepted = row["accepted_at"] if row is not None else None
            if accepted is not None and accepted >= (self._held_since or 0.0):
                keys = set(self.held)
                log.info("rules accepted: %d held file(s) released for archiving", len(keys))
                self.held.clear()
                self._held_info.clear()
                self._held_since = None
                tx.rules_held(None, None)
                self._release(keys)

    def _restore(self, tx: Batch, version: RulesVersion) -> None:
        """At start (and after a failed commit): what the ledger says is held, and what an
        edit made while the daemon was stopped newly matches."""
        row = tx.rules_state_row()
        if row is None:
            return  # a first start: nothing was archived under other rules
        if row["held"]:
            for item in json.loads(row["held"]):
                match = NewMatch(item["rule"], item["watch"], item["path"], item["kind"])
                key = (match.watch, match.path)
                self.held.add(key)
                self._held_info[key] = match
            self._held_since = row["held_since"]
        if row["version"] != version.version:
            before = tx.rules_of(row["version"])
            if before is not None:
                self._hold(tx, ruleset_from(json.loads(before)))

    def _hold(self, tx: Batch, before: RuleSet) -> None:
        rules = self.book.rules
        # What the new rules no longer take is not held any more (nothing to accept).
        for key in [k for k in self.held if rules.match(Path(*k)) is None]:
            self.held.discard(key)
            self._held_info.pop(key, None)
        fresh = [
            m for m in new_matches(before, rules, self._known) if (m.watch, m.path) not in self.held
        ]
        for match in fresh:
            key = (match.watch, match.path)
            self.held.add(key)
            self._held_info[key] = match
        if fresh:
            # An accept given before these were held must not release them unseen.
            self._held_since = time.time()
            log.warning(
                "rules version %s newly matches %d file(s) already present; held until "
                "`ingest rules accept` ([rules] confirm_new_matches): %s",
                self.book.version.short,
                len(fresh),
                ", ".join(f"{m.watch}/{m.path}" for m in fresh[:10])
                + (f" and {len(fresh) - 10} more" if len(fresh) > 10 else ""),
            )
        held = [self._held_info[k].as_dict() for k in sorted(self.held)]
        tx.rules_held(_dumps(held) if held else None, self._held_since if held else None)
        if not held:
            self._held_since = None

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
