"""File-set manifests: DIVA Drop Folder Monitor's ``.mdf`` files, and their JSON twin.

A manifest names the files of one drop (a file set) and may set its archive request's
values. It is written last, once its files are in place: its arrival is the trigger.
The DFM syntax, as sites write it::

    # written by the ingest station
    objectName=EP_0042
    categoryName=SERIES
    priority=60
    <comments>
    Episode 42, final mix
    </comments>
    <fileList>
    EP_0042.mxf
    EP_0042/*
    </fileList>

``key=value`` lines (keys are case-insensitive), a multi-line ``<comments>`` block, a
``<fileList>`` block of paths or globs relative to the manifest's folder (``Folder/*``: the
files directly in ``Folder``; ``Folder/**``: its whole subtree), ``#`` comments and blank
lines. A JSON manifest (``*.json``) holds the same keys, with ``files`` for the list.

Parsing is pure (bytes in, :class:`Manifest` out) and refuses, naming the line, anything
it cannot read as written: binary junk, an unclosed block, a path that leaves the watch
folder (:func:`entry_relpath`). Which files the entries name on disk is
:func:`ingest.members.fileset_members`'s business.

>>> m = parse_manifest(b"objectName=EP1\\n<fileList>\\nEP1.mxf\\n</fileList>\\n", "EP1.mdf")
>>> m.values["object_name"], [e.text for e in m.files]
('EP1', ['EP1.mxf'])
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import defaults

__all__ = [
    "GLOB_CHARS",
    "Entry",
    "Manifest",
    "ManifestError",
    "entry_relpath",
    "parse_manifest",
]

#: a DFM key (lower case) -> the archive request value it sets (the rule's key name)
KEYS: Mapping[str, str] = {
    "objectname": "object_name",
    "categoryname": "collection",
    "priority": "priority",
    "comments": "comments",
    "sourcedestinationdivaname": "source_server",
    "sourcedestinationdivapath": "file_path_root",
    "medianame": "media",
}
#: what marks an entry of the file list as a glob rather than one file
GLOB_CHARS = frozenset("*?[")

_KEY_RX = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_TAG_RX = re.compile(r"<\s*(/?)\s*([A-Za-z]+)\s*>")


class ManifestError(ValueError):
    """A manifest that cannot be archived as written: ``line`` (1-based) names where."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        super().__init__(f"line {line}: {reason}" if line is not None else reason)


