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

import contextlib
import ctypes
import errno
import logging
import os
import re
import select
import stat
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import translate
from pathlib import Path
from typing import Literal, Protocol

from . import defaults

__all__ = [
    "NETWORK_FILESYSTEMS",
    "TRUSTED_FOLDER_MTIMES",
    "Listing",
    "NativeWatcher",
    "Observer",
    "ObserverSetting",
    "Packed",
    "Scan",
    "Stamp",
    "filesystem_type",
    "ignored_name",
    "pack",
    "resolve_observer",
    "scan",
    "unpack",
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


#: A folder's stamp: (mtime_ns, ctime_ns, inode). Adding, removing or renaming an entry
#: moves the first two; ``touch -d`` cannot set ctime, and a folder replaced by another
#: (``rsync -a``, ``mv``) has another inode.
Stamp = tuple[int, int, int]
#: A folder as a poll last listed it: (its stamp before that listing, whether the stamp
#: was already the same one poll earlier, the names of its entries but ignored ones,
#: joined by NULs). One string per folder: a million names held as a million strings
#: were 80 MB beside the ledger's own million paths.
Listing = tuple[Stamp, bool, str]


#: A file as a scan saw it: its size and mtime (ns) in one int (:func:`pack`). A million
#: files settled in the ledger are held as a million of these: an int is 48 bytes where a
#: (size, mtime) tuple with its mtime int is 128, and it compares just as fast.
Packed = int
_LOW64 = (1 << 64) - 1


def pack(size: int, mtime_ns: int) -> Packed:
    """A file's size and mtime as one int, the value a scan compares (``unpack`` undoes it).

    One to one for any mtime (before 1970 too) and any size below 2**64.

    >>> pack(5, 7) == pack(5, 7) != pack(7, 5)
    True
    >>> unpack(pack(4096, -1_000))
    (4096, -1000)
    """
    return mtime_ns << 64 | size


def unpack(value: Packed) -> tuple[int, int]:
    """(size, mtime_ns) of a :func:`pack`-ed value."""
    return value & _LOW64, value >> 64


@dataclass
class Scan:
    """What one walk of a watch folder saw. Values are :func:`pack`-ed (size, mtime)."""

    #: every regular file, relpath -> value: only for a scan given no ``known`` (it is
    #: ``changed`` then), or asked for ``every`` file
    files: dict[str, Packed] = field(default_factory=dict)
    #: the files not as ``known`` has them: new, or changed (every file without ``known``)
    changed: dict[str, Packed] = field(default_factory=dict)
    #: the entries of ``known`` not found as regular files (a folder drop's name among them)
    missing: dict[str, Packed | None] = field(default_factory=dict)
    count: int = 0  # regular files found
    skipped: dict[str, str] = field(default_factory=dict)  # relpath -> why it is not a file
    errors: dict[str, str] = field(default_factory=dict)  # relpath -> error reading it
    dev: int | None = None  # st_dev of the watch folder itself
    entries: int = 0  # directory entries looked at
    folders: int = 0  # folders come to, the watch folder and any unreadable one among them
    #: each folder's listing, for the next poll (only when the scan was given listings)
    listings: dict[str, Listing] | None = None
    #: the ``known`` this scan compared with
    known: Mapping[str, Packed | None] = field(default_factory=dict, repr=False)

    def found(self, relpath: str) -> bool:
        """Whether the scan found ``relpath`` as a regular file: what a dict of every file
        would tell, without holding one."""
        return relpath in self.changed or (relpath in self.known and relpath not in self.missing)


#: Filesystems whose folder mtimes a poll trusts: local ones, where creating, removing or
#: renaming an entry always moves its folder's mtime (fine-grained, by the one clock
#: that also stamps the entries). Never SMB/CIFS or FUSE (a server's or a program's word,
#: often coarse or cached), nor NFS (the client caches a folder's attributes for up to
#: ``acdirmax``, 60 s by default: new entries would be seen that much later).
TRUSTED_FOLDER_MTIMES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs"})


def scan(
    root: Path | str,
    *,
    prefix: str = "",
    on_folder: Callable[[str], object] | None = None,
    listings: dict[str, Listing] | None = None,
    known: Mapping[str, Packed | None] | None = None,
    every: bool = False,
) -> Scan:
    """Walk ``root`` (or only ``root/prefix``): every regular file's size and mtime.

    Ignored names (:func:`ignored_name`) are pruned, folders included. ``on_folder`` is
    called with each folder below the start just before it is listed (a native watcher
    watches it then: :meth:`NativeWatcher.add`). Raises ``OSError`` when ``root`` itself
    cannot be read: the engine treats that as the folder being away (a mount blip), not
    as every file having gone.

    ``listings`` (a poll on a filesystem in :data:`TRUSTED_FOLDER_MTIMES`): the previous
    poll's :data:`Listing` of each folder. A folder whose :data:`Stamp` has not moved
    since a listing that was itself made at least one poll after that stamp was first
    seen is not listed again: its entries are the same, and each is still ``lstat``-ed (a
    file rewritten in place does not move its folder's mtime, so every size and mtime is
    read on every poll). The "one poll after" rule keeps an entry added in the same clock
    tick as the listing from being missed. ``Scan.listings`` holds this walk's listings
    for the next.

    ``known``: what the files were (relpath -> :func:`pack`-ed value, or None): what the
    ledger settled. ``Scan.changed`` holds the files not as they were there, and
    ``Scan.missing`` the paths of ``known`` not found; the files found as they were are
    only counted, unless ``every`` asks for ``Scan.files`` too. A start-up over a
    million files already archived holds no second entry per file (that dict, its
    million path strings and the set a sweep made of it were a third of its memory).
    """
    root = os.fspath(root)
    result = Scan()
    top = os.stat(root)
    result.dev = top.st_dev
    start = os.path.join(root, prefix) if prefix else root
    changed = result.changed
    files = result.files if known is not None and every else None
    ignored = _IGNORED.match
    lstat, o_dir = os.lstat, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    keep = listings is not None
    if known is not None:
        result.known = known
        result.missing = dict(known)  # what the walk does not come across stays in it
    # One look per file both compares it and ticks it off.
    found = result.missing.pop
    listed: dict[str, Listing] = {}
    stack: list[tuple[str, str, Stamp]] = [
        (start, prefix + "/" if prefix else "", (top.st_mtime_ns, top.st_ctime_ns, top.st_ino))
    ]
    first = True
    entries = count = folders = 0
    # The loop runs once per entry of trees of hundreds of thousands: locals, the stat
    # type bits compared inline, and the ignore regex only for names that could match.
    while stack:
        folder, rel, stamp = stack.pop()
        folders += 1
        if on_folder is not None and not first:
            on_folder(folder)
        before = listings.get(folder) if listings is not None else None
        if before is not None and before[0] == stamp and before[1]:
            # Unchanged since a trusted listing: the same entries, each lstat-ed anew.
            try:
                fd = os.open(folder, o_dir)
            except OSError as exc:
                if first:
                    raise
                result.errors[rel.rstrip("/")] = exc.strerror or str(exc)
                continue
            first = False
            listed[folder] = before
            try:
                for name in before[2].split("\0") if before[2] else ():
                    entries += 1
                    relpath = rel + name
                    try:
                        st = lstat(name, dir_fd=fd)
                    except OSError as exc:
                        if exc.errno != 2:
                            result.errors[relpath] = exc.strerror or str(exc)
                        continue
                    kind = st.st_mode & _S_IFMT
                    if kind == _S_IFREG:
                        count += 1
                        value = st.st_mtime_ns << 64 | st.st_size
                        if found(relpath, None) != value:
                            changed[relpath] = value
                        if files is not None:
                            files[relpath] = value
                    elif kind == _S_IFDIR:
                        sub = (st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                        stack.append((folder + "/" + name, relpath + "/", sub))
                    elif kind == _S_IFLNK:
                        result.skipped[relpath] = "a symlink (never followed)"
                    else:
                        result.skipped[relpath] = "not a regular file (FIFO, socket or device)"
            finally:
                os.close(fd)
            continue
        try:
            iterator = os.scandir(folder)
        except OSError as exc:
            if first:
                raise
            result.errors[rel.rstrip("/")] = exc.strerror or str(exc)
            continue
        first = False
        names: list[str] = []
        with iterator:
            for entry in iterator:
                entries += 1
                name = entry.name
                if (name[0] in _IGNORABLE_FIRST or name[-1] in _IGNORABLE_LAST) and ignored(name):
                    continue
                relpath = rel + name
                if keep:
                    names.append(name)
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:  # vanished between readdir and lstat, or no access
                    if exc.errno != 2:
                        result.errors[relpath] = exc.strerror or str(exc)
                    continue
                kind = st.st_mode & _S_IFMT
                if kind == _S_IFREG:
                    count += 1
                    value = st.st_mtime_ns << 64 | st.st_size
                    if found(relpath, None) != value:
                        changed[relpath] = value
                    if files is not None:
                        files[relpath] = value
                elif kind == _S_IFDIR:
                    sub = (st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                    stack.append((entry.path, relpath + "/", sub))
                elif kind == _S_IFLNK:
                    result.skipped[relpath] = "a symlink (never followed)"
                else:
                    result.skipped[relpath] = "not a regular file (FIFO, socket or device)"
        if keep:
            # Trusted from the next poll on only if the mtime was this one a poll ago too.
            stable = before is not None and before[0] == stamp
            listed[folder] = (stamp, stable, "\0".join(names))
    result.entries, result.count, result.folders = entries, count, folders
    result.listings = listed if keep else None
    if known is None:
        result.files = changed  # every file differs from nothing
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
    """One inotify instance per watch folder, recursive, that only reports paths.

    Calls ``report(watch, path)`` from its own thread for each path an event names (both
    ends of a move, every entry of a folder created or moved in, the watch folder itself
    when it is deleted, moved or unmounted, or when the kernel's event queue overflowed:
    the engine rescans it then). The engine owns what happens next.

    ``start()`` watches the folder itself and, unless ``walk=False``, every folder below
    it. The engine passes ``walk=False`` and lets its full scan place the watches
    (:func:`scan`'s ``on_folder`` is :meth:`add`), so a start-up walks the tree once, not
    twice: each folder is watched before it is listed, so nothing written there after the
    listing goes unseen. Folders created or moved in later are watched (and listed) by
    this thread. A watch that cannot be placed for lack of kernel resources (ENOSPC:
    ``fs.inotify.max_user_watches``) ends the watcher (``alive`` turns false, ``error``
    says why): a folder watched in part must not vouch for what it cannot see.

    The inotify calls are watchdog's own ctypes bindings (``watchdog.observers.inotify_c``,
    the dependency the project already has for filesystem events); the recursion, which
    watchdog's observer does by walking the whole tree again in its own thread, is ours.
    """

    def __init__(self, watch: str, report: Callable[[str, str], None]) -> None:
        self.watch = watch
        self._report = report
        self._observer: _InotifyThread | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"NativeWatcher({self.watch!r}, alive={self.alive})"

    def start(self, *, walk: bool = True) -> None:
        """Start watching; raises ``OSError`` (e.g. ENOSPC: inotify watch limit) on failure."""
        thread = _InotifyThread(self.watch, self._report)
        try:
            thread.add(self.watch, root=True)
            if walk:
                thread.add_tree(self.watch)
                if thread.error is not None:
                    raise thread.error
        except BaseException:
            thread.close()
            raise
        thread.start()
        with self._lock:
            self._observer = thread

    def add(self, folder: str) -> None:
        """Watch ``folder`` (a folder below the watch folder, about to be listed)."""
        observer = self._observer
        if observer is not None:
            observer.add(folder)

    @property
    def error(self) -> OSError | None:
        """Why a watch could not be placed (the watcher then stops), else None."""
        observer = self._observer
        return None if observer is None else observer.error

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


_EVENT = struct.Struct("iIII")


class _InotifyThread(threading.Thread):
    """The inotify file descriptor of one watch folder, its watches, and the thread
    reading its events."""

    def __init__(self, watch: str, report: Callable[[str, str], None]) -> None:
        from watchdog.observers import inotify_c

        super().__init__(name=f"inotify {watch}", daemon=True)
        self._c = inotify_c
        k = inotify_c.InotifyConstants
        self._k = k
        self._mask = (
            k.IN_MODIFY | k.IN_ATTRIB | k.IN_CLOSE_WRITE | k.IN_MOVED_FROM | k.IN_MOVED_TO
            | k.IN_CREATE | k.IN_DELETE | k.IN_DELETE_SELF | k.IN_MOVE_SELF
            | k.IN_DONT_FOLLOW | k.IN_ONLYDIR
        )  # fmt: skip
        self.watch = watch
        self._report = report
        fd = inotify_c.inotify_init()
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        os.set_inheritable(fd, False)
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        self._paths: dict[int, str] = {}  # wd -> folder path
        self._wds: dict[str, int] = {}  # folder path -> wd
        self._root_wd = -1
        self._stopping = False
        self._closed = False
        self.error: OSError | None = None

    # -- watches (any thread) ---------------------------------------------------------

    def add(self, folder: str, *, root: bool = False) -> bool:
        """Watch ``folder``; False when it cannot be (gone, not a folder, unreadable).
        Lack of kernel resources is remembered in ``error`` and ends the thread."""
        wd = self._c.inotify_add_watch(self._fd, os.fsencode(folder), self._mask)
        if wd < 0:
            err = ctypes.get_errno()
            exc = OSError(err, f"cannot watch {folder}: {os.strerror(err)}")
            if root:
                raise exc
            if err in (errno.ENOSPC, errno.ENOMEM) and self.error is None:
                self.error = exc
                log.error("%s; events in %s are no longer watched", exc, self.watch)
                self.stop()
            return False
        with self._lock:
            old = self._paths.get(wd)
            if old is not None and old != folder:
                self._wds.pop(old, None)
            self._paths[wd] = folder
            self._wds[folder] = wd
            if root:
                self._root_wd = wd
        return True

    def add_tree(self, top: str, *, report: bool = False) -> None:
        """Watch every folder below ``top`` (each before it is listed); with ``report``,
        report every entry found (a folder just created or moved in)."""
        stack = [top]
        while stack and not self._stopping:
            folder = stack.pop()
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if report:
                            self._report(self.watch, entry.path)
                        try:
                            is_dir = entry.is_dir(follow_symlinks=False)
                        except OSError:
                            continue
                        if is_dir and self.add(entry.path):
                            stack.append(entry.path)
            except OSError:
                continue

    def _forget_tree(self, top: str) -> None:
        """Stop watching ``top`` and every folder below it (moved out, or moved within
        the tree: watched again at its new place)."""
        prefix = top + "/"
        with self._lock:
            gone = [(p, wd) for p, wd in self._wds.items() if p == top or p.startswith(prefix)]
            for path, wd in gone:
                del self._wds[path]
                self._paths.pop(wd, None)
        for _path, wd in gone:
            self._c.inotify_rm_watch(self._fd, self._c.WatchDescriptor(wd))

    # -- the thread -------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for fd in (self._fd, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while not self._stopping:
                ready = poller.poll()
                if self._stopping:
                    break
                if any(fd == self._fd for fd, _ in ready):
                    try:
                        buffer = os.read(self._fd, 256 * 1024)
                    except InterruptedError:
                        continue
                    self._handle(buffer)
        finally:
            self.close()

    def _handle(self, buffer: bytes) -> None:
        k, report, watch = self._k, self._report, self.watch
        offset, end = 0, len(buffer)
        while offset + 16 <= end:
            wd, mask, _cookie, length = _EVENT.unpack_from(buffer, offset)
            name = buffer[offset + 16 : offset + 16 + length].rstrip(b"\0")
            offset += 16 + length
            if mask & k.IN_Q_OVERFLOW:
                log.warning("%s: inotify queue overflowed, events lost: rescanning", watch)
                report(watch, watch)  # the engine rescans; the scan places any watch missing
                continue
            with self._lock:
                folder = self._paths.get(wd)
                if mask & k.IN_IGNORED:
                    if folder is not None:
                        del self._paths[wd]
                        if self._wds.get(folder) == wd:
                            del self._wds[folder]
                    folder = None
            if folder is None:
                continue  # a watch removed (or moved out) with its events still queued
            if not name:
                # The watched folder itself: only the watch folder's own fate matters (a
                # subfolder deleted or moved has its event in its parent).
                gone = k.IN_DELETE_SELF | k.IN_MOVE_SELF | k.IN_UNMOUNT
                if wd == self._root_wd and mask & gone:
                    report(watch, watch)
                continue
            path = os.path.join(folder, os.fsdecode(name))
            if mask & k.IN_ISDIR:
                if mask & (k.IN_MODIFY | k.IN_ATTRIB):
                    continue  # a folder's own metadata: its entries have their events
                if mask & k.IN_MOVED_FROM:
                    self._forget_tree(path)
                elif mask & (k.IN_CREATE | k.IN_MOVED_TO):
                    report(watch, path)
                    if self.add(path):
                        self.add_tree(path, report=True)
                    continue
            report(watch, path)
