"""Checksums on the engine's behalf: one hashing thread, answers on the engine's queue.

A settled drop whose rule has ``checksum`` is hashed here before its intent
(:func:`ingest.hashing.hash_files`): on a thread of its own, so a terabyte never stalls
the loop, and only one at a time, so hashing competes with the copies still landing in
the watch folders as little as ``[engine] hash_mb_per_second`` allows. The answer, a
:class:`HashDone`, goes on the engine's queue like a DIVA answer; the token tells a
stale one (the drop changed and was hashed again, or memory was rebuilt) from the one
awaited.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..client import ObjectInfo
from ..hashing import Changed, Hashed, RateLimit, hash_files
from .dispatch import Job, Key, Outcome

__all__ = ["HashDone", "Hasher", "Verdict", "Verified", "compare", "verify"]

log = logging.getLogger("ingest.engine")


@dataclass(frozen=True)
class HashDone:
    """The checksums of a drop's components, or why there are none.

    ``changed`` is True when a file changed or vanished while it was read (the drop
    settles again); ``error`` says why a file could not be read at all.
    """

    key: Key
    token: int
    hashed: Hashed | None = None
    changed: bool = False
    error: str = ""


class Hasher:
    """Hashes drops one at a time on its own thread; each answer goes to ``deliver``."""

    def __init__(self, deliver: Callable[[HashDone], None], mb_per_second: float) -> None:
        self._deliver = deliver
        self._limit = RateLimit(mb_per_second)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-hash")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        #: bytes read so far of each drop being hashed (for the status snapshot)
        self._progress: dict[Key, tuple[int, int]] = {}

    def start(
        self, key: Key, token: int, algorithm: str, root: str, components: Sequence[str],
        total: int,
    ) -> None:  # fmt: skip
        """Hash ``components`` (relpaths below ``root``); ``total`` bytes expected."""
        with self._lock:
            self._progress[key] = (0, total)

        def progress(done: int) -> None:
            with self._lock:
                self._progress[key] = (done, total)

        def run() -> None:
            try:
                found = hash_files(
                    algorithm, root, components, limit=self._limit, progress=progress,
                    stop=self._stop,
                )  # fmt: skip
                answer = HashDone(key, token, found)
            except Changed as exc:
                answer = HashDone(key, token, changed=True, error=str(exc))
            except OSError as exc:
                answer = HashDone(key, token, error=f"cannot read to hash: {exc}")
            except Exception as exc:  # a bug must not leave the drop waiting forever
                log.exception("hashing %s crashed", key[1])
                answer = HashDone(key, token, error=f"internal error while hashing: {exc!r}")
            finally:
                with self._lock:
                    self._progress.pop(key, None)
            self._deliver(answer)

        self._pool.submit(run)

    def progress(self) -> dict[Key, tuple[int, int]]:
        """(bytes read, bytes in all) of each drop being hashed now."""
        with self._lock:
            return dict(self._progress)

    def shutdown(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------
# after completion: what DIVA says it stored


@dataclass(frozen=True)
class Verdict:
    """Our checksums against those DIVA's object info reports for the same files.

    ``mismatches``: component -> {"ours", "diva"} for each file whose checksums differ;
    ``compared``: how many files DIVA gave a checksum of our algorithm for (0: nothing
    to compare, DIVA does not report them).
    """

    drop_id: int
    algorithm: str
    compared: int
    mismatches: dict[str, dict[str, str]]


class Verified(Outcome[Verdict]):
    """DIVA's checksums compared with ours, after a drop completed."""


def _algorithm(diva_type: str | None) -> str | None:
    if diva_type is None:
        return None
    name = diva_type.lower().replace("-", "").replace("_", "")
    return {"md5": "md5", "sha256": "sha256", "xxh64": "xxh64", "xxhash64": "xxh64"}.get(name)


def compare(
    obj: ObjectInfo | None, drop_id: int, algorithm: str, ours: Mapping[str, str]
) -> Verdict:
    """Compare ``ours`` (component -> hex) with what ``obj`` reports. Only checksums DIVA
    labels with our algorithm count; a file DIVA names with its file path root in front
    is matched without it (DIVA versions differ, as in :func:`.dispatch.reconcile`)."""
    mismatches: dict[str, dict[str, str]] = {}
    compared = 0
    if obj is None:
        return Verdict(drop_id, algorithm, 0, {})
    root = obj.raw.get("filePathRoot")
    root = root.replace("\\", "/").strip("/") if isinstance(root, str) else ""
    mine = {name.strip("/"): digest for name, digest in ours.items()}
    for component in obj.components:
        if not component.checksum or _algorithm(component.checksum_type) != algorithm:
            continue
        name = component.name.replace("\\", "/").strip("/")
        if name not in mine and root:
            name = name.removeprefix(root + "/")
        if name not in mine:
            continue
        compared += 1
        if component.checksum.lower() != mine[name].lower():
            mismatches[name] = {"ours": mine[name], "diva": component.checksum.lower()}
    return Verdict(drop_id, algorithm, compared, mismatches)


def verify(
    key: Key, drop_id: int, name: str, collection: str, algorithm: str, ours: Mapping[str, str]
) -> Job[Verdict]:
    """The job asking DIVA for the completed object, to compare its checksums with ours."""
    return Job(
        Verified, key, 0,
        lambda client: compare(client.object_info(name, collection), drop_id, algorithm, ours),
    )  # fmt: skip
