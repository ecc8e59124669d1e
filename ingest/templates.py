"""Rule templates (``object_name = "{stem}_{mtime:%Y%m%d}"``) and name safety.

A template is checked when the rule is loaded, never at render time: only the known
fields, no attribute or index access (``{name.__class__}``, ``{name[0]}``), no
conversions, no nested fields. Rendering then cannot fail on the template, only on the
drop: a rendered object name with a path separator, ``..``, a control character, or too
many characters is refused with a reason, and the drop stays where it is. A drop (and
its fields) is :class:`ingest.drop.Drop`, re-exported here.

>>> t = Template.compile("{stem}_{mtime:%Y}", FILE_FIELDS)
>>> drop = Drop(rule="news", watch="/w", relpath="a/clip.mxf", mtime_ns=0)
>>> t.render(drop.fields(now=0.0)) in ("clip_1970", "clip_1969")
True
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from . import defaults
from .drop import Drop, Kind
from .tomlcheck import did_you_mean

__all__ = [
    "DATE_FIELDS",
    "FILE_FIELDS",
    "FOLDER_FIELDS",
    "Drop",
    "DropRefused",
    "Kind",
    "Template",
    "TemplateError",
    "UnsafeNameError",
    "check_component",
    "check_name",
    "clean_comment",
    "suffixed_name",
]

#: fields a file drop's templates may use
FILE_FIELDS = frozenset(
    {"name", "stem", "ext", "relpath", "parent", "rule", "size", "mtime", "now"}
)
#: fields a folder drop's templates may use: the file fields, plus ``{folder}``
FOLDER_FIELDS = FILE_FIELDS | {"folder"}
#: fields that are times: their format spec is a strftime format
DATE_FIELDS = frozenset({"mtime", "now"})
#: a date field without a format spec renders like this (no ``:`` or ``/``: safe in names)
DEFAULT_DATE_FORMAT = "%Y%m%d-%H%M%S"


class TemplateError(ValueError):
    """A template that cannot be used; the message says why (checked at load time)."""


class DropRefused(ValueError):
    """A drop that cannot be turned into an archive request; ``reason`` says why.

    The engine records the reason (REJECTED) and leaves the files where they are.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnsafeNameError(DropRefused):
    """A rendered name (or a file name) DIVA must not be given."""

    def __init__(self, what: str, value: str, reason: str) -> None:
        shown = value if len(value) <= 80 else value[:77] + "..."
        super().__init__(f"{what} {shown!r} {reason}")
        self.what = what
        self.value = value


# Bidirectional overrides can make a name read differently from what it is.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _bad_char(value: str) -> str | None:
    for ch in value:
        category = unicodedata.category(ch)
        if category == "Cc":
            return f"contains the control character U+{ord(ch):04X}"
        if category in ("Zl", "Zp"):
            return f"contains the line separator U+{ord(ch):04X}"
        if category == "Cs":
            return "is not valid UTF-8 (undecodable bytes in the file name)"
        if ch in _BIDI:
            return f"contains the bidirectional override U+{ord(ch):04X}"
    return None


def check_name(value: str, max_chars: int = defaults.OBJECT_NAME_MAX_CHARS) -> str | None:
    """Why ``value`` is not a safe DIVA object (or collection) name, or None when it is.

    >>> check_name("clip_01"), check_name("a/b"), check_name("x" * 193)
    (None, "contains '/'", 'is 193 characters long; DIVA allows at most 192')
    """
    if not value.strip():
        return "is empty" if not value else "is only whitespace"
    for bad in ("/", "\\", ".."):
        if bad in value:
            return f"contains {bad!r}"
    problem = _bad_char(value)
    if problem:
        return problem
    if value != value.strip():
        return "starts or ends with whitespace"
    if len(value) > max_chars:
        return f"is {len(value)} characters long; DIVA allows at most {max_chars}"
    return None


def check_component(relpath: str) -> str | None:
    """Why a file's path (relative to ``watch``) cannot be sent as a component, or None.

    The file name is the file's own, so separators are fine; what cannot be sent safely
    is undecodable bytes and control characters (a newline in a component is one DIVA
    and the operators' tools would mangle).
    """
    problem = _bad_char(relpath)
    return f"the file path {problem}" if problem else None


