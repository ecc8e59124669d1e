"""Checksum throughput: ingest's reader (``ingest.hashing.hash_files``) against ``md5sum``.

One file of N MiB of random bytes, read once first so both read it from the page cache
(what is measured is hashing and reading, not the disk). Then ``md5sum FILE`` and
``hash_files("md5", ...)`` take turns, ROUNDS times each, in the same run; the best of each
is compared: MiB/s of ingest over MiB/s of md5sum, target >= 0.9. The digests must agree.
sha256 and xxh64 (when the xxhash package is there) are timed too, for the record.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from ingest.hashing import BLOCK_BYTES, hash_files, xxh64_available

from .common import Result, workdir

NAME = "hashing"
SIZES = {"full": 1024, "quick": 64}  # MiB
ROUNDS = 5
TARGET_RATIO = 0.9
MIB = 1024 * 1024


def _make(path: Path, mib: int) -> None:
    with path.open("wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))


def _md5sum(tool: str, path: Path) -> tuple[float, str]:
    began = time.perf_counter()
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - began, out.split()[0]


def _ours(algorithm: str, path: Path) -> tuple[float, str]:
    began = time.perf_counter()
    found = hash_files(algorithm, str(path.parent), [path.name])
    return time.perf_counter() - began, found.digests[path.name]


def run(size: int) -> Result:
    tool = shutil.which("md5sum")
    if tool is None:
        return Result(NAME, {"mib": size}, {}, {}, None, f">= {TARGET_RATIO}x md5sum", None,
                      ["md5sum not found: nothing to compare with"])  # fmt: skip
    with workdir(NAME) as root:
        path = root / "media.bin"
        _make(path, size)
        _ours("md5", path)  # into the page cache
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(ROUNDS):
            seconds, reference = _md5sum(tool, path)
            theirs.append(seconds)
            seconds, digest = _ours("md5", path)
            ours.append(seconds)
            if digest != reference:
                raise AssertionError(f"md5 differs: md5sum {reference}, ingest {digest}")
        others = {"sha256": min(_ours("sha256", path)[0] for _ in range(2))}
        if xxh64_available():
            others["xxh64"] = min(_ours("xxh64", path)[0] for _ in range(2))
    ours_rate = size / min(ours)
    their_rate = size / min(theirs)
    ratio = ours_rate / their_rate
    figures: dict[str, float] = {"md5_mib_s": round(ours_rate, 1)}
    figures.update({f"{k}_mib_s": round(size / v, 1) for k, v in others.items()})
    return Result(
        name=NAME,
        size={"mib": size, "block_kib": BLOCK_BYTES // 1024, "rounds": ROUNDS},
        figures=figures,
        baseline={"md5sum_mib_s": round(their_rate, 1)},
        ratio=round(ratio, 2),
        target=f">= {TARGET_RATIO}x md5sum (MiB/s, same file, page cache)",
        met=ratio >= TARGET_RATIO,
    )
