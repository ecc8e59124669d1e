"""Safe rollout: the drops already sitting in the watch folders that a rule edit would
newly archive (a widened glob, a new rule on a full folder), for ``ingest rules check``.

Compares two rule sets over what is on disk now: a drop counts when the new rules take
it and the old ones did not, and the ledger has never recorded it. Reads only.

>>> old = ruleset_from(json.loads(row["rules"]))  # the daemon's version  # doctest: +SKIP
>>> new_matches(old, load_rules(paths, base), known=lambda watch, path: False)  # doctest: +SKIP
[NewMatch(rule='news', watch='/mnt/news', path='old_clip.mxf', kind='file')]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .rules import Rule, RuleSet
from .watch import scan

__all__ = ["NewMatch", "new_matches", "ruleset_from"]

_TUPLES = ("match", "ignore")


def ruleset_from(normalized: Iterable[Mapping[str, Any]]) -> RuleSet:
    """The rule set a recorded rules version describes (see :mod:`ingest.ruleversions`)."""
    rules = []
    for values in normalized:
        given = dict(values)
        given["watch"] = Path(given["watch"])
        for key in _TUPLES:
            given[key] = tuple(given.get(key, ()))
        rules.append(Rule(**given))
    return RuleSet(rules)


@dataclass(frozen=True)
class NewMatch:
    """A drop on disk that the new rules take and the old ones did not."""

    rule: str
    watch: str
    path: str  # relative to ``watch``: the file, or the top-level folder of a folder drop
    kind: str

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "watch": self.watch, "path": self.path, "kind": self.kind}


def new_matches(old: RuleSet, new: RuleSet, known: Callable[[str, str], bool]) -> list[NewMatch]:
    """The drops present now that ``new`` would archive and ``old`` did not, in path order.

    ``known(watch, path)``: whether the ledger already recorded that drop (archived,
    refused, in flight...): those are not new. A watch folder that cannot be read is
    passed over (``rules check`` reports it already).
    """
    found: dict[tuple[str, str], NewMatch] = {}
    for watch in new.watch_folders():
        try:
            files = scan(watch).files
        except OSError:
            continue
        for relpath in sorted(files):
            path = Path(os.path.join(watch, relpath))
            match = new.match(path)
            if match is None or match.marker or old.match(path) is not None:
                continue
            key = (str(match.rule.watch), match.drop)
            if key in found or known(*key):
                continue
            found[key] = NewMatch(match.rule.name, key[0], match.drop, match.kind)
    return sorted(found.values(), key=lambda m: (m.watch, m.path))
