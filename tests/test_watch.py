"""Scanning and native watching on a real filesystem."""

from __future__ import annotations

import errno
import os
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from ingest import watch
from ingest.watch import (
    NativeWatcher,
    filesystem_type,
    ignored_name,
    pack,
    resolve_observer,
    scan,
    unpack,
)

from .support.wait import wait_for
from .support.watches import refuse_watches


def test_scan_sees_regular_files_only(tmp_path: Path) -> None:
    (tmp_path / "a.mxf").write_bytes(b"x" * 10)
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "sub" / "deep" / "b.mov").write_bytes(b"y" * 3)
    (tmp_path / "empty.dat").touch()
    (tmp_path / "clip.mxf.part").write_bytes(b"partial")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "c.mxf").write_bytes(b"z")
    (tmp_path / "Thumbs.db").write_bytes(b"t")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.mxf"
    outside.write_bytes(b"secret")
    (tmp_path / "link.mxf").symlink_to(outside)
    (tmp_path / "dirlink").symlink_to(tmp_path.parent)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    try:
        result = scan(tmp_path)
    finally:
        sock.close()
        outside.unlink()
    assert set(result.files) == {"a.mxf", "sub/deep/b.mov", "empty.dat"}
    assert unpack(result.files["a.mxf"]) == (10, (tmp_path / "a.mxf").stat().st_mtime_ns)
    assert result.count == 3
    assert set(result.skipped) == {"link.mxf", "dirlink", "dangling", "fifo", "sock"}
    assert "symlink" in result.skipped["link.mxf"]
    assert result.dev == tmp_path.stat().st_dev


def test_scan_of_a_missing_root_raises_instead_of_reporting_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        scan(tmp_path / "gone")


def test_scan_of_a_prefix(tmp_path: Path) -> None:
    (tmp_path / "dpx").mkdir()
    (tmp_path / "dpx" / "f1.dpx").write_bytes(b"1")
    (tmp_path / "other.mxf").write_bytes(b"2")
    assert set(scan(tmp_path, prefix="dpx").files) == {"dpx/f1.dpx"}


def test_ignored_names() -> None:
    for name in (".x", "a.part", "a.tmp", "a.crdownload", "~$doc.docx", "Thumbs.db", "._a"):
        assert ignored_name(name), name
    for name in ("a.mxf", "part", "tmp.mov", "a~$b"):
        assert not ignored_name(name), name


def test_filesystem_type_reads_the_mount_table(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "rootfs / ext4 rw 0 0\n"
        "nas:/export /mnt/nas nfs4 rw 0 0\n"
        "//srv/share /mnt/nas/smb cifs rw 0 0\n"
        "x /mnt/with\\040space fuse.sshfs rw 0 0\n"
    )
    assert filesystem_type("/mnt/nas/news/a", str(mounts)) == "nfs4"
    assert filesystem_type("/mnt/nas/smb/x", str(mounts)) == "cifs"
    assert filesystem_type("/mnt/nasty", str(mounts)) == "ext4"
    assert filesystem_type("/mnt/with space/x", str(mounts)) == "fuse.sshfs"
    assert filesystem_type("/", str(tmp_path / "no-such-file")) == "unknown"


def test_resolve_observer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def rules(*settings: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(observer=s) for s in settings]

    here = resolve_observer(tmp_path, rules("auto"))
    assert here.kind in ("native", "polling") and here.why
    assert here.fstype == filesystem_type(tmp_path)
    monkeypatch.setattr(watch, "filesystem_type", lambda path, mounts="": "nfs4")
    share = resolve_observer(tmp_path, rules("auto"))
    assert share == watch.Observer(
        "polling", "nfs4 is a network or FUSE filesystem: inotify cannot see it", "nfs4"
    )
    forced = resolve_observer(tmp_path, rules("native"))
    assert (forced.kind, forced.why) == ("native", 'forced by the rule (observer = "native")')
    assert forced.blind == share.why  # what the doctor warns of
    assert resolve_observer(tmp_path, rules("native", "polling")).kind == "polling"
    assert resolve_observer(tmp_path, rules("native", "auto")).kind == "polling"
    monkeypatch.setattr(watch, "filesystem_type", lambda path, mounts="": "ext4")
    local = resolve_observer(tmp_path, rules("polling", "auto"))
    assert (local.kind, local.blind) == ("polling", "")
    assert resolve_observer(tmp_path, rules("auto", "auto")) == watch.Observer(
        "native", "ext4 is local", "ext4"
    )


