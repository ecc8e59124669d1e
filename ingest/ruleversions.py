"""Rules versions: which rule set is in force, named by a hash of its content.

A rule set's version is the SHA-256 of its normalized form (every rule's values, in
match order, as JSON with sorted keys): the same rules give the same version whatever
file they sit in, whatever their comments or layout, and whenever they were loaded. The
daemon records each version it loads in the ledger, and each drop records the version
that built its archive request, so an audit can say which rules archived which drop.

Stdlib and :mod:`ingest.rules` only: no ledger, no SQLAlchemy.

>>> v = RulesVersion.of(ruleset, loaded_at=time.time())  # doctest: +SKIP
>>> v.short  # doctest: +SKIP
'3f9a0c1b2d4e'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .rules import Rule, RuleSet

__all__ = [
    "SHORT",
    "RulesDiff",
    "RulesVersion",
    "diff_rules",
    "file_stamps",
    "normalize",
    "version_of",
]

#: hex digits of a version shown to people (like a short git hash)
SHORT = 12

#: the Rule fields that say what a rule does: those it is built from and compared by
#: (where it was written, ``source`` and ``line``, is not part of what it does)
_FIELDS = tuple(f.name for f in dataclasses.fields(Rule) if f.init and f.compare)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def normalize_rule(rule: Rule) -> dict[str, Any]:
    """One rule's values as plain JSON types (defaults filled in, ``watch`` absolute)."""
    values = {name: _plain(getattr(rule, name)) for name in _FIELDS}
    values["fields"] = dict(rule.fields)  # a TOML table, as written
    return values


def normalize(rules: RuleSet | Iterable[Rule]) -> list[dict[str, Any]]:
    """A rule set as JSON: its rules in match order, each with every value."""
    return [normalize_rule(rule) for rule in rules]


def version_of(normalized: Sequence[Mapping[str, Any]]) -> str:
    """The version (SHA-256, hex) of a normalized rule set."""
    text = json.dumps(normalized, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_stamps(files: Iterable[Path]) -> list[dict[str, Any]]:
    """The rule files with their mtimes (epoch seconds; None when it cannot be read)."""
    stamps: list[dict[str, Any]] = []
    for file in files:
        try:
            mtime: float | None = os.stat(file).st_mtime
        except OSError:
            mtime = None
        stamps.append({"path": os.path.abspath(file), "mtime": mtime})
    return stamps


@dataclass(frozen=True)
class RulesVersion:
    """A loaded rule set as the ledger records it."""

    version: str
    loaded_at: float
    files: tuple[dict[str, Any], ...]
    rules: tuple[dict[str, Any], ...]

    @classmethod
    def of(cls, ruleset: RuleSet, loaded_at: float) -> RulesVersion:
        rules = normalize(ruleset)
        return cls(version_of(rules), loaded_at, tuple(file_stamps(ruleset.files)), tuple(rules))

    @property
    def short(self) -> str:
        return self.version[:SHORT]


@dataclass(frozen=True)
class RulesDiff:
    """What changed between two rule sets, by rule name."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    #: rule name -> the keys whose values changed (``order`` when only its place moved)
    changed: dict[str, tuple[str, ...]]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def __str__(self) -> str:
        """One line for the log.

        >>> str(RulesDiff(("b",), (), {"a": ("media", "qos")}))
        'added b; removed none; changed a (media, qos)'
        """
        changed = ", ".join(f"{n} ({', '.join(keys)})" for n, keys in self.changed.items())
        return (
            f"added {', '.join(self.added) or 'none'}; removed {', '.join(self.removed) or 'none'}"
            f"; changed {changed or 'none'}"
        )


def diff_rules(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> RulesDiff:
    """The rules added, removed and changed (with the keys that changed) from ``old`` to
    ``new``, both normalized; a rule that moved in the match order changed its ``order``.

    >>> a = {"name": "a", "media": "T1"}
    >>> diff_rules([a], [{"name": "a", "media": "T2"}, {"name": "b"}])
    RulesDiff(added=('b',), removed=(), changed={'a': ('media',)})
    """
    before = {str(r["name"]): (i, r) for i, r in enumerate(old)}
    after = {str(r["name"]): (i, r) for i, r in enumerate(new)}
    added = tuple(n for n in after if n not in before)
    removed = tuple(n for n in before if n not in after)
    common_before = [n for n in before if n in after]
    common_after = [n for n in after if n in before]
    changed: dict[str, tuple[str, ...]] = {}
    for name in common_after:
        a, b = before[name][1], after[name][1]
        keys = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
        if common_before.index(name) != common_after.index(name):
            keys.append("order")
        if keys:
            changed[name] = tuple(keys)
    return RulesDiff(added, removed, changed)


@dataclass(frozen=True)
class Refusal:
    """Rule files on disk that the daemon refused: the problems, and since when the files
    have differed from the rules in force (epoch seconds; the first refused edit's time)."""

    problems: tuple[dict[str, Any], ...]
    since: float

    def lines(self) -> list[str]:
        """Each problem as ``file:line: rule: key: message``."""
        return [str(p.get("text") or p.get("message")) for p in self.problems]
