"""A drop: what one archive request is made of, named and signed.

A drop is a file (``kind="file"``), a top-level folder with its files, or a file set (a
manifest and the files it lists), found in a watch folder by a rule. :class:`Drop` is
its identity (rule, watch folder, relpath, kind) and its signature (size, newest mtime,
file count, and a folder's members), as one value
shared by the rules (``rules explain``, the archive body), the templates (their fields),
the engine (a :class:`~ingest.engine.drops.Tracked` holds one beside its live state) and
the ledger (:meth:`Drop.from_row`, :meth:`Drop.columns`).

A signature is None until the drop is read (a drop just detected is not settled yet);
the templates then see a size and mtime of 0.

>>> drop = Drop("news", "/w", "a/clip.mxf", size=10, mtime_ns=1_500_000_000)
>>> drop.stem, drop.ext, drop.parent, drop.mtime, drop.key
('clip', 'mxf', 'a', 1.5, ('/w', 'a/clip.mxf'))
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

__all__ = ["Drop", "Kind", "absent"]

Kind = Literal["file", "folder", "fileset"]


def absent(path: str) -> bool:
    """Whether nothing is at ``path``: only "no such file" (ENOENT, ENOTDIR) says so.

    A folder this user cannot search (EACCES) or a share that errs (EIO, ESTALE) hides
    its files without their having gone, and a file taken for gone is forgotten: a new
    drop, archived again, once it is seen again. ``os.path.lexists`` is False for those
    too, so it must never decide that a drop's files are gone.

    >>> absent("/no/such/path"), absent("/")
    (True, False)
    """
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def _split_name(name: str) -> tuple[str, str]:
    """(stem, ext) with ext without its dot; a leading dot is part of the stem."""
    dot = name.rfind(".")
    if dot <= 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


@dataclass(frozen=True)
class Drop:
    """A drop's identity and signature.

    ``watch`` is the watch folder as the rules and the ledger spell it (absolute);
    ``relpath`` is ``/``-separated and relative to it; ``members`` (folder drops, once
    read) are the relpaths, also relative to ``watch``, of every file that counts, sorted;
    a file set's (``relpath`` is its manifest) are the files its manifest lists.
    """

    rule: str
    watch: str
    relpath: str
    kind: Kind = "file"
    size: int | None = None  # bytes (a folder: all its members)
    mtime_ns: int | None = None  # the newest mtime, ns since the epoch
    file_count: int | None = None
    members: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: Mapping[str, Any], members: tuple[str, ...] = ()) -> Drop:
        """The drop a ledger row (``drops``) records; its members are in its archive
        body, which the caller reads."""
        kind: Kind = row["kind"] if row["kind"] in ("folder", "fileset") else "file"
        return cls(
            row["rule"], row["watch"], row["path"], kind,
            row["size"], row["mtime_ns"], row["file_count"], members,
        )  # fmt: skip

    def columns(self) -> dict[str, Any]:
        """The ledger columns (``drops``) that hold this drop's identity and signature."""
        return {
            "rule": self.rule,
            "watch": self.watch,
            "path": self.relpath,
            "kind": self.kind,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "file_count": self.file_count,
        }

    def signed(self, signature: tuple[int, int, int], members: tuple[str, ...] = ()) -> Drop:
        """This drop as read now: ``signature`` is (size, mtime_ns, file_count)."""
        size, mtime_ns, file_count = signature
        return replace(self, size=size, mtime_ns=mtime_ns, file_count=file_count, members=members)

    @property
    def key(self) -> tuple[str, str]:
        """(watch, relpath): what the engine and the ledger know a drop by."""
        return (self.watch, self.relpath)

    @property
    def path(self) -> Path:
        """The drop's absolute path."""
        return Path(self.watch, *self.relpath.split("/"))

    @property
    def mtime(self) -> float:
        """The newest mtime in seconds since the epoch (0.0 until the drop is read)."""
        return (self.mtime_ns or 0) / 1e9

    @property
    def name(self) -> str:
        return self.relpath.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return _split_name(self.name)[0]

    @property
    def ext(self) -> str:
        """The extension without its dot (``"mxf"``), or ``""``."""
        return _split_name(self.name)[1]

    @property
    def parent(self) -> str:
        """The folder holding the drop, relative to ``watch`` (``""`` at the top)."""
        return self.relpath.rsplit("/", 1)[0] if "/" in self.relpath else ""

    def fields(self, now: float | None = None) -> dict[str, object]:
        """Every template field's value for this drop (times in local time)."""
        values: dict[str, object] = {
            "name": self.name,
            "stem": self.stem,
            "ext": self.ext,
            "relpath": self.relpath,
            "parent": self.parent,
            "rule": self.rule,
            "size": self.size or 0,
            "mtime": datetime.fromtimestamp(self.mtime),
            "now": datetime.fromtimestamp(time.time() if now is None else now),
        }
        if self.kind == "folder":
            values["folder"] = self.name
        return values
