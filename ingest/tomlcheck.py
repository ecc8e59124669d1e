"""Checking admin-edited TOML tables against a declared set of keys, collecting every problem.

Shared by the rule files (``ingest.rules``) and the service config (``ingest.config``) so
both speak the same way: each :class:`Problem` names the file, the line when it can be
found, the rule or section, the key, and what is wrong; unknown keys get a "did you mean".
Nothing here raises on bad input: problems are collected, so an admin sees them all at once.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "REQUIRED",
    "Field",
    "Problem",
    "Severity",
    "TableLines",
    "describe",
    "did_you_mean",
    "parse_toml",
]

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or suspicious) in a file, printed as ``file:line: where: key 'k': msg``.

    >>> str(Problem("must be a number", file=Path("a.toml"), line=3, rule="x", key="priority"))
    "a.toml:3: rule 'x': key 'priority': must be a number"
    """

    message: str
    file: Path | None = None
    line: int | None = None
    rule: str | None = None
    section: str | None = None
    key: str | None = None
    severity: Severity = "error"

    def __str__(self) -> str:
        parts: list[str] = []
        if self.file is not None:
            parts.append(f"{self.file}:{self.line}" if self.line else str(self.file))
        if self.rule is not None:
            parts.append(f"rule {self.rule!r}")
        if self.section is not None:
            parts.append(f"[{self.section}]")
        if self.key is not None:
            parts.append(f"key {self.key!r}")
        parts.append(self.message)
        return ": ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """The problem for ``--json`` output."""
        return {
            "severity": self.severity,
            "file": None if self.file is None else str(self.file),
            "line": self.line,
            "rule": self.rule,
            "section": self.section,
            "key": self.key,
            "message": self.message,
            "text": str(self),
        }


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: marks a :class:`Field` that has no default
REQUIRED: Any = _Required()

#: a check returns an error message, or None when the value is fine
Check = Callable[[Any], "str | None"]


def describe(value: object) -> str:
    """How a TOML value reads to an admin, for "got ..." messages.

    >>> describe(True), describe(3), describe("x"), describe([1])
    ('true (a boolean)', '3 (an integer)', "'x' (a string)", '[1] (a list)')
    """
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int):
        return f"{value} (an integer)"
    if isinstance(value, float):
        return f"{value} (a number)"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"{shown!r} (a string)"
    if isinstance(value, list):
        shown_list = repr(value)
        return f"{shown_list if len(shown_list) <= 60 else shown_list[:57] + '...'} (a list)"
    if isinstance(value, dict):
        return "a table"
    return f"{value!r} (a {type(value).__name__})"


@dataclass(frozen=True)
class Field:
    """A key a table may hold: its expected kind, default, and a check of its value.

    ``kind`` is one of ``str``, ``bool``, ``int``, ``number`` (int or float), ``str_list``
    (a list of strings, or one string), ``str_or_int``, ``bool_or_str``, ``str_table`` (a
    table of strings, as (key, value) pairs).
    """

    name: str
    kind: str
    default: Any = REQUIRED
    check: Check | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def coerce(self, value: Any) -> tuple[Any, str | None]:
        """The value in its Python form, or an error message saying what was expected."""
        kind = self.kind
        ok: bool
        if kind == "str":
            ok = isinstance(value, str)
            expected = "a string (in quotes)"
        elif kind == "bool":
            ok = isinstance(value, bool)
            expected = "true or false"
        elif kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
            expected = "a whole number"
        elif kind == "number":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if ok:
                value = float(value)
            expected = "a number"
        elif kind == "str_list":
            if isinstance(value, str):
                value = [value]
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            if ok:
                value = tuple(value)
            expected = 'a list of strings, e.g. ["*.mxf"]'
        elif kind == "str_or_int":
            ok = isinstance(value, str | int) and not isinstance(value, bool)
            expected = "a name (in quotes) or a number"
        elif kind == "str_table":
            ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
            if ok:
                value = tuple((str(k), v) for k, v in value.items())
            expected = 'a table of strings, e.g. [rule.fields] with title = "json:/title"'
        elif kind == "bool_or_str":
            ok = isinstance(value, bool | str)
            expected = "true, false or a path (in quotes)"
        else:  # pragma: no cover - a programming error in a Field table
            raise ValueError(f"unknown field kind {kind!r}")
        if not ok:
            return None, f"must be {expected}, got {describe(value)}"
        if self.check is not None:
            message = self.check(value)
            if message:
                return None, message
        return value, None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a choice is close to ``word``, else ``""``.

    >>> did_you_mean("colection", ["collection", "media"])
    " (did you mean 'collection'?)"
    """
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    if not close:
        close = [c for c in sorted(choices) if c.lower() == word.lower().replace("-", "_")]
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_table(
    table: Mapping[str, Any],
    fields: Mapping[str, Field],
    report: Callable[[str | None, str], None],
) -> dict[str, Any]:
    """Values of ``table`` checked against ``fields``, defaults filled in.

    Every problem goes to ``report(key, message)``; keys with a problem are left out of
    the result, so the caller knows the table is invalid when ``report`` was called.
    """
    values: dict[str, Any] = {}
    for key, raw in table.items():
        spec = fields.get(key)
        if spec is None:
            report(key, "unknown key" + did_you_mean(key, list(fields)))
            continue
        value, message = spec.coerce(raw)
        if message is not None:
            report(key, message)
            continue
        values[key] = value
    for name, spec in fields.items():
        if name in table:
            continue
        if spec.required:
            report(name, "missing (this key is required)")
        else:
            values[name] = spec.default
    return values


_SYNTAX_LINE = re.compile(r"\(at line (\d+), column (\d+)\)")


def parse_toml(path: Path, text: str) -> tuple[dict[str, Any] | None, Problem | None]:
    """Parse TOML, or a problem naming the line of the syntax error.

    >>> parse_toml(Path("a.toml"), "x = ")[1].line
    1
    """
    try:
        return tomllib.loads(text), None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _SYNTAX_LINE.search(message)
        line = int(found.group(1)) if found else None
        if line is None and "end of document" in message:
            line = max(1, len(text.splitlines()))
        message = _SYNTAX_LINE.sub("", message).strip()
        if found:
            message += f" (column {found.group(2)})"
        return None, Problem(f"TOML syntax error: {message}", file=path, line=line)


class TableLines:
    """Finds, in a TOML file's text, the line of each table and of each key in it.

    tomllib gives no positions, so this is a best-effort scan of the text: good for the
    plain files admins write, silent (no line) for anything fancier.
    """

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def headers(self, pattern: str) -> list[int]:
        """0-based indexes of the header lines matching ``pattern`` (a regex)."""
        regex = re.compile(pattern)
        return [i for i, line in enumerate(self.lines) if regex.match(line)]

    def _end(self, start: int) -> int:
        for i in range(start + 1, len(self.lines)):
            if self.lines[i].lstrip().startswith("["):
                return i
        return len(self.lines)

    def key_line(self, start: int | None, key: str) -> int | None:
        """1-based line of ``key`` in the table whose header is at index ``start``.

        ``start`` None means the top of the file, before any table.
        """
        begin = 0 if start is None else start + 1
        end = self._end(start) if start is not None else self._end(-1)
        regex = re.compile(r"""^\s*(?:{k}|"{k}"|'{k}')\s*=""".format(k=re.escape(key)))
        for i in range(begin, end):
            if regex.match(self.lines[i]):
                return i + 1
        return None if start is None else start + 1
