"""DIVA faults: the same kind of drops while the emulator injects 10% HTTP 5xx, 5% aborted
requests, 5% connections cut mid-reply (the call was carried out, its answer lost), token
expiry (every 20 s long, every 6 s short), queue-full (1032) bursts, and 2 s latency
spikes. Every drop ends COMPLETED, or FAILED with a reason and its files in place; no
source leaves its folder before its object is stored; nothing is archived twice.

It runs against both emulator profiles; the ``guide`` one also forgets finished requests
after 2 s and serves only the guide's routes.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from ..conftest import Deployment
from .harness import (
    LONG,
    Counts,
    Daemon,
    Diva,
    Drops,
    chaos_seed,
    check_deleted_only_if_archived,
    json_dump,
    scale,
    sleep_until,
    verify,
    wait_all_final,
)


@pytest.mark.timeout(1800 if LONG else 240)
@pytest.mark.parametrize("profile", ["lenient", "guide"])
def test_diva_faults(deployment: Deployment, tmp_path: Path, profile: str) -> None:
    seed = chaos_seed()
    counts = Counts("faults", seed, profile=profile)
    print(f"CHAOS faults profile={profile} seed={seed} long={int(LONG)}")
    rng = random.Random(seed)
    n_drops = int(scale(50, 500))
    write_seconds = scale(12, 150)
    dep = deployment
    diva = Diva(tmp_path / "diva", dep.watch.parent, seed, profile=profile).start()
    daemon = Daemon(dep)
    started = time.monotonic()
    stop_bursts = threading.Event()
    bursts = 0
    try:
        dep.write_config(
            url=diva.url, max_attempts=int(scale(3, 5)), max_in_flight=8, timeout_seconds=10
        )
        drops = Drops(dep, seed)
        drops.rules(settle_seconds=0.4)
        diva.knobs(
            http_error_rate=0.10, abort_rate=0.05, drop_rate=0.05,
            token_ttl=scale(6, 20), latency=2.0, latency_rate=0.03, request_seconds=1.0,
        )  # fmt: skip
        if profile == "guide":
            diva.knobs(forget_after=2.0)
        daemon.start()

        def queue_full_bursts() -> None:
            # DIVA's queue fills (1032 for every submission) for a second or two, now
            # and then.
            nonlocal bursts
            while not stop_bursts.wait(rng.uniform(2, 5)):
                diva.knobs(max_active=1)
                bursts += 1
                if stop_bursts.wait(rng.uniform(1, 2)):
                    break
                diva.knobs(max_active=300)
            diva.knobs(max_active=300)

        burster = threading.Thread(target=queue_full_bursts, daemon=True)
        burster.start()
        t0 = time.monotonic()
        for i in range(n_drops):
            sleep_until(t0 + write_seconds * i / n_drops)
            drops.write(i)
            if i % 10 == 0:
                assert check_deleted_only_if_archived(diva, drops) == 0
        # Faults stay on until every drop has its final word.
        rows = wait_all_final(dep, drops, ("COMPLETED", "FAILED"), timeout=scale(180, 900))
        stop_bursts.set()
        burster.join(timeout=30)
        stats = diva.stats()
        assert daemon.stop() == 0
        counts.seconds = time.monotonic() - started
        aborted = sum(1 for *_, state, _t in diva.archive_requests() if state == 4)
        busy = sum(
            1
            for r in rows.values()
            for h in dep.history(r["id"])
            if "busy" in h["detail"].lower() or "1032" in h["detail"]
        )
        counts.faults = {
            "http_5xx": stats["injectedErrors"], "latency_2s": stats["injectedLatency"],
            "cut_replies": stats["droppedReplies"], "aborted_requests": aborted,
            "queue_full_bursts": bursts, "queue_full_answers": busy,
            "logins(token_expiry)": stats["logins"],
        }  # fmt: skip
        verify(dep, diva, drops, counts, allow_failed=True)
        # The faults really happened (else this proves nothing).
        assert stats["injectedErrors"] > 0 and stats["droppedReplies"] > 0
        assert stats["logins"] > 1, "the token never expired"
        json_dump(tmp_path / "figures.json", counts)
    finally:
        stop_bursts.set()
        if daemon.proc is not None:
            daemon.kill()
        diva.stop()
