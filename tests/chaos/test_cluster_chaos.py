"""Cluster chaos (issue 12): three ``ingest run`` nodes on one PostgreSQL ledger and four
watch folders, drops written over time while nodes are SIGKILLed at seeded random moments
(each restarted), one node is SIGSTOPped for longer than its lease, then SIGCONTed, and the
PostgreSQL server itself is stopped and started again once. Archive answers come 0.4 s
late, so kills land between DIVA taking a request and the node hearing of it.

Short (CI): 60 drops over 15 s, 3 SIGKILLs. Long (``INGEST_CHAOS_LONG=1``): 300 drops over
90 s, 10 SIGKILLs. Both: 1 SIGSTOP, 1 PostgreSQL restart.

Required at the end: every drop COMPLETED (lost 0), one archive request per object (sent
twice 0), no archive request for a file already gone (requests for deleted files 0), every
object in DIVA, every archive call preceded by its committed intent (the intent check), and
no intent committed by a node that did not hold the folder's lease at the epoch it names
(transitions.node/epoch against lease_takes). ``INGEST_CHAOS_SEED`` fixes the schedule, as
for the other chaos tests.
"""

from __future__ import annotations

import collections
import contextlib
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ..support.cluster import LEASE, cluster_setup, held_by, unleased_intents
from ..support.deployment import Deployment
from ..support.pgledger import all_rows
from ..support.postgres import PostgresServer
from ..support.wait import wait_for
from .harness import LONG, chaos_seed, scale


@pytest.mark.timeout(1200 if LONG else 300)
def test_cluster_chaos(
    deployment: Deployment,
    pg_url: str,
    postgres: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed = chaos_seed()
    rng = random.Random(seed)
    print(f"CHAOS cluster seed={seed} long={int(LONG)}")
    dep = deployment
    watches = cluster_setup(dep, pg_url)
    names = ["n1", "n2", "n3"]
    nodes: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str) -> None:
        monkeypatch.setenv("INGEST_NODE", name)
        nodes[name] = dep.daemon(log_name=f"{name}.log")

    n_drops, write_seconds = int(scale(60, 300)), scale(15.0, 90.0)
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
    # The faults, in time order: SIGKILLs, one SIGSTOP, one PostgreSQL restart.
    events = [(rng.uniform(1, write_seconds + 5), "kill") for _ in range(int(scale(3, 10)))]
    events.append((rng.uniform(3, write_seconds), "stop"))
    events.append((rng.uniform(2, write_seconds), "postgres"))
    events.sort()
    kills = stops = pg_restarts = 0
    try:
        for name in names:
            start(name)
        wait_for(lambda: sum(len(held_by(pg_url, n)) for n in names) == 4, timeout=60)
        dep.knobs(reply_latency=0.4)
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        began = time.monotonic()
        for at, what in events:
            time.sleep(max(0.0, began + at - time.monotonic()))
            if what == "stop":
                _freeze(nodes[rng.choice(names)])
                stops += 1
            elif what == "postgres":
                _restart(postgres)
                pg_restarts += 1
            else:
                victim = rng.choice(names)
                nodes[victim].kill()
                nodes[victim].wait(timeout=30)
                kills += 1
                time.sleep(rng.uniform(0.2, 2.0))
                start(victim)
        writer.join(timeout=60)
        dep.knobs(reply_latency=0)
        wait_for(lambda: _done(pg_url, n_drops), timeout=scale(180, 600))
    finally:
        for proc in nodes.values():
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        for proc in nodes.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    rows = all_rows(pg_url)
    lost = sum(r["state"] != "COMPLETED" for r in rows) + n_drops - len(rows)
    requests = collections.Counter(r["objectName"] for r in dep.archive_requests())
    sent_twice = sum(n - 1 for n in requests.values() if n > 1)
    for_deleted = _requests_for_deleted(dep)
    unleased, intents = unleased_intents(pg_url)
    fenced = sum((dep.root / f"{n}.log").read_text().count("lease lost on") for n in names)
    print(
        f"CHAOS cluster seed={seed} long={int(LONG)} drops={n_drops} kills={kills} "
        f"stops={stops} pg_restarts={pg_restarts} lost={lost} sent_twice={sent_twice} "
        f"requests_for_deleted={for_deleted} intents={intents} unleased_intents={unleased} "
        f"fenced_turns={fenced} seconds={time.monotonic() - began:.0f}"
    )
    assert lost == 0
    assert sent_twice == 0, {k: n for k, n in requests.items() if n > 1}
    assert for_deleted == 0
    assert unleased == 0 and intents >= n_drops
    assert sorted(requests) == sorted(expected)
    assert sorted(o["objectName"] for o in dep.objects()) == sorted(expected)
    assert dep.intents is not None
    assert {a.verdict for a in dep.intents.arrivals} == {"ok"}


def _restart(server: PostgresServer) -> None:
    """Stop the ledger's server (fast: connections cut) for a lease and a second, then
    start it again on the same port: every node loses its leases and must take them anew."""
    server.stop("fast")
    time.sleep(LEASE + 1)  # the outage itself is the fault under test, not a wait
    server.start()


def _requests_for_deleted(dep: Deployment) -> int:
    """Archive requests DIVA aborted for a source file not found (status 1038)."""
    assert dep.emulator is not None
    db = dep.emulator.state / "emulator.db"
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM requests WHERE type = 'archive' AND status_code = 1038"
        ).fetchone()
    return int(row[0])


def _freeze(proc: subprocess.Popen[bytes]) -> bool:
    """SIGSTOP ``proc`` for twice its lease and a second, then SIGCONT."""
    proc.send_signal(signal.SIGSTOP)
    time.sleep(2 * LEASE + 1)  # the freeze itself is the fault under test, not a wait
    proc.send_signal(signal.SIGCONT)
    return True


def _done(url: str, count: int) -> bool:
    rows = all_rows(url)
    return len(rows) == count and all(r["state"] == "COMPLETED" for r in rows)


def rng_bytes(seed: int, i: int) -> bytes:
    return random.Random(seed * 1000 + i).randbytes(2048)
