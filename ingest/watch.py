"""Watching drop folders: native events as hints, scans as the truth.

Watchers only report: a native watcher (watchdog's inotify observer) calls
``report(watch, path)`` for every path an event names, and the engine decides what it
means. Scans (:func:`scan`) walk a folder with ``os.scandir`` and one ``lstat`` per
entry: the start-up scan, the periodic rescan that catches lost events, and the poll of a
network share where inotify sees nothing are all the same walk.

Only regular files count. Symlinks, FIFOs, sockets and devices are never followed or
archived (they are listed in ``Scan.skipped`` so the engine can say so once), so nothing
outside a watch folder can be reached through it.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import translate
from pathlib import Path
from typing import Any, Literal, Protocol

from . import defaults

__all__ = [
    "NETWORK_FILESYSTEMS",
    "NativeWatcher",
    "Observer",
    "ObserverSetting",
    "Scan",
    "filesystem_type",
    "ignored_name",
    "resolve_observer",
    "scan",
]

log = logging.getLogger("ingest.watch")

#: Filesystems whose changes made on other hosts inotify never sees: poll them.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "smb2", "9p", "afs", "ceph", "glusterfs",
        "lustre", "gpfs", "davfs", "ncpfs", "fuse.sshfs", "sshfs", "fuse.glusterfs",
        "fuse.rclone", "fuse.s3fs", "fuse.gcsfuse", "fuse.cephfs", "fuse.juicefs",
    }
)  # fmt: skip

_IGNORED = re.compile("|".join(f"(?:{translate(p)})" for p in defaults.BUILTIN_IGNORES))
# Every built-in ignore starts or ends with one of these characters; a name that does
# neither cannot match, and skips the regex.
_IGNORABLE_FIRST = frozenset(p[0] for p in defaults.BUILTIN_IGNORES if p[0] != "*")
_IGNORABLE_LAST = frozenset(p[-1] for p in defaults.BUILTIN_IGNORES if p[-1] != "*")
_S_IFMT, _S_IFREG, _S_IFDIR, _S_IFLNK = (
    stat.S_IFMT(0o170000),
    stat.S_IFREG,
    stat.S_IFDIR,
    stat.S_IFLNK,
)


def ignored_name(name: str) -> bool:
    """True for names no rule ever counts: hidden, temporary, partial uploads.

    >>> ignored_name("clip.mxf.part"), ignored_name(".DS_Store"), ignored_name("clip.mxf")
    (True, True, False)
    """
    return _IGNORED.match(name) is not None


@dataclass
class Scan:
    """What one walk of a watch folder saw."""

    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # relpath -> (size, mtime)
    skipped: dict[str, str] = field(default_factory=dict)  # relpath -> why it is not a file
    errors: dict[str, str] = field(default_factory=dict)  # relpath -> error reading it
    dev: int | None = None  # st_dev of the watch folder itself
    entries: int = 0  # directory entries looked at


def scan(root: Path | str, *, prefix: str = "") -> Scan:
    """Walk ``root`` (or only ``root/prefix``): every regular file's size and mtime.

    Ignored names (:func:`ignored_name`) are pruned, folders included. Raises
    ``OSError`` when ``root`` itself cannot be read: the engine treats that as the folder
    being away (a mount blip), not as every file having gone.
    """
    root = os.fspath(root)
    result = Scan()
    result.dev = os.stat(root).st_dev
    start = os.path.join(root, prefix) if prefix else root
    files = result.files
    ignored = _IGNORED.match
    stack: list[tuple[str, str]] = [(start, prefix + "/" if prefix else "")]
    first = True
    entries = 0
    # The loop runs once per entry of trees of hundreds of thousands: locals, the stat
    # type bits compared inline, and the ignore regex only for names that could match.
    while stack:
        folder, rel = stack.pop()
        try:
            iterator = os.scandir(folder)
        except OSError as exc:
            if first:
                raise
            result.errors[rel.rstrip("/")] = exc.strerror or str(exc)
            continue
        first = False
        with iterator:
            for entry in iterator:
                entries += 1
                name = entry.name
                if (name[0] in _IGNORABLE_FIRST or name[-1] in _IGNORABLE_LAST) and ignored(name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:  # vanished between readdir and lstat, or no access
                    if exc.errno != 2:
                        result.errors[rel + name] = exc.strerror or str(exc)
                    continue
                kind = st.st_mode & _S_IFMT
                if kind == _S_IFREG:
                    files[rel + name] = (st.st_size, st.st_mtime_ns)
                elif kind == _S_IFDIR:
                    stack.append((entry.path, rel + name + "/"))
                elif kind == _S_IFLNK:
                    result.skipped[rel + name] = "a symlink (never followed)"
                else:
                    result.skipped[rel + name] = "not a regular file (FIFO, socket or device)"
    result.entries = entries
    return result


def filesystem_type(path: Path | str, mounts: str = "/proc/mounts") -> str:
    """The filesystem type of the mount holding ``path`` (``"unknown"`` if it cannot tell)."""
    target = os.path.realpath(path)
    best, best_type = "", "unknown"
    try:
        with open(mounts, encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
    except OSError:
        return best_type
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point = parts[1].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, parts[2]
    return best_type


class ObserverSetting(Protocol):
    """What :func:`resolve_observer` reads of a rule: its ``observer`` setting."""

    @property
    def observer(self) -> str: ...


@dataclass(frozen=True)
class Observer:
    """How a watch folder is watched, and why."""

    kind: Literal["native", "polling"]
    why: str
    #: the filesystem type of the folder's mount (``"unknown"`` if it cannot tell)
    fstype: str
    #: why polling would be chosen here were native events not forced; "" when it would not
    blind: str = ""


def resolve_observer(watch: Path | str, rules: Iterable[ObserverSetting]) -> Observer:
    """How ``watch`` is watched for the rules that watch it: the one decision, for the
    engine and for ``ingest doctor``.

    Polling wins as soon as one rule asks for it (a rule that says its share must be
    polled is never left blind); native events only when every rule forces them;
    otherwise the filesystem decides: native events on a local one, polling on a network
    or FUSE share, where inotify sees nothing of changes made on other hosts.

    >>> from types import SimpleNamespace as Rule
    >>> resolve_observer("/", [Rule(observer="polling"), Rule(observer="auto")]).kind
    'polling'
    """
    settings = {r.observer for r in rules}
    if "polling" in settings:
        setting = "polling"
    elif settings == {"native"}:
        setting = "native"
    else:
        setting = "auto"
    fstype = filesystem_type(watch)
    auto, auto_why = _by_filesystem(fstype)
    if setting in ("native", "polling"):
        why = f'forced by the rule (observer = "{setting}")'
        blind = auto_why if setting == "native" and auto == "polling" else ""
        return Observer("native" if setting == "native" else "polling", why, fstype, blind)
    return Observer(auto, auto_why, fstype)


def _by_filesystem(fstype: str) -> tuple[Literal["native", "polling"], str]:
    if fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse."):
        return "polling", f"{fstype} is a network or FUSE filesystem: inotify cannot see it"
    return "native", f"{fstype} is local"


class NativeWatcher:
    """One watchdog observer (inotify on Linux) per watch folder, recursive.

    Calls ``report(watch, path)`` from watchdog's thread for each path an event names
    (both ends of a move). The engine owns what happens next.
    """

    def __init__(self, watch: str, report: Callable[[str, str], None]) -> None:
        self.watch = watch
        self._report = report
        self._observer: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"NativeWatcher({self.watch!r}, alive={self.alive})"

    def start(self) -> None:
        """Start watching; raises ``OSError`` (e.g. ENOSPC: inotify watch limit) on failure."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        report, watch = self._report, self.watch

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                if event.is_directory and event.event_type == "modified":
                    # A folder "modified" only because an entry in it came or went: that
                    # entry has its own event. Reporting it would make the engine rescan
                    # the whole folder for every file of a burst.
                    return
                report(watch, os.fsdecode(event.src_path))
                dest = getattr(event, "dest_path", "")
                if dest:
                    report(watch, os.fsdecode(dest))

        observer = Observer()
        observer.daemon = True
        observer.schedule(_Handler(), watch, recursive=True)
        observer.start()
        with self._lock:
            self._observer = observer

    @property
    def alive(self) -> bool:
        with self._lock:
            return self._observer is not None and self._observer.is_alive()

    def stop(self) -> None:
        with self._lock:
            observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            if observer.is_alive() and threading.current_thread() is not observer:
                observer.join(timeout=5)
