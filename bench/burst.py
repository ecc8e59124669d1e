"""2. Burst: N files appear in the watch folder at once.

Baseline (the limit of the API stack): one ``httpx.Client``, one login, then a bare loop
posting the same N archive bodies (built by ingest's own ``build_archive_body``) to the
same emulator. Then, after the emulator is wiped, the engine (in this process, in a thread,
so its ledger transactions can be counted) watches the folder while N files are renamed in
from a staging folder. Figures: time from the files being stable (appeared + settle window)
until the last archive request reached the emulator, the submission rate that gives, and
the time until every drop is COMPLETED in the ledger; ledger writes per transaction.

The daemon polls DIVA as shipped: every ``poll_seconds`` = 10 s, the guide's advice and
the default (until 2026-11-29 this ran at 1 s, below it, and the daemon warned). The
emulator answers on one core, which the bare loop alone keeps busy: each status poll
inside the submission window takes a POST's place there, whatever the engine does.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .common import (
    PASSWORD_ENV,
    USER,
    Deployment,
    Emulator,
    Result,
    deployment,
    emulator,
    wait_until,
    workdir,
)

NAME = "burst"
SIZES = {"full": 10_000, "quick": 400}
SETTLE = 0.2
TARGET_RATIO = 1.0  # issue 15 (0.8 before)
POLL_SECONDS = 10.0  # [diva] poll_seconds: the default, the guide's minimum


def _stage(folder: Path, prefix: str, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"{prefix}{i:06d}.mxf"
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"b" * 512)
        os.close(fd)
        names.append(name)
    return names


def _bodies(dep: Deployment, folder: Path, names: list[str]) -> list[dict[str, Any]]:
    from ingest.rulefiles import RuleBook
    from ingest.rules import build_archive_body
    from ingest.templates import Drop

    rule = next(iter(RuleBook([dep.rules], dep.root).rules))
    bodies = []
    for name in names:
        st = os.lstat(folder / name)
        drop = Drop(rule.name, str(rule.watch), name, "file", st.st_size, st.st_mtime_ns)
        body = build_archive_body(rule, drop)
        body["filePathRoot"] = "/" + folder.name
        bodies.append(body)
    return bodies


def baseline(emu: Emulator, bodies: list[dict[str, Any]]) -> float:
    """Seconds for one client to post every body, one after the other."""
    with httpx.Client(base_url=emu.url, timeout=30) as client:
        login = client.post("/dataservice/users/login", json={"username": USER, "password": USER})
        login.raise_for_status()
        headers = {"Authorization": login.json()["token"]}
        start = time.perf_counter()
        for body in bodies:
            client.post("/manager/requests/archive", json=body, headers=headers).raise_for_status()
        return time.perf_counter() - start


class _Counter:
    """Counts the engine's ledger transactions and the writes in them (this process only)."""

    def __init__(self) -> None:
        self.transactions = 0
        self.writing = 0
        self.writes = 0
        self.largest = 0
        self._lock = threading.Lock()

    def install(self, engine: Any) -> None:
        from ingest import ledger as ledger_module

        counter, original = self, engine.ledger.batch
        batch_cls = ledger_module.Batch

        def batch(*args: Any, **kwargs: Any) -> Any:
            import contextlib

            @contextlib.contextmanager
            def counted() -> Any:
                with original(*args, **kwargs) as tx:
                    before = counter.writes
                    yield tx
                    n = counter.writes - before
                counter.transactions += 1
                if n:
                    counter.writing += 1
                    counter.largest = max(counter.largest, n)

            return counted()

        engine.ledger.batch = batch
        for method in ("add", "transition", "update"):
            plain = getattr(batch_cls, method)

            def wrapped(self: Any, *a: Any, __plain: Any = plain, **k: Any) -> Any:
                counter.writes += 1
                return __plain(self, *a, **k)

            setattr(batch_cls, f"_bench_{method}", plain)
            setattr(batch_cls, method, wrapped)

    @staticmethod
    def uninstall() -> None:
        from ingest.ledger import Batch

        for method in ("add", "transition", "update"):
            plain = getattr(Batch, f"_bench_{method}", None)
            if plain is not None:
                setattr(Batch, method, plain)
                delattr(Batch, f"_bench_{method}")


def run(size: int) -> Result:
    from ingest.config import load_config
    from ingest.engine import Engine

    logging.getLogger("ingest").setLevel(logging.WARNING)
    args = ["--max-active", str(size * 3), "--workers", "16"]
    with workdir(NAME) as root, emulator(root, *args) as emu:
        dep = deployment(root, emu.url, emu.nas, settle=SETTLE, poll_seconds=POLL_SECONDS,
                         max_in_flight=size, observer="native")  # fmt: skip
        os.environ.setdefault(PASSWORD_ENV, USER)
        base_dir = emu.nas / "base"
        names = _stage(base_dir, "base", size)
        base_s = baseline(emu, _bodies(dep, base_dir, names))
        emu.reset_state()  # its folders stay: the base tree is already written

        staging = emu.nas / "staging"
        names = _stage(staging, "drop", size)
        engine = Engine(load_config(dep.config), seed=2)
        counter = _Counter()
        counter.install(engine)
        thread = threading.Thread(target=engine.run, name="bench-engine", daemon=True)
        thread.start()
        try:
            wait_until(dep.watching, 30)
            tx_before, writes_before = counter.transactions, counter.writes
            appeared = time.time()
            for name in names:
                os.rename(staging / name, dep.watch / name)
            renamed = time.time()
            wait_until(lambda: emu.count_requests() >= size, 120 + size / 20, 0.1)
            submitted = emu.submitted()
            # (read just after the last archive request: about the polls in the window)
            polls = emu.stats()["calls"].get("GET /manager/requests/{requestId}", 0)
            done = wait_until(
                lambda: dep.states().get("COMPLETED", 0) >= size and time.time(), 300, 0.1
            )
        finally:
            engine.stop()
            thread.join(60)
            _Counter.uninstall()
    first, last = min(submitted.values()), max(submitted.values())
    stable = renamed + SETTLE  # the last file appeared, and its settle window ran out
    to_submitted = last - stable
    ingest_rate = size / to_submitted if to_submitted > 0 else float("inf")
    base_rate = size / base_s
    ratio = ingest_rate / base_rate
    transactions = counter.transactions - tx_before
    writes = counter.writes - writes_before
    return Result(
        name=NAME,
        size={"files": size, "settle_s": SETTLE, "max_in_flight": size},
        figures={
            "appear_s": round(renamed - appeared, 3),
            "stable_to_all_submitted_s": round(to_submitted, 2),
            "submit_span_s": round(last - first, 2),
            "submissions_per_s": round(ingest_rate, 1),
            "stable_to_all_completed_s": round(done - stable, 2),
            "ledger_transactions": transactions,
            "ledger_writes": writes,
            "writes_per_transaction": round(writes / max(1, counter.writing), 1),
            "largest_transaction": counter.largest,
            "status_polls_while_submitting": polls,
        },
        baseline={"bare_loop_s": round(base_s, 2), "bare_loop_per_s": round(base_rate, 1)},
        ratio=round(ratio, 3),
        target=f"submission rate >= {TARGET_RATIO} x the bare loop; writes batched",
        met=ratio >= TARGET_RATIO and writes / max(1, transactions) > 1,
    )
