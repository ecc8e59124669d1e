"""Sidecar metadata: the fields a rule reads from an XML or JSON file beside a drop.

A rule's ``[rule.fields]`` maps names to where a value sits in the sidecar:
``"xml:/Clip/HouseID"`` (an ElementTree path from the root element, which the leading
``/Clip`` names) or ``"json:/title"`` (a JSON pointer, RFC 6901). The values fill
``{meta.<name>}`` in the rule's templates.

Sidecars come from upstream tools, so they are read defensively: XML through
``defusedxml`` (no entity declarations at all, so no billion laughs and no external
entities, and no DTD fetched), and no file larger than :data:`MAX_BYTES` is read.

>>> spec = FieldSpec.parse("house_id", "xml:/Clip/HouseID")
>>> read_values(b"<Clip><HouseID>H-1</HouseID></Clip>", "clip.xml", [spec])
{'house_id': 'H-1'}
>>> read_values(b'{"title": "Evening news"}', "clip.json", [FieldSpec.parse("t", "json:/title")])
{'t': 'Evening news'}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

__all__ = ["MAX_BYTES", "FieldSpec", "SidecarError", "read_fields", "read_values"]

#: a sidecar larger than this is refused unread: metadata, not media
MAX_BYTES = 4 * 1024 * 1024
#: the longest value a field keeps (it lands in object names and comments)
MAX_VALUE_CHARS = 1024

_NAME_RX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class SidecarError(ValueError):
    """A sidecar that cannot be read safely or at all; the message says why."""


@dataclass(frozen=True)
class FieldSpec:
    """One ``[rule.fields]`` entry: a name and where its value sits in the sidecar."""

    name: str
    kind: Literal["xml", "json"]
    path: str

    @classmethod
    def parse(cls, name: str, spec: str) -> FieldSpec:
        """Check one entry; raise :class:`ValueError` saying what is wrong.

        >>> FieldSpec.parse("x", "yaml:/a")
        Traceback (most recent call last):
        ...
        ValueError: 'yaml:/a': write "xml:/Root/Element" or "json:/pointer"
        """
        if not _NAME_RX.fullmatch(name):
            raise ValueError(f"{name!r}: a field name is letters, digits and '_'")
        kind, sep, path = spec.partition(":")
        if not sep or kind not in ("xml", "json") or not path.startswith("/"):
            raise ValueError(f'{spec!r}: write "xml:/Root/Element" or "json:/pointer"')
        if kind == "xml":
            root, _, rest = path[1:].partition("/")
            if not root or ("{" in root and "}" not in root):
                raise ValueError(f"{spec!r}: name the root element first, e.g. xml:/Clip/HouseID")
            if rest.startswith("/") or ".." in rest.split("/"):
                raise ValueError(f"{spec!r}: a path below the root element, without '//' or '..'")
        return cls(name, "xml" if kind == "xml" else "json", path)

    @property
    def source(self) -> str:
        return f"{self.kind}:{self.path}"


def _xml_value(root: Any, spec: FieldSpec) -> str | None:
    top, _, rest = spec.path[1:].partition("/")
    if root.tag != top:
        return None
    node = root.find(rest) if rest else root
    if node is None:
        return None
    return "".join(node.itertext()).strip()


def _json_value(doc: Any, spec: FieldSpec) -> str | None:
    node = doc
    for raw in spec.path[1:].split("/") if spec.path != "/" else [""]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    if node is None or isinstance(node, dict | list):
        return None
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def read_values(data: bytes, name: str, specs: Iterable[FieldSpec]) -> dict[str, str]:
    """The value of each field found in sidecar ``data`` (``name`` for messages); a field
    not found is left out. Raises :class:`SidecarError` for content that cannot be read
    safely (entities, a DTD, bad syntax, too large)."""
    specs = list(specs)
    if len(data) > MAX_BYTES:
        raise SidecarError(f"{name} is {len(data)} bytes; a sidecar may be {MAX_BYTES} at most")
    found: dict[str, str | None] = {}
    xml = [s for s in specs if s.kind == "xml"]
    if xml:
        try:
            root = SafeET.fromstring(data, forbid_dtd=True)
        except DefusedXmlException as exc:
            raise SidecarError(f"{name}: refused unsafe XML ({type(exc).__name__})") from None
        except SafeET.ParseError as exc:
            raise SidecarError(f"{name}: not well-formed XML ({exc})") from None
        found.update((s.name, _xml_value(root, s)) for s in xml)
    js = [s for s in specs if s.kind == "json"]
    if js:
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise SidecarError(f"{name}: not valid JSON ({exc})") from None
        found.update((s.name, _json_value(doc, s)) for s in js)
    return {k: v[:MAX_VALUE_CHARS] for k, v in found.items() if v is not None}


def read_fields(path: Path, specs: Iterable[FieldSpec]) -> dict[str, str]:
    """:func:`read_values` of the sidecar file at ``path`` (never more than
    :data:`MAX_BYTES` read); :class:`SidecarError` when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise SidecarError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    return read_values(data, path.name, specs)