def clean_comment(value: str) -> str:
    """A comment with every control character (newline, tab, DEL, C1, line separators,
    bidi overrides, undecodable bytes) replaced by a space: comments are free text, so a
    file name with a newline should not stop its archive, only lose its line break.

    >>> clean_comment("from a\\nb\\tc")
    'from a b c'
    """
    return "".join(" " if _bad_char(ch) else ch for ch in value)


def suffixed_name(name: str, n: int, max_chars: int = defaults.OBJECT_NAME_MAX_CHARS) -> str:
    """``name`` with ``_n`` appended (``on_conflict = "suffix"``), cut to fit DIVA's limit.

    >>> suffixed_name("clip", 2), len(suffixed_name("x" * 192, 2))
    ('clip_2', 192)
    """
    suffix = f"_{n}"
    return name[: max_chars - len(suffix)].rstrip() + suffix


Piece = tuple[str, str | None, str]  # literal text, field name (None: literal only), spec


@dataclass(frozen=True)
class Template:
    """A checked template: literal text and known fields with optional format specs."""

    source: str
    pieces: tuple[Piece, ...] = field(repr=False)

    @classmethod
    def compile(cls, source: str, allowed: frozenset[str]) -> Template:
        """Check ``source`` and return the template, or raise :class:`TemplateError`.

        >>> Template.compile("{name.__class__}", FILE_FIELDS)
        Traceback (most recent call last):
        ...
        ingest.templates.TemplateError: {name.__class__}: attribute or index access is not allowed
        """
        try:
            parsed = list(string.Formatter().parse(source))
        except ValueError as exc:
            raise TemplateError(f"{exc} (write {{{{ and }}}} for literal braces)") from None
        pieces: list[Piece] = []
        for literal, name, spec, conversion in parsed:
            if name is None:
                pieces.append((literal, None, ""))
                continue
            shown = "{" + name + (f"!{conversion}" if conversion else "")
            shown += (f":{spec}" if spec else "") + "}"
            if name == "" or name.isdigit():
                raise TemplateError(f"{shown}: a field needs a name, e.g. {{stem}}")
            # ``{meta.x}`` is one field's whole name (a sidecar value), not attribute access.
            if any(c in name for c in ".[]") and name not in allowed:
                if name.startswith("meta.") and "[" not in name:
                    raise TemplateError(
                        f"{shown}: no sidecar field {name[5:]!r} in this rule's [rule.fields]"
                    )
                raise TemplateError(f"{shown}: attribute or index access is not allowed")
            if name not in allowed:
                raise TemplateError(
                    f"{shown}: unknown field {name!r}{did_you_mean(name, allowed)}; "
                    f"known: {', '.join(sorted(allowed))}"
                )
            if conversion:
                raise TemplateError(f"{shown}: conversions (!{conversion}) are not allowed")
            spec = spec or ""
            if "{" in spec or "}" in spec:
                raise TemplateError(f"{shown}: nested fields are not allowed")
            if name not in DATE_FIELDS and spec:
                sample: object = 0 if name == "size" else "x"
                try:
                    format(sample, spec)
                except ValueError as exc:
                    raise TemplateError(f"{shown}: bad format spec: {exc}") from None
            pieces.append((literal, name, spec))
        return cls(source, tuple(pieces))

    @property
    def fields(self) -> frozenset[str]:
        """The field names the template uses."""
        return frozenset(name for _, name, _ in self.pieces if name is not None)

    def render(self, values: Mapping[str, object]) -> str:
        """The template filled in from ``values`` (which must hold every field used)."""
        out: list[str] = []
        for literal, name, spec in self.pieces:
            out.append(literal)
            if name is None:
                continue
            value = values[name]
            if isinstance(value, datetime):
                out.append(value.strftime(spec or DEFAULT_DATE_FORMAT))
            else:
                out.append(format(value, spec))
        return "".join(out)
