"""13. Failover: from a folder's holder dying (SIGKILL) to the first archive request sent by
the node that takes the folder over.

Two real ``ingest run`` nodes on one PostgreSQL ledger (a throwaway server on 127.0.0.1)
share one watch folder with ``[cluster] lease_seconds`` = LEASE. Each trial finds the
holder in the ``leases`` table, SIGKILLs it and, at that instant, renames a new file into
the folder; the figure is from the kill to the emulator recording that file's archive
request (its own ``time.time()``), which only the taker can send. The dead node is then
restarted, to stand by for the next trial, in which the roles swap.

What bounds it: the lease runs out between two thirds of a lease and a whole lease after
the kill (it was renewed every third), the taker finds it on its next renewal (up to a
third more), then recovers the folder from the ledger, scans it and waits out the file's
settle time (SETTLE). Baseline: the lease length; the ratio is p50 over it. Target: the
max under the lease plus two seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

from tests.support.postgres import PASSWORD, PostgresServer, server_bin, start_server

from .common import (
    Result,
    deployment,
    emulator,
    median,
    python_env,
    wait_until,
    workdir,
)

NAME = "failover"
#: trials (SIGKILLs)
SIZES = {"full": 10, "quick": 3}
LEASE = 3.0
SETTLE = 0.2
NODES = ("fa", "fb")


def _holders(server: PostgresServer, dbname: str) -> dict[str, str]:
    """watch -> live holder, read from PostgreSQL."""
    with server.connect(dbname) as conn:
        try:
            rows = conn.execute(
                "SELECT watch, holder FROM leases WHERE holder IS NOT NULL "
                "AND expires_at > EXTRACT(EPOCH FROM now())"
            ).fetchall()
        except psycopg.errors.UndefinedTable:  # made by the first node's migrations
            return {}
    return {str(w): str(h) for w, h in rows}


def _alive(server: PostgresServer, dbname: str) -> int:
    """How many nodes are live (joined and beating)."""
    with server.connect(dbname) as conn:
        try:
            row = conn.execute(
                "SELECT count(*) FROM nodes WHERE expires_at > EXTRACT(EPOCH FROM now())"
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(str(row[0])) if row else 0


@contextlib.contextmanager
def _nodes() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """The running nodes by name; each stopped on the way out."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _start(root: Path, command: list[str], name: str, password: str) -> subprocess.Popen[bytes]:
    env = {**python_env(), "INGEST_NODE": name, "INGEST_BENCH_PG_PASSWORD": password}
    with open(root / f"{name}.log", "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def run(size: int) -> Result:

    if server_bin() is None:
        raise RuntimeError("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
    times: list[float] = []
    notes: list[str] = []
    with workdir(NAME) as root:
        logging.getLogger("ingest").setLevel(logging.WARNING)
        server = start_server(durable=True)
        try:
            url = server.create_database()
            dbname = url.rsplit("/", 1)[1]
            with emulator(root) as emu:
                dep = deployment(root, emu.url, emu.nas, settle=SETTLE)
                text = dep.config.read_text().replace(
                    f'url = "sqlite:///{dep.ledger}"\n',
                    f'url = "{url}"\npassword_env = "INGEST_BENCH_PG_PASSWORD"\n',
                )
                dep.config.write_text(text + f"[cluster]\nlease_seconds = {LEASE}\n")
                command = dep.run_command()
                with _nodes() as procs:
                    for name in NODES:
                        procs[name] = _start(root, command, name, PASSWORD)
                    watch = str(dep.watch)
                    for trial in range(size):
                        holder = wait_until(
                            lambda: _running(procs) and _holders(server, dbname).get(watch), 60
                        )
                        # the standby must be up (joined) before its peer dies
                        wait_until(lambda: _alive(server, dbname) >= len(NODES), 60)
                        object_name = f"t{trial:03d}"
                        staged = dep.root / f"{object_name}.mxf"
                        staged.write_bytes(os.urandom(4096))
                        procs[holder].kill()
                        killed = time.time()
                        os.rename(staged, dep.watch / staged.name)
                        procs[holder].wait(30)
                        sent: float = wait_until(_submitted(emu.submitted, object_name), 60, 0.02)
                        times.append(sent - killed)
                        procs[holder] = _start(root, command, holder, PASSWORD)
        except Exception as exc:
            tails = "".join(
                f"\n--- {n}.log\n" + (root / f"{n}.log").read_text(errors="replace")[-1500:]
                for n in NODES
                if (root / f"{n}.log").exists()
            )
            raise RuntimeError(f"{exc}{tails}") from exc
        finally:
            server.stop("immediate")
            shutil.rmtree(server.root, ignore_errors=True)
    p50, worst = median(times), max(times)
    notes.append(f"lease {LEASE:g} s, settle {SETTLE:g} s, 2 nodes, PostgreSQL 15 on 127.0.0.1")
    return Result(
        name=NAME,
        size={"trials": size},
        figures={
            "failover_p50_s": round(p50, 2),
            "failover_max_s": round(worst, 2),
            "failover_min_s": round(min(times), 2),
            "trials_s": [round(t, 2) for t in times],
        },
        baseline={"lease_s": LEASE},
        ratio=round(p50 / LEASE, 2),
        target=f"max < lease + 2 s ({LEASE + 2:g} s)",
        met=worst < LEASE + 2,
        notes=notes,
    )


def _submitted(submitted: Callable[[], dict[str, float]], name: str) -> Callable[[], float | None]:
    """When the archive request for ``name`` reached the emulator, once it has."""
    return lambda: submitted().get(name)


def _running(procs: dict[str, subprocess.Popen[bytes]]) -> bool:
    """True, or raise if a node exited (a config error, a crash): no use waiting on it."""
    for name, proc in procs.items():
        if proc.poll() is not None:
            raise RuntimeError(f"node {name} exited with {proc.returncode}")
    return True
