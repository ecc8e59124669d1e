"""Globs: the ``match`` and ``ignore`` patterns of a rule, compiled once.

``**`` spans folders, ``*`` and ``?`` do not (:func:`glob_regex`); :class:`Ignores` says why a
path is hidden (the built-in ignores first, then a rule's own). Used by :mod:`ingest.rules`
to match and by :mod:`ingest.rulefiles` to check patterns and find overlapping rules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from . import defaults

__all__ = ["Glob", "Ignores", "glob_regex", "pattern_problem"]


def glob_regex(pattern: str) -> str:
    """The regex (for ``fullmatch``) of a glob: ``**`` spans folders, ``*`` and ``?`` do not.

    ``**/`` also matches no folder at all, so ``**/*.mov`` matches ``a.mov`` and ``x/y/a.mov``.

    >>> bool(re.fullmatch(glob_regex("**/*.mov"), "a/b/c.mov")), bool(re.fullmatch(glob_regex("*.mov"), "a/c.mov"))
    (True, False)
    """  # noqa: E501
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            else:
                out.append(".*")
                i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : j]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            body = body.replace("\\", "\\\\").replace("^", "\\^")
            out.append(f"[^/{body}]" if negate else f"(?!/)[{body}]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be a rule's glob, or None when it can."""
    if not pattern.strip():
        return "an empty pattern matches nothing"
    if "\\" in pattern:
        return f"{pattern!r}: use '/' to separate folders (backslash is not allowed)"
    if ".." in pattern.split("/"):
        return f"{pattern!r}: '..' would reach outside the watch folder"
    if pattern.startswith("/"):
        return f"{pattern!r}: patterns are relative to the watch folder; drop the leading '/'"
    return None


@dataclass(frozen=True)
class Glob:
    """A glob compiled once, and whether a path (relative, ``/``-separated) fits it."""

    pattern: str
    regex: re.Pattern[str]

    @classmethod
    def compile(cls, pattern: str, ignore_case: bool) -> Glob:
        flags = re.IGNORECASE if ignore_case else 0
        return cls(pattern, re.compile(glob_regex(pattern), flags | re.DOTALL))

    def hit(self, text: str) -> bool:
        return self.regex.fullmatch(text) is not None


class Ignores:
    """Built-in ignores and a rule's own, and why a path is hidden.

    Built-ins and slash-free user globs match any single path component's name (so
    ``.DS_Store`` or ``proxy`` hide themselves and all below them at any depth, like
    ``.gitignore``); user globs with a ``/`` match the path from the watch folder, or one
    of its parent folders' paths.
    """

    def __init__(self, user: Sequence[str], ignore_case: bool) -> None:
        self.builtin = [Glob.compile(p, False) for p in defaults.BUILTIN_IGNORES]
        self.names = [Glob.compile(p, ignore_case) for p in user if "/" not in p]
        self.paths = [Glob.compile(p.rstrip("/"), ignore_case) for p in user if "/" in p]

    def hit(self, relpath: str) -> str | None:
        parts = relpath.split("/")
        for index, part in enumerate(parts):
            for glob in self.builtin:
                if glob.hit(part):
                    return f"built-in ignore {glob.pattern!r} (matches {part!r})"
            for glob in self.names:
                if glob.hit(part):
                    return f"ignore {glob.pattern!r} (matches {part!r})"
            if self.paths:
                prefix = "/".join(parts[: index + 1])
                for glob in self.paths:
                    if glob.hit(prefix):
                        return f"ignore {glob.pattern!r} (matches {prefix!r})"
        return None