def test_native_watcher_reports_creations_moves_and_deep_folders(tmp_path: Path) -> None:
    seen: list[str] = []
    lock = threading.Lock()

    def report(watch: str, path: str) -> None:
        with lock:
            seen.append(path)

    watcher = NativeWatcher(str(tmp_path), report)
    watcher.start()
    try:
        assert watcher.alive
        (tmp_path / "a.mxf").write_bytes(b"x")
        wait_for(lambda: str(tmp_path / "a.mxf") in seen)
        (tmp_path / "new" / "deeper").mkdir(parents=True)
        (tmp_path / "new" / "deeper" / "b.dpx").write_bytes(b"x")
        (tmp_path / "a.mxf").rename(tmp_path / "renamed.mxf")
        wait_for(lambda: str(tmp_path / "renamed.mxf") in seen)
        wait_for(lambda: any(p.startswith(str(tmp_path / "new")) for p in seen))
    finally:
        watcher.stop()
    assert not watcher.alive


def _recorder() -> tuple[list[str], object]:
    seen: list[str] = []
    lock = threading.Lock()

    def report(watch: str, path: str) -> None:
        with lock:
            seen.append(path)

    return seen, report


def test_the_engines_scan_places_the_watches_of_a_watcher_started_without_a_walk(
    tmp_path: Path,
) -> None:
    """The engine starts its watcher on the folder alone and lets its full scan watch
    every folder below, each before it is listed: one walk of the tree, not two."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    seen, report = _recorder()
    watcher = NativeWatcher(str(tmp_path), report)  # type: ignore[arg-type]
    watcher.start(walk=False)
    try:
        offered: list[str] = []

        def on_folder(folder: str) -> None:
            offered.append(folder)
            watcher.add(folder)

        scan(tmp_path, on_folder=on_folder)
        assert sorted(offered) == [str(tmp_path / "a"), str(tmp_path / "a" / "b")]
        (tmp_path / "a" / "b" / "deep.mxf").write_bytes(b"x")
        wait_for(lambda: str(tmp_path / "a" / "b" / "deep.mxf") in seen)
    finally:
        watcher.stop()


def test_a_started_watcher_watches_folders_already_there_and_follows_folder_moves(
    tmp_path: Path,
) -> None:
    (tmp_path / "old" / "inner").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    watch_root = tmp_path / "w"
    watch_root.mkdir()
    (tmp_path / "old").rename(watch_root / "old")
    seen, report = _recorder()
    watcher = NativeWatcher(str(watch_root), report)  # type: ignore[arg-type]
    watcher.start()
    try:
        (watch_root / "old" / "inner" / "a.mxf").write_bytes(b"x")
        wait_for(lambda: str(watch_root / "old" / "inner" / "a.mxf") in seen)
        # Renamed within the tree: events below it name its new place, never the old one.
        (watch_root / "old").rename(watch_root / "new")
        wait_for(lambda: str(watch_root / "new") in seen and str(watch_root / "old") in seen)
        wait_for(lambda: str(watch_root / "new" / "inner" / "a.mxf") in seen)
        (watch_root / "new" / "inner" / "b.mxf").write_bytes(b"x")
        wait_for(lambda: str(watch_root / "new" / "inner" / "b.mxf") in seen)
        # Moved out: nothing that happens there is reported any more.
        (watch_root / "new").rename(tmp_path / "outside" / "gone")
        (tmp_path / "outside" / "gone" / "inner" / "c.mxf").write_bytes(b"x")
        (watch_root / "marker.mxf").write_bytes(b"x")
        wait_for(lambda: str(watch_root / "marker.mxf") in seen)
        assert not [p for p in seen if p.endswith("c.mxf")]
        # A folder moved in with content: watched, and everything in it reported.
        (tmp_path / "outside" / "gone").rename(watch_root / "back")
        wait_for(lambda: str(watch_root / "back" / "inner" / "c.mxf") in seen)
        (watch_root / "back" / "inner" / "d.mxf").write_bytes(b"x")
        wait_for(lambda: str(watch_root / "back" / "inner" / "d.mxf") in seen)
    finally:
        watcher.stop()
    assert not watcher.alive


def test_a_queue_overflow_and_the_folders_own_removal_report_the_folder_itself(
    tmp_path: Path,
) -> None:
    """The engine rescans the watch folder when the watcher names the folder itself."""
    from watchdog.observers.inotify_c import InotifyConstants as K

    from ingest.watch import _InotifyThread

    seen, report = _recorder()
    thread = _InotifyThread(str(tmp_path), report)  # type: ignore[arg-type]
    try:
        thread.add(str(tmp_path), root=True)
        thread._handle(watch._EVENT.pack(-1, K.IN_Q_OVERFLOW, 0, 0))
        assert seen == [str(tmp_path)]
    finally:
        thread.close()
    seen2, report2 = _recorder()
    root = tmp_path / "share"
    root.mkdir()
    watcher = NativeWatcher(str(root), report2)  # type: ignore[arg-type]
    watcher.start()
    try:
        root.rmdir()
        wait_for(lambda: str(root) in seen2)
    finally:
        watcher.stop()


def test_a_folder_that_cannot_be_watched_for_lack_of_watches_ends_the_watcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC (fs.inotify.max_user_watches) on a folder below: a watcher that sees only
    part of the tree must not go on as if it saw it all."""
    refuse_watches(monkeypatch, b"/full")
    (tmp_path / "full").mkdir()
    _seen, report = _recorder()
    with pytest.raises(OSError, match="No space left"):
        NativeWatcher(str(tmp_path), report).start()  # type: ignore[arg-type]
    watcher = NativeWatcher(str(tmp_path), report)  # type: ignore[arg-type]
    watcher.start(walk=False)
    try:
        assert watcher.alive and watcher.error is None
        scan(tmp_path, on_folder=watcher.add)
        assert watcher.error is not None and watcher.error.errno == errno.ENOSPC
        wait_for(lambda: not watcher.alive)
    finally:
        watcher.stop()


