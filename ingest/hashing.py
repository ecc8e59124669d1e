"""Checksums of a drop's files: streamed in large blocks, rate-limited, change-aware.

A rule's ``checksum`` (``md5``, ``sha256``, ``xxh64``) has every component of a settled
drop hashed before its intent. :func:`hash_files` runs on a worker thread (never the
engine's loop): it reads each file in :data:`BLOCK_BYTES` blocks, sleeps as needed to
stay under ``[engine] hash_mb_per_second``, and checks each file's size and mtime before
and after: a file that changed while it was read raises :class:`Changed`, and the engine
settles the drop again.

>>> import tempfile, os
>>> with tempfile.NamedTemporaryFile(delete=False) as f:
...     _ = f.write(b"abc")
>>> hash_files("md5", f.name.rsplit("/", 1)[0], [f.name.rsplit("/", 1)[1]]).digests
{...: '900150983cd24fb0d6963f7d28e17f72'}
>>> os.unlink(f.name)
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "ALGORITHMS",
    "BLOCK_BYTES",
    "Changed",
    "Hashed",
    "RateLimit",
    "hash_files",
    "new_hash",
    "xxh64_available",
]

#: the algorithms a rule may name
ALGORITHMS = ("md5", "sha256", "xxh64")
#: bytes read at a time: large enough that Python's per-call overhead is noise, small
#: enough that a block read is still in the CPU's cache when it is hashed (256 KiB beat
#: 1 MiB by about 10% in bench/hashing.py on a 2-core Xeon)
BLOCK_BYTES = 256 * 1024


class _Hash(Protocol):
    def update(self, data: Any, /) -> None: ...
    def hexdigest(self) -> str: ...


def xxh64_available() -> bool:
    """Whether ``xxh64`` can be used (the optional ``xxhash`` package is installed)."""
    try:
        import xxhash  # noqa: F401
    except ImportError:
        return False
    return True


def new_hash(algorithm: str) -> _Hash:
    """A fresh hash object for ``algorithm`` (one of :data:`ALGORITHMS`)."""
    if algorithm == "xxh64":
        try:
            import xxhash
        except ImportError:
            raise ValueError("xxh64 needs the xxhash package, which is not installed") from None
        return xxhash.xxh64()
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}")
    return hashlib.new(algorithm)


class Changed(Exception):
    """A file changed (or vanished) while it was being hashed."""


class RateLimit:
    """At most ``mb_per_second`` MB/s read across every thread sharing it (0: no limit)."""

    def __init__(self, mb_per_second: float) -> None:
        self.rate = mb_per_second * 1024 * 1024
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, n: int) -> None:
        """Account for ``n`` bytes just read, sleeping when ahead of the rate."""
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now) + n / self.rate
            wait = self._next - now - 0.1  # a short burst is allowed
        if wait > 0:
            time.sleep(wait)


@dataclass
class Hashed:
    """A drop's checksums: ``digests`` by component (its relpath), hex."""

    algorithm: str
    digests: dict[str, str] = field(default_factory=dict)
    bytes_read: int = 0
    seconds: float = 0.0


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path, follow_symlinks=False)
    return st.st_size, st.st_mtime_ns


def hash_files(
    algorithm: str,
    root: str,
    components: Sequence[str],
    *,
    limit: RateLimit | None = None,
    progress: Callable[[int], Any] | None = None,
    stop: threading.Event | None = None,
) -> Hashed:
    """Hash each of ``components`` (relpaths below ``root``) with ``algorithm``.

    ``progress`` is told the bytes read so far after each block. Raises :class:`Changed`
    when a file changes or vanishes while being read, :class:`OSError` when one cannot be
    read at all.
    """
    started = time.monotonic()
    out = Hashed(algorithm)
    buffer = bytearray(BLOCK_BYTES)
    view = memoryview(buffer)
    for component in components:
        path = os.path.join(root, *component.split("/"))
        try:
            before = _stat(path)
            h = new_hash(algorithm)
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(buffer):
                    h.update(view[:n])
                    out.bytes_read += n
                    if limit is not None:
                        limit.take(n)
                    if progress is not None:
                        progress(out.bytes_read)
                    if stop is not None and stop.is_set():
                        raise Changed("stopped")
            after = _stat(path)
        except FileNotFoundError:
            raise Changed(f"{component} vanished while it was hashed") from None
        if before != after:
            raise Changed(f"{component} changed while it was hashed")
        out.digests[component] = h.hexdigest()
    out.seconds = time.monotonic() - started
    return out
