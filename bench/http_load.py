"""7. The status page's cost: the burst (N files at once) with and without the HTTP endpoint
serving an open page and a Prometheus scrape every second.

Each trial is a fresh emulator, ledger and watch folder; the engine runs in this process.
"With" trials start the endpoint (:mod:`ingest.web`) on a free loopback port and a client
thread that reads ``/metrics`` every second and, as the page's script does, ``/api/page``
every 3 s. Trials alternate (without, with, without, with...) so that a machine growing
busier weighs on both. Figure: the submission rate (stable to the last archive request
reaching DIVA), the median of each kind; target: with >= 0.95 x without (issue 13).
"""

from __future__ import annotations

import logging
import os
import threading
import time

import httpx

from .burst import SETTLE, _stage
from .common import PASSWORD_ENV, USER, Result, deployment, emulator, median, wait_until, workdir

NAME = "http_load"
SIZES = {"full": 5_000, "quick": 200}
TRIALS = 3  # of each kind
TARGET_RATIO = 0.95
SCRAPE_SECONDS = 1.0
PAGE_EVERY = 3  # scrapes


def _scrape(url: str, stop: threading.Event, took: dict[str, list[float]]) -> None:
    """Read /metrics every second and /api/page every third time, timing each answer."""
    with httpx.Client(base_url=url, timeout=30) as client:
        n = 0
        while not stop.is_set():
            for route in ("/metrics", "/api/page") if n % PAGE_EVERY == 0 else ("/metrics",):
                began = time.perf_counter()
                client.get(route).raise_for_status()
                took[route].append(time.perf_counter() - began)
            n += 1
            stop.wait(SCRAPE_SECONDS)


def trial(size: int, served: bool, took: dict[str, list[float]]) -> float:
    """One burst; its submission rate (requests per second)."""
    from ingest.config import HttpConfig, load_config
    from ingest.engine import Engine
    from ingest.web import WebServer

    args = ["--max-active", str(size * 3), "--workers", "16"]
    with workdir(NAME) as root, emulator(root, *args) as emu:
        dep = deployment(root, emu.url, emu.nas, settle=SETTLE, poll_seconds=1.0,
                         max_in_flight=size, observer="native")  # fmt: skip
        os.environ.setdefault(PASSWORD_ENV, USER)
        staging = emu.nas / "staging"
        names = _stage(staging, "drop", size)
        engine = Engine(load_config(dep.config), seed=2)
        thread = threading.Thread(target=engine.run, name="bench-engine", daemon=True)
        stop = threading.Event()
        web = scraper = None
        if served:
            web = WebServer(HttpConfig("127.0.0.1", 0), engine.monitor, dep.ledger,
                            stuck_after=3600.0).start()  # fmt: skip
            scraper = threading.Thread(target=_scrape, args=(web.url, stop, took), daemon=True)
        thread.start()
        try:
            wait_until(dep.watching, 30)
            if scraper is not None:
                scraper.start()
            for name in names:
                os.rename(staging / name, dep.watch / name)
            renamed = time.time()
            wait_until(lambda: emu.count_requests() >= size, 120 + size / 20, 0.1)
            last = max(emu.submitted().values())
        finally:
            stop.set()
            if scraper is not None and scraper.is_alive():
                scraper.join(30)
            engine.stop()
            thread.join(60)
            if web is not None:
                web.stop()
    return size / max(1e-9, last - (renamed + SETTLE))


def run(size: int) -> Result:
    logging.getLogger("ingest").setLevel(logging.WARNING)
    plain: list[float] = []
    served: list[float] = []
    took: dict[str, list[float]] = {"/metrics": [], "/api/page": []}
    for _ in range(TRIALS):
        plain.append(trial(size, False, took))
        served.append(trial(size, True, took))
    ratio = median(served) / median(plain)
    return Result(
        name=NAME,
        size={"files": size, "trials": TRIALS, "scrape_s": SCRAPE_SECONDS},
        figures={
            "submissions_per_s_served": round(median(served), 1),
            "served_trials": [round(r, 1) for r in served],
            "scrapes": len(took["/metrics"]),
            "metrics_ms_median": round(median(took["/metrics"]) * 1000, 1),
            "metrics_ms_max": round(max(took["/metrics"], default=0.0) * 1000, 1),
            "page_reads": len(took["/api/page"]),
            "page_ms_median": round(median(took["/api/page"]) * 1000, 1),
        },
        baseline={
            "submissions_per_s_plain": round(median(plain), 1),
            "plain_trials": [round(r, 1) for r in plain],
        },
        ratio=round(ratio, 3),
        target=f"submission rate with the page open and /metrics scraped every "
        f"{SCRAPE_SECONDS:g} s >= {TARGET_RATIO} x without",
        met=ratio >= TARGET_RATIO,
    )
