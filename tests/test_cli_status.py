"""``ingest status``: counts, in flight, waiting, failures, watchers; exit code for monitoring."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ingest.ledger import Ledger

from .support.ledgers import HOUR, Setup, as_json, invoke, write_config
from .support.wait import wait_for


def healthy(root: Path) -> Path:
    """A ledger where all went well: two archived drops, a watcher that is fine."""
    config = write_config(root)
    ledger = Ledger.open(f"sqlite:///{root / 'ledger.db'}")
    now = time.time()
    with ledger.batch(now - HOUR) as tx:
        for name in ("a.mxf", "b.mxf"):
            drop_id = tx.add(rule="news", watch="/mnt/news", path=name)
            tx.transition(drop_id, "DETECTED", "COMPLETED", "done", finished_at=now - HOUR)
        tx.watcher("/mnt/news", "native", "ok", "ext4 is local", last_scan_at=now - 30)
    ledger.close()
    return config


def test_healthy_exits_0(tmp_path: Path) -> None:
    result = invoke("status", "--config", str(healthy(tmp_path)))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "healthy: 2 drops in the ledger"
    # The ledger's size on disk (file and WAL): what a prune makes smaller.
    assert re.fullmatch(
        rf"ledger: {re.escape(str(tmp_path / 'ledger.db'))} \(\d+\.\d [kM]B\)", lines[1]
    )
    assert "states: COMPLETED 2" in result.output
    assert "failures in the last 24 h: 0" in result.output
    assert "oldest waiting: nothing waits" in result.output
    assert all(len(line) <= 80 for line in lines[2:])  # all but the ledger's path
    assert "\x1b[" not in result.output


def test_status_json(setup: Setup) -> None:
    result = setup.run("status", "--json")
    assert result.exit_code == 1  # failures in the last 24 h
    doc = json.loads(result.stdout)
    assert doc["healthy"] is False
    assert doc["problems"] == ["2 drop(s) failed in the last 24 h"]
    assert doc["total"] == len(setup.ids)
    assert doc["states"] == {
        "DETECTED": 4, "SUBMITTING": 0, "SUBMITTED": 1, "RUNNING": 1, "RETRY_WAIT": 1,
        "COMPLETED": 2, "FAILED": 3, "REJECTED": 1, "SKIPPED": 1,
    }  # fmt: skip
    assert doc["rules"]["dpx"]["DETECTED"] == 1
    assert doc["rules"]["dpx"]["SUBMITTED"] == 1
    assert sum(doc["rules"]["news"].values()) == len(setup.ids) - 2
    flying = {d["id"]: d for d in doc["in_flight"]}
    assert set(flying) == {setup.ids["running"], setup.ids["submitted"]}
    running = flying[setup.ids["running"]]
    assert (running["request_id"], running["diva_state"], running["progress"]) == (
        104, "RUNNING", 10
    )  # fmt: skip
    assert doc["in_flight_total"] == 2
    reasons = {d["id"]: d["reason"] for d in doc["waiting"]}
    assert doc["oldest_waiting"]["id"] == setup.ids["marker"]
    assert reasons[setup.ids["marker"]] == "waiting for the ready marker REEL_2/_COMPLETE"
    assert reasons[setup.ids["retry_wait"]].startswith("retry at ")
    assert doc["failures_24h"]["count"] == 2
    assert [d["id"] for d in doc["failures_24h"]["recent"]] == [
        setup.ids["rejected"], setup.ids["failed"]
    ]  # fmt: skip
    assert {w["watch"]: w["observer"] for w in doc["watchers"]} == {
        str(setup.news): "native", str(setup.dpx): "polling"
    }  # fmt: skip
    assert all(w["health"] == "ok" for w in doc["watchers"])
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", doc["watchers"][0]["last_scan_at"])


def test_status_table(setup: Setup) -> None:
    result = setup.run("status")
    assert result.exit_code == 1
    out = result.output
    lines = out.splitlines()
    assert lines[0] == "NEEDS ATTENTION: 14 drops in the ledger"
    assert "! 2 drop(s) failed in the last 24 h" in out
    assert all(len(line) <= 80 for line in lines[2:]), max(lines[2:], key=len)
    rules = next(i for i, line in enumerate(lines) if line.startswith("RULE"))
    assert lines[rules].split() == ["RULE", "WAITING", "IN", "FLIGHT", "COMPLETED", "FAILED",
                                    "SKIPPED", "TOTAL"]  # fmt: skip
    assert lines[rules + 1].split() == ["dpx", "1", "1", "0", "0", "0", "2"]
    assert lines[rules + 2].split() == ["news", "4", "1", "2", "4", "1", "12"]
    assert "in flight: 2 requests:" in out
    running = next(line for line in lines if line.strip().startswith(str(setup.ids["running"])))
    assert "104" in running and "RUNNING" in running and "10%" in running
    assert f"oldest waiting: #{setup.ids['marker']} dpx REEL_2" in out
    assert "why: waiting for the ready marker REEL_2/_COMPLETE" in out
    assert "failures in the last 24 h: 2:" in out
    assert "DIVA refused the archive" in out


def test_settling_and_queued_reasons(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    with ledger.batch(time.time() - 600) as tx:
        first = tx.add(rule="news", watch="/w", path="a.mxf")
        tx.add(rule="news", watch="/w", path="b.mxf")
    ledger.close()
    doc = as_json(invoke("status", "--json", "--config", str(config)))
    assert doc["oldest_waiting"]["id"] == first
    assert doc["oldest_waiting"]["reason"].startswith("settling")
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    with ledger.batch() as tx:
        tx.update(first, settled_at=time.time())
    ledger.close()
    doc = as_json(invoke("status", "--json", "--config", str(config)))
    assert doc["oldest_waiting"]["reason"].startswith("queued")


@pytest.mark.parametrize("health", ["down", "paused"])
def test_a_watcher_down_or_paused_is_unhealthy(tmp_path: Path, health: str) -> None:
    config = healthy(tmp_path)
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    with ledger.batch() as tx:
        tx.watcher("/mnt/dpx", "polling", health, "the folder vanished (mount problem?)")
    ledger.close()
    result = invoke("status", "--config", str(config))
    assert result.exit_code == 1
    assert f"watcher /mnt/dpx is {health}: the folder vanished (mount problem?)" in result.output
    row = next(
        line for line in result.output.splitlines() if "/mnt/dpx" in line and "polling" in line
    )
    assert health in row.split()


def test_old_failures_do_not_count(tmp_path: Path) -> None:
    config = healthy(tmp_path)
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    now = time.time()
    with ledger.batch(now - 50 * HOUR) as tx:
        drop_id = tx.add(rule="news", watch="/mnt/news", path="x.mxf")
        tx.transition(drop_id, "DETECTED", "FAILED", "aborted", finished_at=now - 49 * HOUR)
    ledger.close()
    assert invoke("status", "--config", str(config)).exit_code == 0


def test_status_errors(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = invoke("status", "--config", str(config))
    assert result.exit_code == 8
    assert "no ledger at" in result.stderr
    assert invoke("status", "--config", str(tmp_path / "missing.toml")).exit_code == 3
    config.write_text('[ledger]\nurl = "sqlite:///:memory:"\n', encoding="utf-8")
    assert invoke("status", "--config", str(config)).exit_code == 2


def test_status_while_a_writer_holds_a_transaction(setup: Setup) -> None:
    conn = sqlite3.connect(setup.ledger, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")  # in WAL mode even this lets readers through
        conn.execute("UPDATE drops SET state = 'FAILED', finished_at = ?", (time.time(),))
        doc = json.loads(setup.run("status", "--json").stdout)
        assert doc["failures_24h"]["count"] == 2  # the uncommitted update is not seen
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_config_from_the_environment(setup: Setup) -> None:
    result = invoke("status", "--json", env={"INGEST_CONFIG": str(setup.config)})
    assert json.loads(result.stdout)["total"] == len(setup.ids)


# ---------------------------------------------------------------------------------------
# the terminal: colour only there, never with NO_COLOR; light imports


def _on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    main_fd, sub_fd = pty.openpty()
    os.set_blocking(main_fd, True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", *args],
        stdout=sub_fd,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "80", **env},
    )
    os.close(sub_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(main_fd)
    return b"".join(chunks).decode()


def test_colour_on_a_terminal_only(setup: Setup) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    args = ["status", "--config", str(setup.config)]
    coloured = _on_a_terminal(args, {"NO_COLOR": ""} if "NO_COLOR" in env else {})
    assert "\x1b[31m" in coloured  # failures in red
    plain = _on_a_terminal(args, {"NO_COLOR": "1"})
    assert "\x1b[" not in plain
    assert "NEEDS ATTENTION" in plain
    assert all(len(line) <= 80 for line in plain.splitlines()[2:])
    listing = _on_a_terminal(["ledger", "list", "--config", str(setup.config)], {"NO_COLOR": ""})
    assert "\x1b[32mCOMPLETED" in listing
    piped = subprocess.run(
        [sys.executable, "-m", "ingest", *args], capture_output=True, text=True, env=env
    )
    assert "\x1b[" not in piped.stdout


@pytest.mark.parametrize(
    "args",
    [["status"], ["ledger", "list", "--state", "FAILED", "--limit", "50"], ["ledger", "show", "1"]],
)
def test_read_commands_do_not_import_sqlalchemy(setup: Setup, args: list[str]) -> None:
    """``import sqlmodel`` alone costs a third of a second: the read side must not pay it."""
    code = (
        "import sys\n"
        "from ingest.cli import main\n"
        "try:\n"
        f"    main({[*args, '--config', str(setup.config)]!r})\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sqlmodel', 'sqlalchemy', 'httpx', 'pydantic', 'fastapi') or m == 'ingest.ledger')\n"
        "print('HEAVY', heavy, 'CODE', code, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY [] CODE" in proc.stderr, proc.stderr
    assert proc.stdout


# ---------------------------------------------------------------------------------------
# --watch: refreshed until Ctrl-C


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ended(proc: subprocess.Popen[bytes]) -> int:
    """The watch's exit code once Ctrl-C has been sent; killed (not left running into
    the next test) when it does not end."""
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def _watching(config: Path, **popen: object) -> subprocess.Popen[bytes]:
    """``status --watch``, started with SIGINT ignored, as a script's background job
    starts it (Python then installs no handler of its own): Ctrl-C must still end it."""
    cmd = [sys.executable, "-m", "ingest", "status", "--watch", "--interval", "0.2"]
    with (config.parent / "stderr.txt").open("ab") as err:
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            [*cmd, "--config", str(config)], stderr=err, preexec_fn=_ignore_sigint, **popen
        )


def test_watch_refreshes_until_ctrl_c_and_exits_0(tmp_path: Path) -> None:
    config = healthy(tmp_path)
    proc = _watching(config, stdout=subprocess.PIPE)
    stdout = proc.stdout
    assert stdout is not None
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.extend(iter(stdout.readline, b"")))
    reader.start()

    def text() -> str:
        return b"".join(out).decode()

    try:
        wait_for(lambda: text().count("healthy: 2 drops in the ledger") >= 2, timeout=30)
        # A drop fails meanwhile: a later refresh shows it, without restarting the watch.
        ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
        with ledger.batch(time.time()) as tx:
            drop_id = tx.add(rule="news", watch="/mnt/news", path="c.mxf")
            tx.transition(drop_id, "DETECTED", "FAILED", "DIVA 1002", finished_at=time.time())
        ledger.close()
        wait_for(lambda: "NEEDS ATTENTION: 3 drops in the ledger" in text(), timeout=30)
        wait_for(lambda: "failures in the last 24 h: 1" in text(), timeout=30)
    finally:
        proc.send_signal(signal.SIGINT)
        code = _ended(proc)
        reader.join(10)
        stdout.close()
    assert code == 0, (tmp_path / "stderr.txt").read_text()
    frames = text().split("ingest status at ")[1:]
    assert len(frames) >= 3 and "every 0.2 s (Ctrl-C to stop)" in frames[0]
    assert "\x1b[" not in text()  # not a terminal: frames follow one another, plain


def test_watch_on_a_terminal_redraws_in_place(tmp_path: Path) -> None:
    config = healthy(tmp_path)
    main_fd, sub_fd = pty.openpty()
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    proc = _watching(config, stdout=sub_fd, env=env)
    os.close(sub_fd)
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while seen.count(b"\x1b[H") < 3 and time.monotonic() < deadline:
            if select.select([main_fd], [], [], 0.5)[0]:
                seen += os.read(main_fd, 65536)
    finally:
        proc.send_signal(signal.SIGINT)
        code = _ended(proc)
        os.close(main_fd)
    assert code == 0, (tmp_path / "stderr.txt").read_text()
    # Each frame: cursor home, each line cleared to its end, the rest of the screen cleared.
    frame = seen.split(b"\x1b[H")[1]
    assert b"healthy: 2 drops in the ledger\x1b[K" in frame and frame.endswith(b"\x1b[J")
