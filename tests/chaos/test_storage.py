"""Storage trouble: the watch folder's mount blips, and the ledger's disk fills up or is
read-only.

Real mounts, not mocks (the suite runs as root in its sandbox). Where ``mount`` is not
allowed these tests skip, except in CI (``CI`` set), where they fail: the mount blip is
the only test that catches a broken blip guard, so CI must run it:

- mount blip: the daemon watches a bind mount of the NAS folder; the mount goes away
  (the mount point reads empty, on another device) and comes back while drops are at
  every stage. Nothing is treated as vanished, nothing is lost or archived twice.
- ledger disk full: the ledger lives on a small tmpfs that the test fills. The daemon
  stops submitting and says why; drops that arrive meanwhile reach DIVA only after the
  disk has room again; every archive request DIVA received has its intent row committed
  before it.
- ledger read-only: a running daemon's ledger cannot be flipped read-only under it (the
  kernel refuses ``remount,ro`` with EBUSY while the file is open for writing), so the
  case that happens is a start on a read-only disk: the daemon refuses with the reason
  and exit code 8, and starts normally once the disk is writable.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ..support.deployment import Deployment
from ..support.wait import wait_for
from ..unprivileged import cannot_run_here
from .harness import (
    Counts,
    Daemon,
    Diva,
    Drops,
    chaos_seed,
    scale,
    sleep_until,
    verify,
    wait_all_final,
)


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def can_mount(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        sh("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
    except (OSError, subprocess.CalledProcessError) as exc:
        why = getattr(exc, "stderr", b"") or str(exc)
        cannot_run_here(f"mount is not allowed here ({why!r}); it needs root (CAP_SYS_ADMIN)")
    sh("umount", str(probe))


@contextlib.contextmanager
def mounted(*args: str, target: Path) -> Any:
    sh("mount", *args, str(target))
    try:
        yield target
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            sh("umount", "-l", str(target))


def test_watch_folder_mount_blip(can_mount: None, deployment: Deployment, tmp_path: Path) -> None:
    seed = chaos_seed()
    counts = Counts("mount_blip", seed)
    print(f"CHAOS mount_blip seed={seed}")
    dep = deployment
    seen = tmp_path / "mnt" / "news"
    seen.mkdir(parents=True)
    diva = Diva(tmp_path / "diva", dep.watch.parent, seed, intents=dep.intents).start()
    daemon = Daemon(dep)
    n_drops = int(scale(40, 200))
    write_seconds = scale(10, 60)
    try:
        with mounted("--bind", str(dep.watch), target=seen):
            dep.write_config(url=diva.url, max_attempts=3)
            dep.rule("news", watch=str(seen), settle_seconds=1.0)
            diva.knobs(request_seconds=2.0)
            drops = Drops(dep, seed, folders=False, seen_as=str(seen))
            daemon.start()
            t0 = time.monotonic()

            def writer() -> None:
                for i in range(n_drops):
                    sleep_until(t0 + write_seconds * i / n_drops)
                    drops.write(i)  # into the NAS folder itself: DIVA's side of the share

            thread = threading.Thread(target=writer, daemon=True)
            thread.start()
            wait_for(
                lambda: any(r["state"] in ("SUBMITTED", "RUNNING") for r in dep.rows()), timeout=30
            )
            sh("umount", "-l", str(seen))  # the share drops: an empty mount point remains
            counts.faults["blips"] = 1
            log = dep.root / "daemon1.log"
            wait_for(lambda: "pausing" in log.read_text(), timeout=15)
            sleep_until(time.monotonic() + 3.0)  # stay away longer than the settle window
            sh("mount", "--bind", str(dep.watch), str(seen))
            thread.join(timeout=write_seconds + 30)
            wait_all_final(dep, drops, ("COMPLETED",), timeout=scale(60, 300))
            assert daemon.stop() == 0
        verify(dep, diva, drops, counts)
        states = {r["state"] for r in dep.rows()}
        assert states == {"COMPLETED"}, "the blip made something look vanished"
        logs = daemon.logs()
        assert "pausing" in logs and "resuming" in logs
    finally:
        if daemon.proc is not None:
            daemon.kill()
        diva.stop()


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte; the filler file's path."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_ledger_disk_full(can_mount: None, deployment: Deployment, tmp_path: Path) -> None:
    seed = chaos_seed()
    counts = Counts("ledger_disk_full", seed)
    print(f"CHAOS ledger_disk_full seed={seed}")
    dep = deployment
    disk = tmp_path / "ledgerfs"
    disk.mkdir()
    diva = Diva(tmp_path / "diva", dep.watch.parent, seed, intents=dep.intents).start()
    daemon = Daemon(dep)
    try:
        with mounted("-t", "tmpfs", "-o", "size=8m", "tmpfs", target=disk):
            dep.ledger_path = disk / "ingest" / "ledger.db"
            dep.write_config(url=diva.url, max_attempts=3)
            drops = Drops(dep, seed, folders=False)
            drops.rules(settle_seconds=0.3)
            daemon.start()
            for i in range(10):
                drops.write(i)
            wait_all_final(dep, drops, ("COMPLETED",), timeout=30)
            filler = fill(disk)
            log = dep.root / "daemon1.log"
            # New drops: the engine must record them before anything else, and cannot.
            for i in range(10, 20):
                drops.write(i)
            wait_for(lambda: "disk is full" in log.read_text(), timeout=30)
            counts.faults["disk_full"] = 1
            # It keeps failing, and saying so, while the disk stays full; nothing new
            # reaches DIVA in the meantime.
            sleep_until(time.monotonic() + 3.0)  # a stretch of "disk full", by design
            names = {f"c{i:04d}" for i in range(10, 20)}
            assert not [r for r in diva.archive_requests() if r[1] in names]
            assert "not submitting until it recovers" in log.read_text()
            fixed_at = time.time()
            filler.unlink()
            wait_all_final(dep, drops, ("COMPLETED",), timeout=60)
            late = [r for r in diva.archive_requests() if r[1] in names]
            assert late and all(submitted > fixed_at for *_, submitted in late)
            assert daemon.stop() == 0
            verify(dep, diva, drops, counts)
    finally:
        if daemon.proc is not None:
            daemon.kill()
        diva.stop()


def test_ledger_on_a_read_only_disk(
    can_mount: None, deployment: Deployment, tmp_path: Path
) -> None:
    dep = deployment
    disk = tmp_path / "ledgerfs"
    disk.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=8m", "tmpfs", target=disk):
        dep.ledger_path = disk / "ledger.db"
        dep.write_config()
        dep.rule()
        (dep.watch / "first.mxf").write_bytes(b"before the disk turned read-only")
        proc = dep.daemon(log_name="first.log")
        try:
            dep.wait_state("first.mxf", "COMPLETED")
        finally:
            proc.terminate()
            assert proc.wait(timeout=30) == 0
        (dep.watch / "ro.mxf").write_bytes(b"read-only ledger")
        sh("mount", "-o", "remount,ro", str(disk))
        proc = dep.daemon(log_name="ro.log")
        assert proc.wait(timeout=60) == 8
        text = (dep.root / "ro.log").read_text()
        assert "ledger" in text and "read-only" in text.lower(), text
        assert (dep.watch / "ro.mxf").exists()
        assert [r["objectName"] for r in dep.archive_requests()] == ["first"]
        sh("mount", "-o", "remount,rw", str(disk))
        proc = dep.daemon(log_name="rw.log")
        try:
            dep.wait_state("ro.mxf", "COMPLETED")
        finally:
            proc.terminate()
            assert proc.wait(timeout=30) == 0
