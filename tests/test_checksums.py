"""Checksums on record (issue 14): hashing (streamed, rate-limited, change-aware), the
comparison with DIVA's object info, and the real daemon against the emulator: the ledger's
checksums equal hashlib's, and a checksum DIVA reports wrong is flagged."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xxhash

from ingest.engine.checksums import compare
from ingest.hashing import BLOCK_BYTES, Changed, RateLimit, hash_files
from ingest.wire import ObjectInfo

from .support.deployment import Deployment
from .support.wait import wait_for


def _files(root: Path) -> dict[str, bytes]:
    data = {
        "a.mxf": os.urandom(3 * BLOCK_BYTES + 17),
        "sub/b.wav": os.urandom(1000),
        "empty.txt": b"",
    }
    for name, content in data.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return data


@pytest.mark.parametrize("algorithm", ["md5", "sha256", "xxh64"])
def test_hashes_equal_the_reference_implementations(tmp_path: Path, algorithm: str) -> None:
    data = _files(tmp_path)
    found = hash_files(algorithm, str(tmp_path), list(data))
    for name, content in data.items():
        if algorithm == "xxh64":
            expected = xxhash.xxh64(content).hexdigest()
        else:
            expected = hashlib.new(algorithm, content).hexdigest()
        assert found.digests[name] == expected, name
    assert found.bytes_read == sum(len(c) for c in data.values())


def test_a_file_changing_while_hashed_is_reported(tmp_path: Path) -> None:
    data = _files(tmp_path)
    target = tmp_path / "a.mxf"

    def grow(done: int) -> None:
        if done == BLOCK_BYTES:  # after the first block: the copy is still going on
            with target.open("ab") as f:
                f.write(b"more")

    with pytest.raises(Changed, match=r"a\.mxf changed while it was hashed"):
        hash_files("md5", str(tmp_path), list(data), progress=grow)
    with pytest.raises(Changed, match="vanished"):
        hash_files("md5", str(tmp_path), ["gone.mxf"])


def test_the_rate_limit_holds_reading_back() -> None:
    limit = RateLimit(mb_per_second=20)
    started = time.monotonic()
    for _ in range(8):  # 8 MB at 20 MB/s: 0.4 s, less the burst allowed (0.1 s)
        limit.take(1024 * 1024)
    assert time.monotonic() - started >= 0.25
    unlimited = RateLimit(0)
    started = time.monotonic()
    for _ in range(1000):
        unlimited.take(1024 * 1024)
    assert time.monotonic() - started < 0.5


def test_compare_flags_only_checksums_of_our_algorithm() -> None:
    obj = ObjectInfo.from_wire(
        {
            "objectName": "clip", "collectionName": "NEWS", "filePathRoot": "/news",
            "components": [
                {"fileName": "news/a.mxf", "checksumType": "MD5", "checksum": "AA"},
                {"fileName": "b.wav", "checksumType": "MD5", "checksum": "bb"},
                {"fileName": "c.xml", "checksumType": "SHA1", "checksum": "zz"},
            ],
        }
    )  # fmt: skip
    ours = {"a.mxf": "aa", "b.wav": "b0", "c.xml": "cc"}
    verdict = compare(obj, 7, "md5", ours)
    assert verdict.compared == 2
    assert verdict.mismatches == {"b.wav": {"ours": "b0", "diva": "bb"}}
    assert compare(obj, 7, "sha256", ours).compared == 0
    assert compare(None, 7, "md5", ours).mismatches == {}


# -- the daemon -------------------------------------------------------------------------


def test_the_ledger_holds_each_components_checksum(deployment: Deployment) -> None:
    dep = deployment
    dep.rule(checksum="md5")
    dep.rule("dpx", watch=str(dep.watch.parent / "dpx"), mode="folder", match=["*"],
             object_name="{folder}", checksum="sha256", file_path_root="/dpx")  # fmt: skip
    clip = os.urandom(2 * BLOCK_BYTES + 5)
    (dep.watch / "clip.mxf").write_bytes(clip)
    frames = {f"SHOW/f{i}.dpx": os.urandom(50_000) for i in range(3)}
    dpx = dep.watch.parent / "dpx"
    (dpx / "SHOW").mkdir(parents=True, exist_ok=True)
    for name, content in frames.items():
        (dpx / name).write_bytes(content)
    dep.start()
    row = dep.wait_state("clip.mxf", "COMPLETED", "FAILED", "REJECTED")
    assert row["state"] == "COMPLETED", row["error"]
    assert row["checksum_algo"] == "md5"
    assert json.loads(row["checksums"]) == {"clip.mxf": hashlib.md5(clip).hexdigest()}
    # DIVA's own MD5s agree: nothing flagged.
    assert dep.stored()["clip"] == {"clip.mxf": hashlib.md5(clip).hexdigest()}
    assert row["checksum_mismatch"] is None
    folder = dep.wait_state("SHOW", "COMPLETED", "FAILED", "REJECTED")
    assert folder["state"] == "COMPLETED", folder["error"]
    assert folder["checksum_algo"] == "sha256"
    assert json.loads(folder["checksums"]) == {
        name: hashlib.sha256(content).hexdigest() for name, content in frames.items()
    }


def test_a_checksum_diva_reports_differently_is_flagged(deployment: Deployment) -> None:
    dep = deployment
    dep.rule(checksum="md5")
    dep.knobs(bad_checksum_rate=1)
    content = os.urandom(100_000)
    (dep.watch / "clip.mxf").write_bytes(content)
    dep.start()

    def flagged() -> dict[str, object] | None:
        rows = dep.rows("clip.mxf")
        return rows[-1] if rows and rows[-1]["checksum_mismatch"] else None

    row = wait_for(flagged, timeout=30)
    assert row["state"] == "COMPLETED"  # DIVA has it: the drop stays COMPLETED
    mismatch = json.loads(str(row["checksum_mismatch"]))
    ours = hashlib.md5(content).hexdigest()
    assert mismatch == {"clip.mxf": {"ours": ours, "diva": dep.stored()["clip"]["clip.mxf"]}}
    assert mismatch["clip.mxf"]["diva"] != ours

    # ``ingest status`` exits 1 while the mismatch is unacknowledged; ``ledger show``
    # and ``ledger export`` carry the checksums; ``ledger ack`` clears the alarm.
    dep.stop()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "ingest", *args, "--config", str(dep.config_path)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)

    status = cli("status", "--json")
    assert status.returncode == 1, status.stderr
    doc = json.loads(status.stdout)
    assert doc["checksum_mismatches"]["count"] == 1
    assert any("checksums DIVA reports differently" in p for p in doc["problems"])
    shown = cli("ledger", "show", str(row["id"]))
    assert ours in shown.stdout and "checksum_mismatch" in shown.stdout
    exported = json.loads(cli("ledger", "export", "--nl").stdout.splitlines()[0])
    assert json.loads(exported["checksums"]) == {"clip.mxf": ours}
    acked = cli("ledger", "ack", str(row["id"]))
    assert acked.returncode == 0, acked.stderr
    after = json.loads(cli("status", "--json").stdout)
    assert after["checksum_mismatches"]["count"] == 0 and after["healthy"], after["problems"]
    again = cli("ledger", "ack", str(row["id"]))
    assert again.returncode == 1 and "no unacknowledged checksum mismatch" in again.stderr


def slow_hashing(dep: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    """ "Large" drops scaled down to 1 MiB, progress every 0.2 s, and hashing held to
    2 MB/s, so that hashing a few MiB takes seconds a test can watch."""
    from ingest import defaults

    monkeypatch.setattr(defaults, "HASH_PROGRESS_MIN_BYTES", 1024 * 1024)
    monkeypatch.setattr(defaults, "HASH_PROGRESS_SECONDS", 0.2)
    with dep.config_path.open("a") as f:
        f.write("hash_mb_per_second = 2\n")  # [engine] is the config's last table


def test_a_large_drop_shows_its_hashing_progress_and_is_rate_limited(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = deployment
    slow_hashing(dep, monkeypatch)
    dep.rule(checksum="sha256")
    content = os.urandom(8 * 1024 * 1024)
    (dep.watch / "big.mxf").write_bytes(content)
    dep.start()

    def progress() -> str | None:
        rows = dep.rows("big.mxf")
        error = (rows[-1]["error"] or "") if rows else ""
        return error if error.startswith("hashing: ") and error.endswith("% of 8 MB") else None

    shown = wait_for(progress, timeout=30)
    assert 0 <= int(shown.removeprefix("hashing: ").split("%")[0]) <= 100
    row = dep.wait_state("big.mxf", "COMPLETED", "FAILED", "REJECTED", timeout=60)
    assert row["state"] == "COMPLETED", row["error"]
    assert json.loads(row["checksums"]) == {"big.mxf": hashlib.sha256(content).hexdigest()}
    # 8 MiB at 2 MB/s (less a 0.1 s burst): settled to submitted takes the hashing's time.
    assert row["submitted_at"] - row["settled_at"] >= 3.0


def test_a_mismatch_is_notified_once_until_acknowledged(tmp_path: Path) -> None:
    from ingest.engine.monitor import Monitor
    from ingest.ledger import Ledger
    from ingest.notify.events import Lookout, digest

    ledger_path = tmp_path / "ledger.db"
    ledger = Ledger.open(f"sqlite:///{ledger_path}")
    try:
        with ledger.batch() as tx:
            drop_id = tx.add(rule="news", watch="/w", path="clip.mxf", state="COMPLETED")
        lookout = Lookout(Monitor(), ledger_path, events=frozenset({"checksum"}),
                          outage_after=60, stuck_after=3600)  # fmt: skip
        assert lookout.look(time.time()) == []
        mismatch = {"clip.mxf": {"ours": "aa", "diva": "bb"}}
        with ledger.batch() as tx:
            tx.update(drop_id, checksum_algo="md5", checksum_mismatch=json.dumps(mismatch))
        (event,) = lookout.look(time.time())
        assert event.kind == "checksum" and "DIVA's md5 of clip.mxf differs" in event.line
        assert f"ingest ledger show {drop_id}" in event.line
        assert digest([event], host="h")[0] == "ingest on h: 1 checksum mismatch"
        assert lookout.look(time.time()) == []  # told once
        with ledger.batch() as tx:
            tx.update(drop_id, checksum_acked_at=time.time())
        assert lookout.look(time.time()) == []
    finally:
        ledger.close()


def test_a_file_changed_while_hashed_settles_again_and_is_hashed_anew(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = deployment
    slow_hashing(dep, monkeypatch)  # 8 MiB: about 4 s of hashing
    dep.rule(checksum="md5")
    path = dep.watch / "grow.mxf"
    content = os.urandom(8 * 1024 * 1024)
    path.write_bytes(content)
    dep.start()

    def hashing() -> bool:
        rows = dep.rows("grow.mxf")
        return bool(rows) and (rows[-1]["error"] or "").startswith("hashing: ")

    wait_for(hashing, timeout=30)
    with path.open("ab") as f:  # a copy that was not over after all
        f.write(b"the rest")
    row = dep.wait_state("grow.mxf", "COMPLETED", "FAILED", "REJECTED", timeout=60)
    assert row["state"] == "COMPLETED", row["error"]
    assert row["size"] == len(content) + len(b"the rest")
    final = hashlib.md5(content + b"the rest").hexdigest()
    assert json.loads(row["checksums"]) == {"grow.mxf": final}
