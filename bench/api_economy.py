"""6. API economy: how few DIVA calls a run makes.

N drops whose requests each take D seconds in the emulator (``--request-seconds``), with
``poll_seconds = P`` and room for all of them in flight; ``ingest run --until-idle`` from
start to exit. From the emulator's ``GET /_emulator/stats``: logins in the run, status
calls (``GET /requests/{id}``) per request, and the shortest interval between two polls
of one request.
"""

from __future__ import annotations

import math
import os

from .common import Result, daemon, daemon_log, deployment, emulator, wait_until, workdir

NAME = "api_economy"
SIZES = {"full": 500, "quick": 50}
#: (request seconds, poll seconds) by size: the quick run keeps the full run's ratio
TIMING = {"full": (30.0, 10.0), "quick": (6.0, 2.0)}


def run(size: int) -> Result:
    duration, poll = TIMING["full" if size >= SIZES["full"] else "quick"]
    flags = ["--request-seconds", str(duration), "--max-active", str(size * 2), "--workers", "16"]
    with workdir(NAME) as root, emulator(root, *flags) as emu:
        dep = deployment(root, emu.url, emu.nas, settle=0.2, poll_seconds=poll,
                         max_in_flight=size)  # fmt: skip
        for i in range(size):
            fd = os.open(dep.watch / f"eco{i:05d}.mxf", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"e" * 1024)
            os.close(fd)
        with daemon(dep, "--until-idle") as proc:
            try:
                wait_until(lambda: proc.poll() is not None, duration * 4 + 120, 0.2)
            except TimeoutError:
                raise RuntimeError(f"the run did not finish:\n{daemon_log(dep)}") from None
            if proc.returncode != 0:
                raise RuntimeError(f"ingest run exited {proc.returncode}:\n{daemon_log(dep)}")
        stats = emu.stats()
        states = dep.states()
    polls = stats["polls"]
    counts = [int(p["count"]) for p in polls.values()]
    gaps = [float(p["minInterval"]) for p in polls.values() if p["minInterval"] >= 0]
    allowed = math.ceil(duration / poll) + 1
    worst = max(counts, default=0)
    min_gap = min(gaps, default=math.nan)
    logins = int(stats["logins"])
    met = (logins == 1 and worst <= allowed and min_gap >= poll
           and states.get("COMPLETED", 0) == size)  # fmt: skip
    return Result(
        name=NAME,
        size={"drops": size, "request_s": duration, "poll_s": poll},
        figures={
            "logins": logins,
            "status_calls_per_request_max": worst,
            "status_calls_per_request_mean": round(sum(counts) / max(1, len(counts)), 2),
            "min_poll_interval_s": round(min_gap, 3),
            "completed": states.get("COMPLETED", 0),
        },
        baseline={"status_calls_allowed": allowed, "poll_s": poll},
        ratio=round(worst / allowed, 2),
        target=f"1 login; <= ceil({duration:g}/{poll:g})+1 = {allowed} polls/request; "
        f"min interval >= {poll:g} s",
        met=met,
    )
