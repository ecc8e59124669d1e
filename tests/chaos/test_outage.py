"""Outage: DIVA unreachable mid-run (10 s short, 60 s long) while drops keep arriving.

Drops queue and go out when DIVA returns; nothing is marked FAILED for the outage alone,
although the outage outlasts ``max_attempts`` retries' worth of backoff.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ..support.deployment import Deployment
from ..support.wait import wait_for
from .harness import (
    LONG,
    Counts,
    Daemon,
    Diva,
    Drops,
    chaos_seed,
    json_dump,
    scale,
    sleep_until,
    verify,
    wait_all_final,
)


@pytest.mark.timeout(900 if LONG else 120)
def test_diva_outage(deployment: Deployment, tmp_path: Path) -> None:
    seed = chaos_seed()
    counts = Counts("outage", seed)
    print(f"CHAOS outage seed={seed} long={int(LONG)}")
    n_drops = int(scale(40, 300))
    outage = scale(10, 60)
    dep = deployment
    diva = Diva(tmp_path / "diva", dep.watch.parent, seed, intents=dep.intents).start()
    daemon = Daemon(dep)
    started = time.monotonic()
    try:
        dep.write_config(url=diva.url, max_attempts=2, max_in_flight=8)
        drops = Drops(dep, seed)
        drops.rules(settle_seconds=0.3)
        diva.knobs(request_seconds=0.5)
        daemon.start()
        # Drops arrive steadily before, during and after the outage.
        write_seconds = outage + scale(8, 30)
        t0 = time.monotonic()

        def writer() -> None:
            for i in range(n_drops):
                sleep_until(t0 + write_seconds * i / n_drops)
                drops.write(i)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        wait_for(lambda: any(r["state"] == "COMPLETED" for r in dep.rows()), timeout=30)
        diva.kill()  # DIVA gone without a word, requests in flight and all
        counts.faults["outage_seconds"] = int(outage)
        down_at = time.monotonic()
        # While it is away: drops pile up waiting, none FAILED.
        while time.monotonic() - down_at < outage:
            assert not [r["path"] for r in dep.rows() if r["state"] == "FAILED"]
            time.sleep(0.5)  # sampling the ledger through the outage, not waiting on it
        waiting = [r for r in dep.rows() if r["state"] in ("RETRY_WAIT", "SUBMITTING")]
        assert waiting, "nothing was waiting for DIVA during the outage"
        diva.start()
        counts.emulator_restarts = 1
        thread.join(timeout=write_seconds + 30)
        wait_all_final(dep, drops, ("COMPLETED",), timeout=scale(60, 300))
        assert daemon.stop() == 0
        counts.seconds = time.monotonic() - started
        verify(dep, diva, drops, counts)
        # Some drops retried past max_attempts during the outage and still completed.
        assert max(r["attempts"] for r in dep.rows()) > 2
        assert "DIVA unavailable" in daemon.logs()
        json_dump(tmp_path / "figures.json", counts)
    finally:
        if daemon.proc is not None:
            daemon.kill()
        diva.stop()
