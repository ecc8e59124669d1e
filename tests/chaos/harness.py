"""Shared machinery of the chaos suite: seed, scale, a killable emulator, seeded drops, and
the end-of-run proof (nothing lost, nothing archived twice, nothing deleted before DIVA
stored it).

- ``INGEST_CHAOS_SEED=<int>`` fixes the seed (else one is drawn and printed). The seed fixes
  the *schedule*: file names, sizes, contents, folder drops, write times, kill times and
  the emulator's fault rolls. Thread and process interleavings are the OS's, so two runs
  with one seed are alike, not identical.
- ``INGEST_CHAOS_LONG=1`` runs the long variant (500 drops, 10 SIGKILLs, 2 emulator
  restarts, a 60 s outage); the default is the short CI variant.

Each test prints one ``CHAOS`` line with the seed and the counts (``pytest -s`` shows it;
it is also in the captured output of a failure).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ingest.emulator.server import EmulatorProcess
from ingest.protocol import RequestState

from ..support.deployment import Deployment
from ..support.emulator import emulator_args
from ..support.intents import IntentChecker
from ..support.wait import wait_for

LONG = os.environ.get("INGEST_CHAOS_LONG", "") not in ("", "0")


def chaos_seed() -> int:
    raw = os.environ.get("INGEST_CHAOS_SEED", "")
    return int(raw) if raw else random.SystemRandom().randrange(1, 2**31)


def scale(short: float, long: float) -> float:
    return long if LONG else short


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass
class Counts:
    """The figures every chaos run prints."""

    name: str
    seed: int
    drops: int = 0
    files: int = 0
    kills: int = 0
    emulator_restarts: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    lost: int = -1
    duplicated: int = -1
    deleted_before_archived: int = -1
    #: archive requests sent while an earlier one for the object was live or completed
    sent_twice: int = -1
    #: drops the ledger calls SKIPPED whose object DIVA holds
    skipped_archived: int = -1
    #: archive requests DIVA took for files already gone (it aborts them, 1038)
    requests_for_deleted: int = -1
    failed: int = 0
    seconds: float = 0.0
    profile: str = "lenient"

    def line(self) -> str:
        faults = " ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        return (
            f"CHAOS {self.name} profile={self.profile} seed={self.seed} long={int(LONG)} "
            f"drops={self.drops} "
            f"files={self.files} kills={self.kills} emulator_restarts={self.emulator_restarts} "
            f"faults[{faults}] failed={self.failed} lost={self.lost} "
            f"duplicated={self.duplicated} deleted_before_archived={self.deleted_before_archived} "
            f"sent_twice={self.sent_twice} skipped_archived={self.skipped_archived} "
            f"requests_for_deleted={self.requests_for_deleted} seconds={self.seconds:.0f}"
        )


class Diva:
    """Our own emulator on a fixed loopback port with its own state folder, so it can be
    SIGKILLed and restarted at the same URL; ``profile`` is its ``--profile``.

    ``intents`` (the deployment's ``dep.intents``) is its archive hook, on the command
    line so that a restarted emulator keeps it: every archive call it takes is checked
    against the ledger as it arrives (rule 1, intent before call)."""

    def __init__(
        self, state: Path, nas: Path, seed: int, profile: str = "lenient", *,
        intents: IntentChecker | None,
    ) -> None:  # fmt: skip
        assert intents is not None, "a chaos emulator checks intents: pass dep.intents"
        self.port = free_port()
        users = {"operator": "operator", "admin": "admin"}
        args = [*emulator_args({"NAS": nas}, ["DISK1"], users), "--port", str(self.port),
                "--seed", str(seed), "--archive-hook", intents.url]  # fmt: skip
        self.process = EmulatorProcess(state, args, profile=profile)
        self.db = state / "emulator.db"
        intents.observe(self.db)
        self.knobs_now: dict[str, float] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Diva:
        self.process.start()
        if self.knobs_now:  # knobs live in memory: a restarted emulator needs them again
            self.knobs(**self.knobs_now)
        return self

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.stop()

    def knobs(self, **changes: float) -> None:
        self.knobs_now.update(changes)
        httpx.put(f"{self.url}/_emulator/faults", json=changes, timeout=10).raise_for_status()

    def stats(self) -> dict[str, Any]:
        doc: dict[str, Any] = httpx.get(f"{self.url}/_emulator/stats", timeout=10).json()
        return doc

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        if not self.db.exists():
            return []
        uri = f"file:{self.db}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
            return list(conn.execute(sql))

    def objects(self) -> dict[tuple[str, str], dict[str, str]]:
        """(collection, name) -> {component file name: md5}, from the emulator's own state."""
        found: dict[tuple[str, str], dict[str, str]] = {}
        rows = self._query(
            "SELECT o.collection, o.name, c.file_name, c.md5 FROM objects o "
            "LEFT JOIN components c ON c.object_id = o.id"
        )
        for collection, name, file_name, md5 in rows:
            comps = found.setdefault((collection, name), {})
            if file_name is not None:
                comps[file_name] = md5
        return found

    def archive_history(self) -> list[tuple[str, str, int, int, float]]:
        """Every archive request: (collection, name, state, status code, submitted)."""
        rows = self._query(
            "SELECT collection, object_name, state, status_code, submitted FROM requests "
            "WHERE type='archive' ORDER BY id"
        )
        return [(str(c), str(n), int(s), int(k), float(t)) for c, n, s, k, t in rows]

    def archive_requests(self) -> list[tuple[str, str, int, float]]:
        """Every archive request DIVA ever took: (collection, name, state, submitted)."""
        rows = self._query(
            "SELECT collection, object_name, state, submitted FROM requests WHERE type='archive'"
        )
        return [(str(c), str(n), int(s), float(t)) for c, n, s, t in rows]


@dataclass
class Expected:
    """One drop written by the test: where, what DIVA should call it, and its files' MD5s."""

    watch: Path
    path: str  # relative to watch (the ledger's ``path``)
    collection: str
    object_name: str
    files: dict[str, str]  # component name (relative to the watch folder) -> md5
    seen_as: str = ""  # the watch folder as the daemon sees it (a mount), if not ``watch``

    @property
    def key(self) -> tuple[str, str]:
        """(watch, path) as the ledger records it."""
        return (self.seen_as or str(self.watch), self.path)


class Drops:
    """Writes seeded drops into two watch folders: file drops ``news/**.mxf`` and folder
    drops ``reels/r*/...``, each file's MD5 recorded as it is written."""

    def __init__(
        self, dep: Deployment, seed: int, *, max_size: int = 200_000, folders: bool = True,
        seen_as: str = "",
    ) -> None:  # fmt: skip
        self.dep = dep
        self.folders = folders
        self.seen_as = seen_as
        self.rng = random.Random(seed)
        self.news = dep.watch
        self.reels = dep.watch.parent / "reels"
        self.reels.mkdir(exist_ok=True)
        self.staging = dep.watch.parent / ".staging"  # same filesystem: renames are atomic
        self.staging.mkdir(exist_ok=True)
        self.max_size = max_size
        self.expected: list[Expected] = []

    def rules(self, **keys: Any) -> None:
        self.dep.rule("news", **keys)
        self.dep.rule("reels", watch=str(self.reels), mode="folder", match=["r*"],
                      object_name="{folder}", collection="REELS", file_path_root="/reels",
                      **keys)  # fmt: skip

    def _data(self) -> bytes:
        roll = self.rng.random()
        size = 0 if roll < 0.03 else self.rng.randrange(1, self.max_size)
        if roll > 0.97:
            size = self.max_size * 5  # now and then a big one
        return self.rng.randbytes(size)

    def write(self, i: int) -> Expected:
        """Drop number ``i``: one in ten a folder drop, the rest files written in one of
        three ways (in place in chunks, renamed in from a ``.part`` name, moved in)."""
        if i % 10 == 9 and self.folders:
            return self._folder(i)
        sub = "" if self.rng.random() < 0.7 else f"d{self.rng.randrange(3)}/"
        rel = f"{sub}c{i:04d}.mxf"
        data = self._data()
        target = self.news / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        how = self.rng.randrange(3)
        if how == 0:
            with target.open("wb") as fh:  # a copy in progress, in place
                for start in range(0, len(data), 65536):
                    fh.write(data[start : start + 65536])
                    fh.flush()
        elif how == 1:
            part = target.with_name(target.name + ".part")
            part.write_bytes(data)
            part.rename(target)
        else:
            staged = self.staging / f"c{i:04d}.mxf"
            staged.write_bytes(data)
            staged.rename(target)
        found = Expected(self.news, rel, "NEWS", f"c{i:04d}", {rel: md5_bytes(data)}, self.seen_as)
        self.expected.append(found)
        return found

    def _folder(self, i: int) -> Expected:
        name = f"r{i:04d}"
        staged = self.staging / name
        files: dict[str, str] = {}
        for j in range(self.rng.randrange(2, 7)):
            rel = f"f{j}.dpx" if j % 2 == 0 else f"sub/f{j}.dpx"
            data = self.rng.randbytes(self.rng.randrange(1, self.max_size // 4))
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            (staged / rel).write_bytes(data)
            files[f"{name}/{rel}"] = md5_bytes(data)
        staged.rename(self.reels / name)
        found = Expected(self.reels, name, "REELS", name, files)
        self.expected.append(found)
        return found

    @property
    def file_count(self) -> int:
        return sum(len(e.files) for e in self.expected)

    def present(self) -> set[tuple[Path, str]]:
        """Source files still in the drop folders (watch, relpath)."""
        return {(e.watch, f) for e in self.expected for f in e.files if (e.watch / f).exists()}


class Daemon:
    """``ingest run`` as a subprocess that the test SIGKILLs and restarts."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0

    def start(self) -> None:
        self.generation += 1
        self.proc = self.dep.daemon(log_name=f"daemon{self.generation}.log")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> int:
        """SIGTERM, once the daemon is up (a SIGTERM before its handler is installed kills
        it outright: a race of the test's, not the daemon's); the exit code."""
        if self.proc is None:
            return 0
        log = self.dep.root / f"daemon{self.generation}.log"
        wait_for(
            lambda: (
                self.proc is not None
                and (self.proc.poll() is not None or "engine starting" in log.read_text())
            ),
            timeout=60,
            interval=0.1,
        )
        proc, self.proc = self.proc, None
        proc.terminate()
        return proc.wait(timeout=60)

    def logs(self) -> str:
        return "".join(
            (self.dep.root / f"daemon{g}.log").read_text(errors="replace")
            for g in range(1, self.generation + 1)
            if (self.dep.root / f"daemon{g}.log").exists()
        )


def latest(dep: Deployment) -> dict[tuple[str, str], dict[str, Any]]:
    """The newest ledger row of every (watch, path)."""
    return {(r["watch"], r["path"]): r for r in dep.rows()}


def wait_all_final(
    dep: Deployment, drops: Drops, finals: tuple[str, ...], timeout: float
) -> dict[tuple[str, str], dict[str, Any]]:
    want = {e.key for e in drops.expected}

    def done() -> dict[tuple[str, str], dict[str, Any]] | None:
        rows = latest(dep)
        if all(k in rows and rows[k]["state"] in finals for k in want):
            return rows
        return None

    try:
        return wait_for(done, timeout=timeout, interval=0.5)
    except AssertionError:
        rows = latest(dep)
        late = Counter(rows[k]["state"] if k in rows else "UNSEEN" for k in want)
        # The newest daemon log's end, so that a daemon that never ran says why.
        logs = sorted(dep.root.glob("daemon*.log"), key=lambda p: p.stat().st_mtime)
        tail = logs[-1].read_text(errors="replace").splitlines()[-25:] if logs else []
        raise AssertionError(
            f"not every drop reached {finals} in {timeout} s: {late}\n" + "\n".join(tail)
        ) from None


def check_deleted_only_if_archived(diva: Diva, drops: Drops) -> int:
    """Every source file that left its drop folder is in DIVA with the same MD5.

    Returns the number of violations (the test asserts 0). Safe to call while running:
    the drops written so far are taken first (the writer thread appends a drop only once
    its files are in place, so a drop written after the listing cannot look deleted),
    then the files are listed before DIVA is asked, and DIVA deletes only after storing.
    """
    expected = list(drops.expected)
    present = drops.present()
    stored = diva.objects()
    bad = 0
    for e in expected:
        comps = stored.get((e.collection, e.object_name), {})
        for f, digest in e.files.items():
            if (e.watch, f) not in present and comps.get(f) != digest:
                bad += 1
    return bad


def verify(
    dep: Deployment, diva: Diva, drops: Drops, counts: Counts, *, allow_failed: bool = False
) -> None:
    """The promise, checked from every side; fills the counts and asserts them."""
    rows = latest(dep)
    stored = diva.objects()
    requests = diva.archive_requests()
    counts.drops = len(drops.expected)
    counts.files = drops.file_count
    done = int(RequestState.COMPLETED)
    completed_requests = Counter((c, n) for c, n, s, _ in requests if s == done)
    # Lost: a drop whose source is gone without its object, or that DIVA never stored
    # although the ledger says COMPLETED, or that did not end COMPLETED (FAILED drops are
    # allowed only where faults are injected, and must still have their files).
    lost = 0
    failed = 0
    for e in drops.expected:
        row = rows.get(e.key)
        comps = stored.get((e.collection, e.object_name))
        if row is not None and row["state"] == "FAILED" and allow_failed:
            failed += 1
            assert row["error"], f"{e.path}: FAILED without a reason"
            if comps is None and not all((e.watch / f).exists() for f in e.files):
                lost += 1
            continue
        if row is None or row["state"] != "COMPLETED" or comps != e.files:
            lost += 1
    counts.failed = failed
    counts.lost = lost
    # Duplicated: more than one stored object or completed archive request per drop, or
    # any object DIVA holds that is not one of ours (a ``_2`` suffix, say).
    ours = {(e.collection, e.object_name) for e in drops.expected}
    duplicated = sum(max(0, n - 1) for n in completed_requests.values())
    duplicated += sum(1 for key in stored if key not in ours)
    assert set(completed_requests) == set(stored), "completed archive requests != objects"
    counts.duplicated = duplicated
    counts.deleted_before_archived = check_deleted_only_if_archived(diva, drops)
    # Sent twice: a request for an object whose previous request was not aborted (a retry
    # after DIVA aborted or cancelled one is a new attempt, not a duplicate).
    history = diva.archive_history()
    retryable = {int(RequestState.ABORTED), int(RequestState.CANCELLED)}
    last_state: dict[tuple[str, str], int] = {}
    sent_twice = 0
    for collection, name, state, _code, _at in history:
        key = (collection, name)
        if key in last_state and last_state[key] not in retryable:
            sent_twice += 1
        last_state[key] = state
    counts.sent_twice = sent_twice
    counts.requests_for_deleted = sum(1 for *_, code, _at in history if code == 1038)
    counts.skipped_archived = sum(
        1
        for e in drops.expected
        if (row := rows.get(e.key)) is not None
        and row["state"] == "SKIPPED"
        and (e.collection, e.object_name) in stored
    )
    print(counts.line())
    assert counts.lost == 0, counts.line()
    assert counts.duplicated == 0, counts.line()
    assert counts.deleted_before_archived == 0, counts.line()
    assert counts.sent_twice == 0, counts.line()
    assert counts.skipped_archived == 0, counts.line()
    assert counts.requests_for_deleted == 0, counts.line()
    # Rule 1, judged by the archive hook as each call arrived (see tests/support/intents.py).
    assert dep.intents is not None
    dep.intents.assert_clean()
    if not allow_failed:
        assert drops.present() == set(), "the drop folders still hold files"


def json_dump(path: Path, counts: Counts) -> None:
    """Keep the figures next to the run's files too (handy for the long runs)."""
    path.write_text(json.dumps(counts.__dict__, indent=2, default=str))


def sleep_until(deadline: float) -> None:
    """Pace a schedule (a kill time, a write time): not a wait for a condition."""
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)
