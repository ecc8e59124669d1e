"""What every benchmark shares: the emulator, a deployment's files, results, the machine.

A benchmark is a module with ``NAME``, ``SIZES`` (``{"full": n, "quick": n}``) and
``run(size: int) -> Result``. Everything runs on 127.0.0.1; every temporary folder and
process a benchmark makes is removed or stopped before it returns.

The emulator, the config and rule files and the poll loop are the test suite's
(``tests/support/``), so a benchmark runs what the tests check; ``python -m bench`` runs
from the project root, where ``tests`` is a package.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support.deployment import config_toml, rule_toml
from tests.support.emulator import RunningEmulator, emulator_args, running_emulator
from tests.support.wait import wait_for

#: the environment variable the benchmark configs read the DIVA password from
PASSWORD_ENV = "INGEST_BENCH_DIVA_PASSWORD"  # noqa: S105 - a variable name, not a password
USER = "operator"


# --- results ------------------------------------------------------------------------------


@dataclass
class Result:
    """One benchmark's record in the JSON output."""

    name: str
    size: dict[str, Any]
    figures: dict[str, Any]
    baseline: dict[str, Any]
    ratio: float | None
    target: str
    met: bool | None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the benchmark's own wall time, setup included

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """The human table line."""
        verdict = {True: "met", False: "MISSED", None: "n/a"}[self.met]
        ratio = "-" if self.ratio is None else f"{self.ratio:.2f}"
        size = ", ".join(f"{k}={v}" for k, v in self.size.items())
        figures = ", ".join(f"{k}={_fmt(v)}" for k, v in self.figures.items())
        base = ", ".join(f"{k}={_fmt(v)}" for k, v in self.baseline.items())
        return (
            f"{self.name:<15} {verdict:<6} ratio {ratio:<6} [{size}] {figures}"
            + (f" | baseline: {base}" if base else "")
            + f" | target: {self.target} ({self.seconds:.0f} s)"
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def machine() -> dict[str, Any]:
    """Python, CPU model and core count of this machine."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
    }


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100), nearest-rank on the sorted values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


# --- temporary folders, processes -----------------------------------------------------------


@contextlib.contextmanager
def workdir(name: str) -> Iterator[Path]:
    """A fresh temporary folder, removed afterwards whatever happens."""
    root = Path(tempfile.mkdtemp(prefix=f"ingest-bench-{name}-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; TimeoutError at the deadline."""
    return wait_for(condition, timeout, interval)


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, in MB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return math.nan


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


#: Runs a command as its child and reports that child's wall time and peak RSS. A small
#: launcher, because a child forked straight from a big process (this one) inherits the
#: parent's resident pages in its ``ru_maxrss`` until it execs.
_LAUNCHER = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[1:])
wall = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"BENCH-CHILD {wall:.6f} {rss}", file=sys.stderr)
sys.exit(code)
"""


def timed_child(cmd: Sequence[str], env: dict[str, str] | None = None,
                timeout: float = 600) -> tuple[float, float, str]:  # fmt: skip
    """Run ``cmd`` to its end: (wall seconds, peak RSS in MB, output tail)."""
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *cmd], capture_output=True, env=env, timeout=timeout
    )
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    found = [line for line in out.splitlines() if line.startswith("BENCH-CHILD ")]
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"{' '.join(cmd[:5])} exited {proc.returncode}:\n{out[-2000:]}")
    _, wall, rss = found[-1].split()
    return float(wall), int(rss) / 1024, out[-2000:]


_PROBE = r"""
import json, sys, time
def work():
    s = 0
    for i in range(20000):
        s += i * i
    return s
chunks, end = [], time.time() + float(sys.argv[1])
while time.time() < end:
    began, wall = time.perf_counter(), time.time()
    work()
    chunks.append((wall, (time.perf_counter() - began) * 1000))
    time.sleep(0.02)