def _counting_scandir(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    listed: list[str] = []
    real = os.scandir

    # (_ScandirIterator is typeshed's name for what scandir returns; annotations are not
    # evaluated at run time here)
    def counting(path: str) -> os._ScandirIterator[str]:
        listed.append(os.fspath(path))
        return real(path)

    # ingest.watch's os is this os (ingest.watch does not re-export it for mypy)
    monkeypatch.setattr(os, "scandir", counting)
    return listed


def test_a_poll_lists_a_folder_again_only_once_its_stamp_moved_but_lstats_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "one.mxf").write_bytes(b"1")
    (tmp_path / "b" / "two.mxf").write_bytes(b"22")
    listed = _counting_scandir(monkeypatch)
    first = scan(tmp_path, listings={})
    second = scan(tmp_path, listings=first.listings)
    # The first listing of a stamp is never trusted (an entry may have come in the same
    # clock tick, after it); the one made a poll later is.
    assert len(listed) == 6
    listed.clear()
    third = scan(tmp_path, listings=second.listings)
    assert listed == [] and third.files == second.files
    # A file rewritten in place: its folder's stamp does not move, its own size does.
    with open(tmp_path / "b" / "two.mxf", "ab") as fh:
        fh.write(b"more")
    fourth = scan(tmp_path, listings=third.listings)
    assert listed == [] and unpack(fourth.files["b/two.mxf"])[0] == 6
    # An entry added: that folder (only) is listed again.
    (tmp_path / "a" / "three.mxf").write_bytes(b"3")
    fifth = scan(tmp_path, listings=fourth.listings)
    assert listed == [str(tmp_path / "a")] and "a/three.mxf" in fifth.files
    # An entry added and the folder's mtime set back (touch -d): its ctime moved.
    listed.clear()
    sixth = scan(tmp_path, listings=scan(tmp_path, listings=fifth.listings).listings)
    assert listed == [str(tmp_path / "a")]
    listed.clear()
    st = os.stat(tmp_path / "b")
    (tmp_path / "b" / "four.mxf").write_bytes(b"4")
    os.utime(tmp_path / "b", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "b/four.mxf" in scan(tmp_path, listings=sixth.listings).files
    # A folder removed, another made in its place with the same name.
    for name in os.listdir(tmp_path / "a"):
        os.unlink(tmp_path / "a" / name)
    os.rmdir(tmp_path / "a")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "new.mxf").write_bytes(b"n")
    assert sorted(scan(tmp_path, listings=sixth.listings).files) == [
        "a/new.mxf", "b/four.mxf", "b/two.mxf"
    ]  # fmt: skip


