"""Cluster chaos (issue 12), the short CI variant: three ``ingest run`` nodes on one
PostgreSQL ledger and four watch folders, 60 drops written over time while nodes are
SIGKILLed at seeded random moments (each restarted) and one node is SIGSTOPped for longer
than its lease, then SIGCONTed. Archive answers come 0.4 s late, so kills land between
DIVA taking a request and the node hearing of it.

Required at the end: every drop COMPLETED (lost 0), one archive request per object (sent
twice 0), every object in DIVA, and every archive call preceded by its committed intent
(the intent check). ``INGEST_CHAOS_SEED`` fixes the schedule, as for the other chaos tests.
"""

from __future__ import annotations

import collections
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ..support.deployment import Deployment
from ..support.wait import wait_for
from ..test_cluster import LEASE, _all_rows, _held_by, _setup
from .harness import chaos_seed


@pytest.mark.timeout(300)
def test_cluster_chaos(
    deployment: Deployment, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = chaos_seed()
    rng = random.Random(seed)
    print(f"CHAOS cluster seed={seed}")
    dep = deployment
    watches = _setup(dep, pg_url)
    names = ["n1", "n2", "n3"]
    nodes: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str) -> None:
        monkeypatch.setenv("INGEST_NODE", name)
        nodes[name] = dep.daemon(log_name=f"{name}.log")

    n_drops, write_seconds = 60, 15.0
    expected: list[str] = []
    plan = [(rng.uniform(0, write_seconds), rng.choice(list(watches))) for _ in range(n_drops)]
    plan.sort()

    def write() -> None:
        began = time.monotonic()
        for i, (at, folder) in enumerate(plan):
            time.sleep(max(0.0, began + at - time.monotonic()))
            tmp = Path(watches[folder]) / f".c{i}.part"
            tmp.write_bytes(rng_bytes(seed, i))
            tmp.rename(Path(watches[folder]) / f"c{i}.mxf")

    for folder_index in range(len(plan)):
        expected.append(f"{plan[folder_index][1]}-c{folder_index}")
    kills = stops = 0
    try:
        for name in names:
            start(name)
        wait_for(lambda: sum(len(_held_by(pg_url, n)) for n in names) == 4, timeout=60)
        dep.knobs(reply_latency=0.4)
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        began = time.monotonic()
        schedule = sorted(rng.uniform(1, write_seconds + 5) for _ in range(3))
        stop_at = rng.uniform(3, write_seconds)
        stopped = False
        for at in schedule:
            if not stopped and stop_at < at:
                time.sleep(max(0.0, began + stop_at - time.monotonic()))
                stopped = _freeze(nodes[rng.choice(names)])
                stops += 1
            time.sleep(max(0.0, began + at - time.monotonic()))
            victim = rng.choice(names)
            nodes[victim].send_signal(signal.SIGCONT)  # a frozen one dies as well
            nodes[victim].kill()
            nodes[victim].wait(timeout=30)
            kills += 1
            time.sleep(rng.uniform(0.2, 2.0))
            start(victim)
        if not stopped:
            _freeze(nodes[rng.choice(names)])
            stops += 1
        writer.join(timeout=60)
        dep.knobs(reply_latency=0)
        wait_for(lambda: _done(pg_url, n_drops), timeout=180)
    finally:
        for proc in nodes.values():
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        for proc in nodes.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    rows = _all_rows(pg_url)
    lost = sum(r["state"] != "COMPLETED" for r in rows) + n_drops - len(rows)
    requests = collections.Counter(r["objectName"] for r in dep.archive_requests())
    sent_twice = sum(n - 1 for n in requests.values() if n > 1)
    fenced = sum((dep.root / f"{n}.log").read_text().count("lease lost on") for n in names)
    print(
        f"CHAOS cluster seed={seed} drops={n_drops} kills={kills} stops={stops} lost={lost} "
        f"sent_twice={sent_twice} fenced_turns={fenced}"
    )
    assert lost == 0
    assert sent_twice == 0, {k: n for k, n in requests.items() if n > 1}
    assert sorted(requests) == sorted(expected)
    assert sorted(o["objectName"] for o in dep.objects()) == sorted(expected)
    assert dep.intents is not None
    assert {a.verdict for a in dep.intents.arrivals} == {"ok"}


def _freeze(proc: subprocess.Popen[bytes]) -> bool:
    """SIGSTOP ``proc`` for twice its lease and a second, then SIGCONT."""
    proc.send_signal(signal.SIGSTOP)
    time.sleep(2 * LEASE + 1)  # the freeze itself is the fault under test, not a wait
    proc.send_signal(signal.SIGCONT)
    return True


def _done(url: str, count: int) -> bool:
    rows = _all_rows(url)
    return len(rows) == count and all(r["state"] == "COMPLETED" for r in rows)


def rng_bytes(seed: int, i: int) -> bytes:
    return random.Random(seed * 1000 + i).randbytes(2048)