@dataclass(frozen=True)
class Entry:
    """One line of the file list: a path or a glob, as written, and where."""

    text: str
    line: int | None = None  # None in a JSON manifest (see ``index``)
    index: int = 0  # its position in the list, from 0

    @property
    def where(self) -> str:
        return f"line {self.line}" if self.line is not None else f"files[{self.index}]"

    @property
    def is_glob(self) -> bool:
        return any(c in GLOB_CHARS for c in self.text)


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest: the request values it sets (by the rule's key names:
    ``object_name``, ``collection``, ``priority``, ``comments``, ``source_server``,
    ``file_path_root``, ``media``) and its file list, in order, without duplicates."""

    values: Mapping[str, str | int] = field(default_factory=dict)
    files: tuple[Entry, ...] = ()
    ignored: tuple[str, ...] = ()  # keys no request value comes from (DFM has more)


def parse_manifest(data: bytes, name: str) -> Manifest:
    """The manifest in ``data``; JSON when ``name`` ends in ``.json``, DFM syntax otherwise.

    Raises :class:`ManifestError` naming the line (or the JSON key) of the first problem.
    """
    if len(data) > defaults.MANIFEST_MAX_BYTES:
        raise ManifestError(
            f"the manifest is {len(data)} bytes, more than the {defaults.MANIFEST_MAX_BYTES} "
            "a manifest may hold"
        )
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a BOM, as Windows tools write one
    nul = data.find(b"\0")
    if nul >= 0:
        raise ManifestError(
            "binary data (a NUL byte): not a manifest", data.count(b"\n", 0, nul) + 1
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError("not UTF-8 text", line) from None
    if name.lower().endswith(".json"):
        return _parse_json(text)
    return _parse_dfm(text)


def _parse_dfm(text: str) -> Manifest:
    values: dict[str, str | int] = {}
    seen: dict[str, int] = {}
    ignored: list[str] = []
    files: list[Entry] = []
    listed: set[str] = set()
    block: str | None = None  # "comments" or "filelist" while inside one
    opened = 0
    comment_lines: list[str] = []
    had_list = False

    def closing(tag: str, rest: str, number: int) -> None:
        nonlocal block
        if rest.strip():
            raise ManifestError(f"text after </{tag}>: {rest.strip()[:40]!r}", number)
        block = None

    lines = text.splitlines()
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if block == "comments":
            end = re.search(r"<\s*/\s*comments\s*>", raw, re.IGNORECASE)
            if end is None:
                comment_lines.append(raw.rstrip())
                continue
            comment_lines.append(raw[: end.start()].rstrip())
            _set(values, seen, "comments", "\n".join(comment_lines).strip(), number)
            closing("comments", raw[end.end() :], number)
            continue
        if block == "filelist":
            tag = _TAG_RX.fullmatch(line)
            if tag is not None:
                if tag.group(1) and tag.group(2).lower() == "filelist":
                    block = None
                    continue
                raise ManifestError(f"{line!r} inside <fileList> (close it first)", number)
            if not line or line.startswith("#"):
                continue
            if len(files) >= defaults.MANIFEST_MAX_FILES:
                raise ManifestError(
                    f"more than {defaults.MANIFEST_MAX_FILES} entries in the file list", number
                )
            _check_entry(line, number)
            if line not in listed:
                listed.add(line)
                files.append(Entry(line, number, len(files)))
            continue
        if not line or line.startswith("#"):
            continue
        tag = _TAG_RX.match(line)
        if tag is not None:
            closing_tag, name = tag.group(1), tag.group(2).lower()
            if closing_tag:
                raise ManifestError(f"</{tag.group(2)}> closes no block", number)
            if name == "comments":
                block, opened, comment_lines = "comments", number, []
                rest = line[tag.end() :]
                end = re.search(r"<\s*/\s*comments\s*>", rest, re.IGNORECASE)
                if end is not None:  # <comments>one line</comments>
                    _set(values, seen, "comments", rest[: end.start()].strip(), number)
                    closing("comments", rest[end.end() :], number)
                elif rest.strip():
                    comment_lines.append(rest.strip())
                continue
            if name == "filelist":
                if had_list:
                    raise ManifestError("a second <fileList> block", number)
                if line[tag.end() :].strip():
                    raise ManifestError(
                        "write each file on a line of its own after <fileList>", number
                    )
                block, opened, had_list = "filelist", number, True
                continue
            raise ManifestError(f"unknown block <{tag.group(2)}>: <comments> or <fileList>", number)
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _KEY_RX.fullmatch(key):
            raise ManifestError(
                f"{_clip(line)}: expected key=value, a <fileList> or <comments> block, "
                "or a # comment",
                number,
            )
        wanted = KEYS.get(key.lower())
        if wanted is None:
            ignored.append(key)
            continue
        _set(values, seen, wanted, value.strip(), number)
    if block is not None:
        which = "<fileList>" if block == "filelist" else "<comments>"
        raise ManifestError(f"{which} is never closed", opened)
    if not files:
        raise ManifestError("no file listed: a manifest needs a <fileList> block with files")
    return Manifest(values, tuple(files), tuple(ignored))


def _set(
    values: dict[str, str | int], seen: dict[str, int], key: str, value: str, line: int
) -> None:
    if key in seen:
        raise ManifestError(f"{key} given twice (first on line {seen[key]})", line)
    seen[key] = line
    values[key] = _value(key, value, line)


def _value(key: str, value: Any, line: int | None, where: str | None = None) -> str | int:
    """A manifest value checked: ``priority`` a whole number 0-100, the rest text."""
    label = where or key
    if key == "priority":
        text = str(value).strip() if not isinstance(value, bool) else ""
        if isinstance(value, int | str) and re.fullmatch(r"[0-9]{1,3}", text):
            number = int(text)
            # DFM takes 0-100; DIVA's lowest is 1, so 0 is sent as that
            if 0 <= number <= defaults.DIVA_PRIORITY_MAX:
                return max(number, defaults.DIVA_PRIORITY_MIN)
        low, high = 0, defaults.DIVA_PRIORITY_MAX
        raise ManifestError(
            f"{label}: must be a whole number {low}-{high}, got {_clip(str(value))}", line
        )
    if not isinstance(value, str):
        raise ManifestError(f"{label}: must be text, got {type(value).__name__}", line)
    if key != "comments" and not value:
        raise ManifestError(f"{label}: empty", line)
    return value


def _parse_json(text: str) -> Manifest:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"not valid JSON: {exc.msg}", exc.lineno) from None
    if not isinstance(doc, dict):
        raise ManifestError("a JSON manifest must be an object ({...})", 1)
    values: dict[str, str | int] = {}
    ignored: list[str] = []
    entries: Any = None
    found: dict[str, str] = {}
    for key, value in doc.items():
        lower = key.lower()
        if lower in found:
            raise ManifestError(f"key {key!r} given twice (also as {found[lower]!r})")
        found[lower] = key
        if lower == "files" or lower == "filelist":
            entries = value
        elif lower in KEYS:
            values[KEYS[lower]] = _value(KEYS[lower], value, None, f"key {key!r}")
        else:
            ignored.append(key)
    if not isinstance(entries, list) or not entries:
        raise ManifestError('no file listed: a JSON manifest needs "files": [...] with files')
    if len(entries) > defaults.MANIFEST_MAX_FILES:
        raise ManifestError(f'more than {defaults.MANIFEST_MAX_FILES} entries in "files"')
    files: list[Entry] = []
    listed: set[str] = set()
    for index, item in enumerate(entries):
        if not isinstance(item, str) or not item.strip():
            raise ManifestError(f"files[{index}]: must be a path (text), got {_clip(repr(item))}")
        item = item.strip()
        _check_entry(item, None, index)
        if item not in listed:
            listed.add(item)
            files.append(Entry(item, None, len(files)))
    return Manifest(values, tuple(files), tuple(ignored))


def _check_entry(text: str, line: int | None, index: int = 0) -> None:
    """Refuse what no watch folder path may be, before it meets the disk."""
    problem = None
    if "\\" in text:
        problem = "use '/' to separate folders (a backslash is not allowed)"
    elif text.startswith("/") or re.match(r"[A-Za-z]:", text):
        problem = "an absolute path: list files relative to the manifest's folder"
    elif any(ord(c) < 32 or ord(c) == 127 for c in text):
        problem = "a control character in the path"
    if problem:
        raise _entry_error(f"{_clip(text)}: {problem}", line, index)


def _entry_error(message: str, line: int | None, index: int) -> ManifestError:
    if line is not None:
        return ManifestError(message, line)
    return ManifestError(f"files[{index}]: {message}")


def entry_relpath(base: str, entry: Entry) -> str:
    """``entry`` as a path relative to the watch folder, for a manifest in folder ``base``
    (relative to the watch folder, ``""`` at the top). Refuses one that leaves it.

    >>> entry_relpath("show", Entry("clips/a.mxf", 3))
    'show/clips/a.mxf'
    >>> entry_relpath("show", Entry("../../etc/passwd", 4))
    Traceback (most recent call last):
    ...
    ingest.manifest.ManifestError: line 4: '../../etc/passwd': leaves the watch folder
    """
    joined = posixpath.normpath(posixpath.join(base, entry.text))
    if joined == ".." or joined.startswith(("../", "/")):
        raise _entry_error(f"{_clip(entry.text)}: leaves the watch folder", entry.line, entry.index)
    if joined == "." or joined == base:
        message = f"{_clip(entry.text)}: names a folder, not files (write Folder/** for all of it)"
        raise _entry_error(message, entry.line, entry.index)
    return joined


def _clip(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
