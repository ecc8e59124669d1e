"""Folder drops: which files are a folder drop's members.

One function for the daemon (settling a folder drop, and reading it again when it may
have vanished) and for ``ingest rules explain`` (:meth:`ingest.rules.Rule.drop_for`), so
that what ``explain`` lists is what the daemon archives. A member is a file that both:

- :func:`ingest.watch.scan` lists under the folder: regular files only (symlinks, FIFOs,
  sockets and devices never count, nor does anything in a folder that cannot be read),
  with the built-in ignores (hidden, temporary, partial files) pruned at any depth;
- the folder's rule takes (:meth:`ingest.rules.Rule.try_path`): its own ignores, its
  ready marker (at the top of the folder only) and anything reached through a symlink
  are left out.

>>> folder_members("/mnt/nas/dpx", "REEL_1", rule)  # doctest: +SKIP
Members(files=('REEL_1/f1.dpx', 'REEL_1/sub/f2.dpx'), size=24, mtime_ns=1700000000000000000)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .watch import scan

if TYPE_CHECKING:
    from .rules import Rule

__all__ = ["Members", "folder_members"]


@dataclass(frozen=True)
class Members:
    """The member files of one folder drop, and what they add up to."""

    files: tuple[str, ...] = ()  # relative to the watch folder, '/'-separated, sorted
    size: int = 0  # bytes, all members together
    mtime_ns: int = 0  # the newest member's mtime, ns since the epoch

    @property
    def count(self) -> int:
        return len(self.files)


def folder_members(watch: Path | str, folder: str, rule: Rule | None) -> Members:
    """The members of folder drop ``folder`` (relative to ``watch``) under ``rule``.

    No members when the folder is gone or cannot be read. ``rule`` None (the daemon's
    rule was removed while the drop was live): every file the scan lists counts.
    """
    try:
        found = scan(watch, prefix=folder).files
    except OSError:
        return Members()
    files: list[str] = []
    total = newest = 0
    for member, (size, mtime_ns) in found.items():
        if rule is not None:
            match = rule.try_path(Path(watch, member)).match
            if match is None or match.marker:
                continue
        files.append(member)
        total += size
        newest = max(newest, mtime_ns)
    return Members(tuple(sorted(files)), total, newest)
