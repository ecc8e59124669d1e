"""5. Ledger queries on a large ledger, as whole commands.

A ledger of N drops (mostly COMPLETED over a year, 1 % FAILED, some REJECTED and SKIPPED,
a few in flight) is built straight into SQLite after the engine's own migrations made the
schema. Then the wall time of ``python -m ingest status`` and ``python -m ingest ledger
list --state FAILED --limit 50`` (Python start-up included), against the ``sqlite3``
command-line tool answering the same SQL on the same file. Median of several runs, after
one warm-up run each (the file is in the page cache, as on a server that runs the daemon).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator

from .common import Deployment, Result, deployment, fold_counts, median, python_env, workdir

NAME = "ledger_queries"
SIZES = {"full": 1_000_000, "quick": 100_000}
RUNS = 5
#: each command's target (issue 15): 0.2 s up to a million drops, 0.5 s at ten million
TARGET_SECONDS = 0.2
TARGET_SECONDS_10M = 0.5
RULES = ("news", "sport", "promo", "archive", "dpx")

_COLUMNS = (
    "id, rule, watch, path, kind, state, object_name, collection, media, qos, priority, "
    "diva_state, progress, request_id, status_code, status_name, abort_reason, attempts, "
    "source_deleted, size, mtime_ns, file_count, body, error, detected_at, settled_at, "
    "submitted_at, finished_at, next_attempt_at, updated_at"
)
#: What ``ingest status`` asks (ingest/overview.py), as one script for the sqlite3 tool.
STATUS_SQL = f"""
SELECT state, rule, count(*) FROM drops GROUP BY state, rule;
SELECT {_COLUMNS} FROM drops WHERE state = 'SUBMITTED' ORDER BY id LIMIT 100;
SELECT {_COLUMNS} FROM drops WHERE state = 'RUNNING' ORDER BY id LIMIT 100;
SELECT {_COLUMNS} FROM drops WHERE state = 'DETECTED' ORDER BY id LIMIT 1;
SELECT {_COLUMNS} FROM drops WHERE state = 'SUBMITTING' ORDER BY id LIMIT 1;
SELECT {_COLUMNS} FROM drops WHERE state = 'RETRY_WAIT' ORDER BY id LIMIT 1;
SELECT count(*) FROM drops WHERE state = 'FAILED' AND finished_at >= unixepoch() - 86400;
SELECT {_COLUMNS} FROM drops WHERE state = 'FAILED' AND finished_at >= unixepoch() - 86400
  ORDER BY finished_at DESC LIMIT 10;
SELECT count(*) FROM drops WHERE state = 'REJECTED' AND finished_at >= unixepoch() - 86400;
SELECT {_COLUMNS} FROM drops WHERE state = 'REJECTED' AND finished_at >= unixepoch() - 86400
  ORDER BY finished_at DESC LIMIT 10;
