"""Scanning and native watching on a real filesystem."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from ingest import watch
from ingest.watch import NativeWatcher, filesystem_type, ignored_name, resolve_observer, scan

from .support.wait import wait_for


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
    assert result.files["a.mxf"][0] == 10
    assert result.files["a.mxf"][1] == (tmp_path / "a.mxf").stat().st_mtime_ns
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
