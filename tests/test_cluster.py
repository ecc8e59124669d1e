"""Several ``ingest run`` nodes on one PostgreSQL ledger, against the emulator: they split
the watch folders, a SIGKILLed node's folders pass to a live one which finishes its
drops, and a node frozen past its lease submits nothing for the folders it lost. Every
archive call is judged by the intent check (tests/support/intents.py)."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import FOLDERS, LEASE, cluster_setup, held_by, leases, unleased_intents
from tests.support.deployment import Deployment
from tests.support.pgledger import all_rows, ingest
from tests.support.wait import wait_for


@contextmanager
def _node(dep: Deployment, name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("INGEST_NODE", name)
    proc = dep.daemon(log_name=f"{name}.log")
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def _drop(watches: dict[str, str], tag: str) -> list[str]:
    """One file in each folder; returns the object names they will have."""
    names = []
    for folder, watch in watches.items():
        (Path(watch) / f"{tag}.mxf").write_bytes(tag.encode() * 100)
        names.append(f"{folder}-{tag}")
    return names


def _all_completed(url: str, count: int) -> bool:
    states = [r["state"] for r in all_rows(url)]
    return len(states) == count and all(s == "COMPLETED" for s in states)


def _status_shows_the_split(dep: Deployment, watches: dict[str, str]) -> None:
    status = ingest(dep, "status", "--json")
    doc = json.loads(status.stdout)
    nodes = {n["name"]: n for n in doc["nodes"]}
    assert sorted(nodes) == ["alpha", "beta"], status.stderr
    assert all(n["alive"] and len(n["folders"]) == 2 for n in nodes.values())
    assert sorted(nodes["alpha"]["folders"] + nodes["beta"]["folders"]) == sorted(watches.values())
    assert doc["unheld_folders"] == [] and doc["healthy"], doc["problems"]
    text = ingest(dep, "status").stdout
    assert "nodes:" in text and "alpha" in text and "beta" in text


def _archived_once(dep: Deployment, names: list[str]) -> None:
    requests = collections.Counter(r["objectName"] for r in dep.archive_requests())
    assert {n: requests[n] for n in names} == dict.fromkeys(names, 1), requests
    assert sum(requests.values()) == len(names)
    assert sorted(o["objectName"] for o in dep.objects()) == sorted(names)


def test_two_nodes_split_the_folders_and_a_killed_ones_pass_to_the_other(
    deployment: Deployment, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = deployment
    watches = cluster_setup(dep, pg_url)
    with _node(dep, "alpha", monkeypatch) as alpha:
        wait_for(lambda: len(held_by(pg_url, "alpha")) == 4, timeout=60)
        with _node(dep, "beta", monkeypatch):
            # beta joins: alpha gives back its excess, they hold two folders each.
            wait_for(
                lambda: len(held_by(pg_url, "alpha")) == len(held_by(pg_url, "beta")) == 2,
                timeout=60,
            )
            _status_shows_the_split(dep, watches)
            # A second live node named alpha is refused, naming the first; nothing moves.
            monkeypatch.setenv("INGEST_NODE", "alpha")
            twin = dep.daemon(log_name="twin.log")
            assert twin.wait(timeout=60) == 8
            refusal = (dep.root / "twin.log").read_text()
            assert f'node name "alpha" is taken by a live node (pid {alpha.pid} on host' in refusal
            _status_shows_the_split(dep, watches)
            names = _drop(watches, "first")
            wait_for(lambda: _all_completed(pg_url, 4), timeout=90)
            # Each node archived the drops of its own folders.
            by_folder = {r["watch"]: r for r in all_rows(pg_url)}
            assert set(by_folder) == set(watches.values())

            # alpha dies with drops of its folders in hand: DIVA took their archive calls,
            # whose answers are slow, so alpha has not heard back at the kill. (Waiting only
            # for a SUBMITTING row could kill it between an intent's commit and its call:
            # beta then rightly submits again, a second intent, and the count below is off.)
            alphas = held_by(pg_url, "alpha")
            dep.knobs(reply_latency=3)
            names += _drop(watches, "second")
            sent = {f"{folder}-second" for folder, watch in watches.items() if watch in alphas}
            wait_for(lambda: sent <= {r["objectName"] for r in dep.archive_requests()}, timeout=60)
            alpha.send_signal(signal.SIGKILL)
            alpha.wait(timeout=30)
            killed = time.monotonic()
            dep.knobs(reply_latency=0)
            wait_for(lambda: len(held_by(pg_url, "beta")) == 4, timeout=30)
            failover = time.monotonic() - killed
            # The taker finishes them, reconciling the dead one's in-flight rows with DIVA.
            wait_for(lambda: _all_completed(pg_url, 8), timeout=120)
            names += _drop(watches, "third")
            wait_for(lambda: _all_completed(pg_url, 12), timeout=90)
    print(
        f"failover: beta held all 4 folders {failover:.1f} s after the SIGKILL (lease {LEASE:g} s)"
    )
    assert failover < LEASE + 10, failover
    # Both gone (beta stopped cleanly, giving its folders back): status says so.
    status = ingest(dep, "status", "--json")
    doc = json.loads(status.stdout)
    assert [(n["name"], n["alive"]) for n in doc["nodes"]] == [("alpha", False), ("beta", False)]
    assert sorted(doc["unheld_folders"]) == sorted(watches.values())
    _archived_once(dep, names)
    unleased, intents = unleased_intents(pg_url)
    assert (unleased, intents) == (0, 12)
    epochs = {w: e for w, (_, e, _) in leases(pg_url).items()}
    assert all(epochs[watches[f]] >= 2 for f in FOLDERS), epochs  # each passed hands
    assert dep.intents is not None
    assert {a.verdict for a in dep.intents.arrivals} == {"ok"}


def test_a_node_frozen_past_its_lease_submits_nothing_for_the_folders_it_lost(
    deployment: Deployment, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = deployment
    watches = cluster_setup(dep, pg_url, settle=3.0)
    with _node(dep, "alpha", monkeypatch) as alpha, _node(dep, "beta", monkeypatch):
        wait_for(
            lambda: len(held_by(pg_url, "alpha")) == len(held_by(pg_url, "beta")) == 2,
            timeout=60,
        )
        alphas = held_by(pg_url, "alpha")
        names = _drop(watches, "frozen")
        # alpha has seen its drops (rows DETECTED, settling): then it freezes.
        wait_for(lambda: sum(r["watch"] in alphas for r in all_rows(pg_url)) == 2, timeout=60)
        alpha.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: len(held_by(pg_url, "beta")) == 4, timeout=30)
            wait_for(lambda: _all_completed(pg_url, 4), timeout=90)
        finally:
            alpha.send_signal(signal.SIGCONT)
        # alpha wakes with its drops settled in memory: it must notice the loss at once,
        # and write nothing for them (a late SKIPPED or SUBMITTING would show below).
        log = dep.root / "alpha.log"
        wait_for(lambda: "lease lost on" in log.read_text(), timeout=30)
        assert alpha.poll() is None  # it runs on, with the folders it gets back
        more = _drop(watches, "after")
        wait_for(lambda: _all_completed(pg_url, 8), timeout=90)
        names += more
    _archived_once(dep, names)
    assert dep.intents is not None
    assert {a.verdict for a in dep.intents.arrivals} == {"ok"}