print(json.dumps(chunks))
"""


@contextlib.contextmanager
def host_probe(seconds: float) -> Iterator[list[tuple[float, float]]]:
    """A process timing one fixed piece of CPU work (about 1.5 ms) every 20 ms for
    ``seconds``: a piece that takes several times the median marks a moment when the
    machine itself ran slow (a shared host's vCPU starved; here about 100 ms every
    1.5 s, with nothing else running). Yields ``[(wall time, ms)]``, filled as the
    block ends."""
    chunks: list[tuple[float, float]] = []
    proc = subprocess.Popen([sys.executable, "-c", _PROBE, str(seconds)], stdout=subprocess.PIPE)
    try:
        yield chunks
    finally:
        out, _ = proc.communicate(timeout=seconds + 60)
        chunks.extend((float(w), float(ms)) for w, ms in json.loads(out))


_FIRST_SCAN = re.compile(
    r"first scan: ([\d,]+) files in ([\d,]+) folders in ([\d.]+) s"
    r"; the ledger's ([\d,]+) settled paths read in ([\d.]+) s"
)


def startup_profile(dep: Deployment) -> dict[str, float]:
    """Where one more ``ingest run --until-idle`` of ``dep`` spends its time, from its own
    INFO log (JSON, stamped to the millisecond): Python's start, the imports, the config
    and rules up to the engine's start; the read of what the ledger settled; the first
    scan (the walk); and the rest (the sweep; the quiet wait of ``--until-idle``, half a
    second from the engine's start at least, which a small tree's start shows; the stop;
    the interpreter's exit).

    Run apart from the timed rounds, which log warnings only: the figures explain a
    ratio, they are not it.
    """
    cmd = dep.run_command("--until-idle", log=("--log-level", "info", "--log-format", "json"))
    began = time.time()
    proc = subprocess.run(cmd, capture_output=True, env=python_env(), timeout=1800)
    ended = time.time()
    err = proc.stderr.decode(errors="replace")
    started = scanned = None
    for line in err.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        at = datetime.fromisoformat(record["time"]).timestamp()
        if record["message"].startswith("ingest engine starting"):
            started = at
        elif found := _FIRST_SCAN.search(record["message"]):
            scanned = float(found[3]), float(found[5])
    if proc.returncode != 0 or started is None or scanned is None:
        raise RuntimeError(f"no start-up profile (exit {proc.returncode}):\n{err[-2000:]}")
    scan_s, read_s = scanned
    to_start = started - began
    return {
        "wall_s": round(ended - began, 2),
        "to_engine_start_s": round(to_start, 2),
        "ledger_read_s": round(read_s, 2),
        "scan_s": round(scan_s, 2),
        "rest_s": round(ended - began - to_start - read_s - scan_s, 2),
    }


def python_env() -> dict[str, str]:
    return {**os.environ, PASSWORD_ENV: USER, "PYTHONDONTWRITEBYTECODE": "1"}


# --- the emulator ---------------------------------------------------------------------------


class Emulator(RunningEmulator):
    """A running emulator with one source server ``NAS``, media ``DISK1`` and one user."""

    @property
    def nas(self) -> Path:
        return self.servers["NAS"]


@contextlib.contextmanager
def emulator(root: Path, *args: str) -> Iterator[Emulator]:
    """Start an emulator (instant completion, no throughput limit) under ``root``."""
    nas = root / "nas"
    nas.mkdir(parents=True, exist_ok=True)
    servers = {"NAS": nas}
    flags = emulator_args(servers, ["DISK1"], {USER: USER})
    with running_emulator(root / "emulator", servers, [*flags, *args]) as emu:
        yield Emulator(emu.url, emu.state, emu.servers, emu.process)


# --- a deployment: config, rule, watch folder -----------------------------------------------


@dataclass
class Deployment:
    """``ingest.toml``, one rule file and its watch folder ``NAS/watch``."""

    root: Path
    watch: Path
    config: Path
    ledger: Path
    rules: Path

    @property
    def ledger_url(self) -> str:
        return f"sqlite:///{self.ledger}"

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ingest", *args, "--config", str(self.config)]

    def run_command(
        self, *flags: str, log: Sequence[str] = ("--log-level", "warning")
    ) -> list[str]:
        """``ingest --log-level warning run --config ... [flags]`` (``log``: the logging
        options instead)."""
        return [
            sys.executable, "-m", "ingest", *log, "run", "--config", str(self.config), *flags,
        ]  # fmt: skip

    def watching(self) -> bool:
        """True once the engine has finished its first scan of the watch folder."""
        if not self.ledger.exists():
            return False
        try:
            with contextlib.closing(sqlite3.connect(self.ledger, timeout=5)) as db:
                row = db.execute(
                    "SELECT last_scan_at FROM watchers WHERE watch = ?", (str(self.watch),)
                ).fetchone()
        except sqlite3.Error:
            return False
        return bool(row and row[0])

    def states(self) -> dict[str, int]:
        with contextlib.closing(sqlite3.connect(self.ledger, timeout=30)) as db:
            return dict(db.execute("SELECT state, count(*) FROM drops GROUP BY state").fetchall())


def deployment(
    root: Path,
    url: str,
    nas: Path,
    *,
    settle: float = 0.2,
    poll_seconds: float = 1.0,
    max_in_flight: int = 50,
    observer: str = "auto",
    rescan_seconds: float = 60.0,
    watch_poll_seconds: float = 5.0,
    reload_seconds: float = 2.0,
    delete_on_source: bool = True,
) -> Deployment:
    """Write a service config and one rule watching ``NAS/watch`` (``**/*.mxf`` files)."""
    watch = nas / "watch"
    watch.mkdir(parents=True, exist_ok=True)
    rules = root / "rules"
    rules.mkdir(exist_ok=True)
    rule: dict[str, Any] = {
        "name": "bench", "watch": str(watch), "match": ["**/*.mxf"],
        "settle_seconds": settle, "object_name": "{stem}", "collection": "BENCH",
        "media": "DISK1", "source_server": "NAS", "file_path_root": "/watch",
        "observer": observer, "delete_on_source": delete_on_source,
    }  # fmt: skip
    (rules / "bench.toml").write_text(rule_toml(rule))
    ledger = root / "ledger" / "ingest.db"
    config = root / "ingest.toml"
    diva = {
        "url": url, "username": USER, "password_env": PASSWORD_ENV,
        "poll_seconds": poll_seconds, "max_in_flight": max_in_flight, "max_attempts": 3,
    }  # fmt: skip
    engine = {
        "rescan_seconds": rescan_seconds, "reload_seconds": reload_seconds,
        "watch_poll_seconds": watch_poll_seconds,
    }  # fmt: skip
    config.write_text(config_toml(diva, ledger, rules, engine))
    os.environ.setdefault(PASSWORD_ENV, USER)
    return Deployment(root, watch, config, ledger, rules)


@contextlib.contextmanager
def daemon(
    dep: Deployment, *flags: str, log_name: str = "daemon.log"
) -> Iterator[subprocess.Popen[bytes]]:
    """``ingest run`` as a subprocess; stopped (SIGTERM, then SIGKILL) on the way out."""
    with open(dep.root / log_name, "ab") as log:
        proc = subprocess.Popen(
            dep.run_command(*flags), stdout=log, stderr=subprocess.STDOUT, env=python_env()
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def daemon_log(dep: Deployment, log_name: str = "daemon.log") -> str:
    path = dep.root / log_name
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


# --- trees and ledgers built fast -----------------------------------------------------------


def make_tree(watch: Path, files: int, folders: int, size: int = 16) -> list[tuple[str, int, int]]:
    """``files`` small files spread over ``folders`` folders: [(relpath, size, mtime_ns)]."""
    per = max(1, files // max(1, folders))
    payload = b"x" * size
    out: list[tuple[str, int, int]] = []
    made = 0
    for d in range(folders):
        folder = watch / f"d{d:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per if d < folders - 1 else files - made):
            rel = f"d{d:05d}/f{made:07d}.mxf"
            fd = os.open(watch / rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, payload)
            st = os.fstat(fd)
            os.close(fd)
            out.append((rel, st.st_size, st.st_mtime_ns))
            made += 1
            del i
    return out


def fill_ledger_completed(dep: Deployment, tree: Sequence[tuple[str, int, int]]) -> None:
    """Record every file of ``tree`` as COMPLETED-but-present, straight into SQLite."""
    from ingest.ledger import Ledger

    Ledger.open(dep.ledger_url).close()  # the schema, by the engine's own migrations
    now = time.time()
    rows = (
        ("bench", str(dep.watch), rel, "file", "COMPLETED", Path(rel).stem, "BENCH", 1,
         False, size, mtime, 1, now, now, now)
        for rel, size, mtime in tree
    )  # fmt: skip
    with contextlib.closing(sqlite3.connect(dep.ledger)) as db:
        db.execute("PRAGMA synchronous=OFF")
        with db:
            db.executemany(
                "INSERT INTO drops (rule, watch, path, kind, state, object_name, collection,"
                " attempts, source_deleted, size, mtime_ns, file_count, detected_at,"
                " finished_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
    fold_counts(dep)


def fold_counts(dep: Deployment) -> None:
    """Fold the count changes a bulk insert left in the ledger (its triggers write one per
    row) into ``drop_totals``, as the daemon's turns would have over the years."""
    from ingest.ledger import Ledger

    ledger = Ledger.open(dep.ledger_url, migrate=False)
    try:
        while True:
            with ledger.batch() as tx:
                if not tx.fold_counts(500_000, 1):
                    break
    finally:
        ledger.close()


def bare_walk(root: str) -> int:
    """The baseline walk: ``os.scandir`` and one ``lstat`` per entry; returns the file count."""
    import stat

    count = 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                elif stat.S_ISREG(st.st_mode):
                    count += 1
    return count