SELECT watch, observer, health, detail, last_scan_at, updated_at FROM watchers ORDER BY watch;
"""  # noqa: S608 - constant text
LIST_SQL = f"SELECT {_COLUMNS} FROM drops WHERE state = 'FAILED' ORDER BY id DESC LIMIT 50;"  # noqa: S608


def _rows(n: int, dep: Deployment) -> Iterator[tuple[object, ...]]:
    rng = random.Random(6)
    now = time.time()
    year = 365 * 86400
    watch = str(dep.watch)
    for i in range(n):
        r = rng.random()
        state = (
            "FAILED" if r < 0.01 else "REJECTED" if r < 0.012 else "SKIPPED" if r < 0.02
            else "COMPLETED"
        )  # fmt: skip
        if i >= n - 60:
            state = ("RUNNING", "SUBMITTED", "RETRY_WAIT", "DETECTED")[i % 4]
        detected = now - year + year * i / n
        finished = None if state in ("RUNNING", "SUBMITTED", "RETRY_WAIT", "DETECTED") else (
            detected + 60
        )  # fmt: skip
        rule = RULES[i % len(RULES)]
        name = f"clip{i:07d}"
        doc = {"objectName": name, "collectionName": rule.upper(), "components": [f"{name}.mxf"]}
        body = json.dumps({**doc, "media": "DISK1", "qos": 256})
        error = "DIVA aborted request: DIVA_AR_DRIVE" if state == "FAILED" else None
        yield (
            rule, watch, f"{rule}/{name}.mxf", "file", state, name, rule.upper(), "DISK1", 256,
            -1, i + 1, 1, 1000 + int(state == "FAILED"), error, 1_000_000, int(detected * 1e9),
            1, body, detected, detected + 1, detected + 2, finished, now + 60, detected + 60,
        )  # fmt: skip


def build(dep: Deployment, n: int) -> None:
    from ingest.ledger import Ledger

    Ledger.open(dep.ledger_url).close()
    with contextlib.closing(sqlite3.connect(dep.ledger)) as db:
        db.execute("PRAGMA synchronous=OFF")
        with db:
            db.executemany(
                "INSERT INTO drops (rule, watch, path, kind, state, object_name, collection,"
                " media, qos, priority, request_id, attempts, status_code, error, size,"
                " mtime_ns, file_count, body, detected_at, settled_at, submitted_at,"
                " finished_at, next_attempt_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                _rows(n, dep),
            )
            db.execute(
                "INSERT INTO watchers (watch, observer, health, detail, last_scan_at,"
                " updated_at) VALUES (?, 'native', 'ok', 'ext4 is local', ?, ?)",
                (str(dep.watch), time.time(), time.time()),
            )
    fold_counts(dep)
    with contextlib.closing(sqlite3.connect(dep.ledger)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _time(cmd: list[str], ok: tuple[int, ...] = (0,)) -> tuple[float, int]:
    """Median wall seconds of ``cmd`` over RUNS runs (after a warm-up), and its output size."""
    walls: list[float] = []
    out = b""
    for i in range(RUNS + 1):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, env=python_env(), timeout=120)
        wall = time.perf_counter() - start
        if proc.returncode not in ok:
            raise RuntimeError(f"{cmd} exited {proc.returncode}: {proc.stderr.decode()[-1000:]}")
        out = proc.stdout
        if i:
            walls.append(wall)
    return median(walls), len(out)


def run(size: int) -> Result:
    notes: list[str] = []
    with workdir(NAME) as root:
        nas = root / "nas"
        dep = deployment(root, "http://127.0.0.1:9", nas)  # no DIVA needed: read side only
        start = time.perf_counter()
        build(dep, size)
        build_s = time.perf_counter() - start
        megabytes = dep.ledger.stat().st_size / 1e6
        status_s, _ = _time([*dep.command("status")], ok=(0, 1))
        list_s, _ = _time([*dep.command("ledger", "list", "--state", "FAILED", "--limit", "50")])
        sqlite3_cli = shutil.which("sqlite3")
        if sqlite3_cli:
            base = [sqlite3_cli, "-readonly", str(dep.ledger)]
            notes.append("baseline: the sqlite3 command-line tool")
        else:
            code = "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); [print(r) for s in "
            code += "sys.argv[2].split(';') if s.strip() for r in c.execute(s)]"
            base = [sys.executable, "-c", code, str(dep.ledger)]
            notes.append("baseline: no sqlite3 tool here; python -c 'import sqlite3...' instead")
        base_status_s, _ = _time([*base, STATUS_SQL])
        base_list_s, _ = _time([*base, LIST_SQL])
    worst = max(status_s, list_s)
    target = TARGET_SECONDS if size <= 1_000_000 else TARGET_SECONDS_10M
    return Result(
        name=NAME,
        size={
            "drops": size,
            "ledger_mb": round(megabytes, 1),
            # drops rows and their indexes only: bench soak gives a real run's growth,
            # transitions included
            "bytes_per_drop": round(megabytes * 1e6 / size) if size else None,
            "build_s": round(build_s, 1),
        },
        figures={"status_s": round(status_s, 3), "list_failed_s": round(list_s, 3)},
        baseline={
            "sqlite3_status_s": round(base_status_s, 3),
            "sqlite3_list_s": round(base_list_s, 3),
        },
        ratio=round(status_s / base_status_s, 2) if base_status_s else None,
        target=f"each < {target} s (ratio: status vs sqlite3)",
        met=worst < target,
        notes=notes,
    )