def test_a_listing_made_when_its_stamp_was_first_seen_is_not_reused(tmp_path: Path) -> None:
    """The race the "one poll later" rule closes: an entry created just after a folder
    was listed, within the same tick of the filesystem's clock, leaves its stamp as it
    was. A listing that missed it (forged here) must not be trusted on the next poll."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "old.mxf").write_bytes(b"o")
    (tmp_path / "a" / "raced.mxf").write_bytes(b"r")
    first = scan(tmp_path, listings={})
    assert first.listings is not None
    stamp, stable, names = first.listings[str(tmp_path / "a")]
    assert not stable
    first.listings[str(tmp_path / "a")] = (
        stamp,
        stable,
        "\0".join(n for n in names.split("\0") if "raced" not in n),
    )
    second = scan(tmp_path, listings=first.listings)
    assert "a/raced.mxf" in second.files
    assert "a/raced.mxf" in scan(tmp_path, listings=second.listings).files


def test_only_local_filesystems_folder_mtimes_are_trusted() -> None:
    assert {"ext4", "xfs", "btrfs", "tmpfs"} <= watch.TRUSTED_FOLDER_MTIMES
    assert not {"cifs", "smb3", "nfs", "nfs4", "fuse.sshfs", "vfat", "unknown"} & (
        watch.TRUSTED_FOLDER_MTIMES
    )


def test_a_scan_given_what_the_ledger_settled_keeps_only_what_differs(tmp_path: Path) -> None:
    """A start-up over files already archived holds no second entry per file: the files
    found as settled are only counted, and what the sweep and the engine ask of the scan
    (was this path found? which settled paths were not?) is answered without them."""
    (tmp_path / "same.mxf").write_bytes(b"s")
    (tmp_path / "grown.mxf").write_bytes(b"g")
    (tmp_path / "dpx").mkdir()
    (tmp_path / "dpx" / "f1.dpx").write_bytes(b"1")
    st = os.stat(tmp_path / "same.mxf")
    settled = {
        "same.mxf": pack(st.st_size, st.st_mtime_ns), "grown.mxf": pack(0, 0),
        "live.mxf": None, "gone.mxf": pack(1, 1), "dpx": pack(1, 1),
    }  # fmt: skip
    (tmp_path / "new.mxf").write_bytes(b"n")
    found = scan(tmp_path, known=settled)
    assert found.files == {} and found.count == 4
    assert found.changed["grown.mxf"] == pack(1, os.stat(tmp_path / "grown.mxf").st_mtime_ns)
    # What a poll looks at: the files not as they were, and only those.
    assert sorted(found.changed) == ["dpx/f1.dpx", "grown.mxf", "new.mxf"]
    # (a folder drop's name is never a file: the sweep looks at its folder)
    assert set(found.missing) == {"live.mxf", "gone.mxf", "dpx"}
    assert [p for p in ("same.mxf", "grown.mxf", "new.mxf", "dpx/f1.dpx") if found.found(p)] == [
        "same.mxf", "grown.mxf", "new.mxf", "dpx/f1.dpx"
    ]  # fmt: skip
    assert not any(found.found(p) for p in ("live.mxf", "gone.mxf", "dpx", "never.mxf"))
    # A file set's rules read every file (``every``); a scan given nothing has them all.
    every = scan(tmp_path, known=settled, every=True)
    assert sorted(every.files) == ["dpx/f1.dpx", "grown.mxf", "new.mxf", "same.mxf"]
    assert every.files["same.mxf"] == settled["same.mxf"] and every.missing == found.missing
    plain = scan(tmp_path)
    assert plain.files is plain.changed and sorted(plain.changed) == sorted(every.files)


def test_packed_values_keep_size_and_mtime_apart() -> None:
    values = {pack(s, m) for s in (0, 1, 2**40) for m in (-(2**63), -1, 0, 1, 2**63 - 1)}
    assert len(values) == 15
    assert all(unpack(pack(s, m)) == (s, m) for s in (0, 7, 2**50) for m in (-5, 0, 2**62))
