"""4. Polling cost: an idle tree of N files watched by polling.

``ingest run`` with ``observer = "polling"`` scans the tree every ``watch_poll_seconds``;
every file is already in the ledger, so each cycle only finds nothing new. The tree is on
a local filesystem, so a cycle lists again only the folders whose stamp moved and lstats
every file (``ingest.watch.TRUSTED_FOLDER_MTIMES``); on SMB/CIFS, NFS or FUSE every cycle
lists every folder too. CPU seconds of
the daemon per poll cycle (from /proc, all threads, idle wake-ups included) against a bare
``os.scandir`` + ``lstat`` walk of the same tree in this process; and the stat calls per
entry per cycle, counted with ``strace -c`` on the running daemon (when strace is there).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

from .common import (
    Result,
    bare_walk,
    cpu_seconds,
    daemon,
    daemon_log,
    deployment,
    fill_ledger_completed,
    make_tree,
    wait_until,
    workdir,
)

NAME = "polling"
SIZES = {"full": 20_000, "quick": 5_000}
POLL = 1.0  # watch_poll_seconds
CYCLES = 10
TARGET_RATIO = 1.1  # issue 15
STATS = ("newfstatat", "fstatat64", "statx", "lstat", "stat", "fstat")


def _strace(pid: int, seconds: float, out: Path) -> dict[str, int]:
    """Syscall counts of ``pid`` (all threads) over ``seconds``; {} without strace."""
    tool = shutil.which("strace")
    if tool is None:
        return {}
    proc = subprocess.Popen([tool, "-c", "-f", "-p", str(pid), "-o", str(out)],
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(seconds)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    counts: dict[str, int] = {}
    if not out.exists():
        return counts
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in STATS and parts[3].isdigit():
            counts[parts[-1]] = int(parts[3])
    return counts


def run(size: int) -> Result:
    folders = max(1, size // 100)
    notes: list[str] = []
    with workdir(NAME) as root:
        dep = deployment(root, "http://127.0.0.1:9", root / "nas", observer="polling",
                         watch_poll_seconds=POLL, rescan_seconds=3600,
                         reload_seconds=3600)  # fmt: skip
        tree = make_tree(dep.watch, size, folders)
        fill_ledger_completed(dep, tree)
        entries = size + folders
        start = time.process_time()
        for _ in range(CYCLES):
            assert bare_walk(str(dep.watch)) == size
        bare_cpu = (time.process_time() - start) / CYCLES
        with daemon(dep) as proc:
            try:
                wait_until(dep.watching, 60)
            except TimeoutError:
                raise RuntimeError(f"ingest did not start:\n{daemon_log(dep)}") from None
            time.sleep(POLL * 2)  # past the start-up scan
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(POLL * CYCLES)
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
            cycles = (t1 - t0) / POLL
            counts = _strace(proc.pid, POLL * 5, root / "strace.txt")
            assert proc.poll() is None, daemon_log(dep)
        states = dep.states()
    per_cycle = (cpu1 - cpu0) / cycles
    ratio = per_cycle / bare_cpu
    figures: dict[str, object] = {"cpu_s_per_cycle": round(per_cycle, 4)}
    stat_ok = True
    if counts:
        stats = sum(counts.values())
        per_entry = stats / 5 / entries
        figures["stat_calls_per_entry_per_cycle"] = round(per_entry, 3)
        figures["stat_syscalls"] = counts
        stat_ok = per_entry <= 1.0 + 1e-9 + 50 / entries  # + a few fixed ones per cycle
        notes.append("stat calls counted with strace -c -f over 5 cycles (strace slows it)")
    else:
        notes.append("strace not installed: stat calls per entry not measured")
    if states != {"COMPLETED": size}:
        notes.append(f"ledger changed while idle: {states}")
    return Result(
        name=NAME,
        size={"files": size, "folders": folders, "poll_s": POLL, "cycles": round(cycles, 1)},
        figures=figures,
        baseline={"bare_walk_cpu_s": round(bare_cpu, 4)},
        ratio=round(ratio, 2),
        target=f"<= {TARGET_RATIO}x bare walk CPU; <= 1 stat per entry per cycle",
        met=ratio <= TARGET_RATIO and stat_ok and states == {"COMPLETED": size},
        notes=notes,
    )
