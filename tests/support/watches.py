"""Faults of the kernel's inotify, for the native watcher's tests."""

from __future__ import annotations

import ctypes
import errno

import pytest
from watchdog.observers import inotify_c


def refuse_watches(monkeypatch: pytest.MonkeyPatch, suffix: bytes) -> None:
    """Make ``inotify_add_watch`` fail with ENOSPC (``fs.inotify.max_user_watches``
    reached) for every folder whose path ends with ``suffix``."""
    real = inotify_c.inotify_add_watch

    def add_watch(fd: int, path: bytes, mask: int) -> int:
        if path.endswith(suffix):
            ctypes.set_errno(errno.ENOSPC)
            return -1
        return real(fd, path, mask)

    monkeypatch.setattr(inotify_c, "inotify_add_watch", add_watch)
