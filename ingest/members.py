"""Folder and file-set drops: which files a drop is made of.

One function for the daemon (settling a folder drop, and reading it again when it may
have vanished) and for ``ingest rules explain`` (:meth:`ingest.rules.Rule.drop_for`), so
that what ``explain`` lists is what the daemon archives. A member is a file that both:

- :func:`ingest.watch.scan` lists under the folder: regular files only (symlinks, FIFOs,
  sockets and devices never count, nor does anything in a folder that cannot be read),
  with the built-in ignores (hidden, temporary, partial files) pruned at any depth;
- the folder's rule takes (:meth:`ingest.rules.Rule.try_path`): its own ignores, its
  ready marker (at the top of the folder only) and anything reached through a symlink
  are left out.

A file set's members are the files its manifest lists (:func:`fileset_members`), again
one function for the daemon and for ``explain``.

>>> folder_members("/mnt/nas/dpx", "REEL_1", rule)  # doctest: +SKIP
Members(files=('REEL_1/f1.dpx', 'REEL_1/sub/f2.dpx'), size=24, mtime_ns=1700000000000000000)
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import defaults
from .manifest import Manifest, ManifestError, entry_relpath, parse_manifest
from .watch import scan, unpack

if TYPE_CHECKING:
    from .rules import Rule

__all__ = ["FileSet", "Members", "fileset_members", "folder_members"]


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
    for member, value in found.items():
        if rule is not None:
            match = rule.try_path(Path(watch, member)).match
            if match is None or match.marker:
                continue
        files.append(member)
        size, mtime_ns = unpack(value)
        total += size
        newest = max(newest, mtime_ns)
    return Members(tuple(sorted(files)), total, newest)


@dataclass(frozen=True)
class FileSet:
    """A manifest read now: its files, what it still lacks, or why it cannot be archived.

    ``members`` are the files to archive: the listed files found, and the manifest
    itself when the rule archives it. ``signature`` (size, newest mtime, count) takes the
    manifest and every file found in, so that it changes when any of them does.
    """

    members: Members
    signature: tuple[int, int, int]
    manifest: Manifest | None = None
    missing: tuple[str, ...] = ()  # entries that name no file yet ("line 7: a.mxf")
    error: ManifestError | None = None
    written_ns: int = 0  # the manifest's mtime, ns since the epoch


def fileset_members(watch: Path | str, manifest: str, rule: Rule | None) -> FileSet | None:
    """The file set of ``manifest`` (relative to ``watch``) as it is on disk now; None
    when the manifest is gone or not a regular file.

    Entries are relative to the manifest's folder: a path names one file (it must be a
    regular file, reached through no symlink), a glob the files it matches (``*`` within
    a folder, ``**`` across folders; hidden and partial files never count, nor do the
    rule's ignores or other manifests); an entry that names nothing yet is missing.
    """
    watch = os.fspath(watch)
    full = os.path.join(watch, *manifest.split("/"))
    try:
        st = os.lstat(full)
        if not stat.S_ISREG(st.st_mode):
            return None
        with open(full, "rb") as handle:
            data = handle.read(defaults.MANIFEST_MAX_BYTES + 1)
    except OSError:
        return None
    own = Members(), (st.st_size, st.st_mtime_ns, 1)
    try:
        parsed = parse_manifest(data, manifest)
    except ManifestError as exc:
        return FileSet(*own, None, (), exc, st.st_mtime_ns)
    base = posixpath.dirname(manifest)
    real = os.path.realpath(watch)
    found: dict[str, tuple[int, int]] = {}
    missing: list[str] = []
    try:
        for entry in parsed.files:
            relpath = entry_relpath(base, entry)
            hits = (
                _glob_hits(watch, real, relpath, manifest, rule)
                if entry.is_glob
                else _one_file(watch, real, relpath, entry.where, entry.text)
            )
            if not hits:
                missing.append(f"{entry.where}: {entry.text}")
            found.update(hits)
    except ManifestError as exc:
        return FileSet(*own, parsed, (), exc, st.st_mtime_ns)
    found.pop(manifest, None)
    files = sorted(found)
    if rule is not None and rule.archive_manifest:
        files = sorted([*files, manifest])
    total = st.st_size + sum(size for size, _ in found.values())
    newest = max([st.st_mtime_ns, *(mtime for _, mtime in found.values())])
    signature = (total, newest, len(found) + 1)
    members = Members(tuple(files), total, newest)
    return FileSet(members, signature, parsed, tuple(missing), None, st.st_mtime_ns)


def _through_symlink(real: str, relpath: str) -> bool:
    expected = os.path.join(real, *relpath.split("/"))
    return os.path.realpath(expected) != expected


def _one_file(
    watch: str, real: str, relpath: str, where: str, text: str
) -> dict[str, tuple[int, int]]:
    try:
        st = os.lstat(os.path.join(watch, *relpath.split("/")))
    except OSError:
        return {}
    if stat.S_ISDIR(st.st_mode):
        reason = f"{text!r} is a folder: write {text.rstrip('/')}/** for all its files"
        raise ManifestError(f"{where}: {reason}")
    if not stat.S_ISREG(st.st_mode) or _through_symlink(real, relpath):
        raise ManifestError(f"{where}: {text!r} is a symlink (or below one): never archived")
    return {relpath: (st.st_size, st.st_mtime_ns)}


def _glob_hits(
    watch: str, real: str, pattern: str, manifest: str, rule: Rule | None
) -> dict[str, tuple[int, int]]:
    from .rules import glob_regex  # (rules imports this module)

    parts = pattern.split("/")
    fixed: list[str] = []
    for part in parts[:-1]:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    prefix = "/".join(fixed)
    if prefix and _through_symlink(real, prefix):
        return {}
    try:
        files = scan(watch, prefix=prefix).files if prefix else scan(watch).files
    except OSError:
        return {}
    rx = re.compile(glob_regex(pattern), re.DOTALL)
    hits: dict[str, tuple[int, int]] = {}
    for relpath, value in files.items():
        if relpath == manifest or rx.fullmatch(relpath) is None:
            continue
        if rule is not None and (rule.ignored(relpath) or rule.is_manifest(relpath)):
            continue
        hits[relpath] = unpack(value)
    return hits
