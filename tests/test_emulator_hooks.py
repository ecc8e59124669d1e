"""The emulator's archive hook (``--archive-hook``, ``PUT /_emulator/hooks``) and its
``keep_sources_rate`` knob, against the session emulators (reset before each test).

The hook is told of each archive call, and answers, before DIVA creates the request; a
hook it cannot reach is a failure the test can see, never a silent pass.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.emulator.server import EmulatorProcess

from .support.emulator import (
    DivaApi,
    RunningEmulator,
    archive_body,
    emulator_args,
    faults,
    make_servers,
    put_file,
    refused,
    submit,
)

DELETE_ON_SOURCE = 0x100


class Recorder:
    """A loopback hook that records each call with what the emulator held at that moment."""

    def __init__(self, emulator_db: Path) -> None:
        self.calls: list[tuple[dict[str, Any], int]] = []  # (payload, archive requests then)
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                uri = f"{emulator_db.as_uri()}?mode=ro"
                with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as conn:
                    (held,) = conn.execute(
                        "SELECT count(*) FROM requests WHERE object_name = ?",
                        (payload["objectName"],),
                    ).fetchone()
                recorder.calls.append((payload, int(held)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder(emulator: RunningEmulator) -> Iterator[Recorder]:
    found = Recorder(emulator.state / "emulator.db")
    try:
        yield found
    finally:
        found.close()


def hooks(emulator: RunningEmulator, archive: str | None = None, **kw: Any) -> httpx.Response:
    doc = {"archive": archive, **kw}
    return httpx.put(f"{emulator.url}/_emulator/hooks", json=doc, timeout=10)


def test_the_hook_hears_of_each_archive_before_the_request_exists(
    emulator: RunningEmulator, recorder: Recorder
) -> None:
    assert hooks(emulator, recorder.url).json()["archive"] == recorder.url
    put_file(emulator.servers["NAS"], "a.mxf")
    with DivaApi(emulator.url, "operator", "operator") as api:
        submit(api, "archive", archive_body("hooked", ["a.mxf"]))
        # Refused by DIVA (no such media), still an arrival the hook is told of.
        bad = api.post("/manager/requests/archive", archive_body("nomedia", ["a.mxf"], media="X"))
        refused(bad, 1017, 404)
        # Restores are not archives: no call.
        api.post("/manager/requests/restore", {"objectName": "hooked", "collectionName": "TEST",
                                               "destinationServer": "OUT"})  # fmt: skip
    assert recorder.calls == [
        ({"objectName": "hooked", "collectionName": "TEST", "components": ["a.mxf"]}, 0),
        ({"objectName": "nomedia", "collectionName": "TEST", "components": ["a.mxf"]}, 0),
    ]
    status = httpx.get(f"{emulator.url}/_emulator/hooks", timeout=10).json()
    assert status == {"archive": recorder.url, "calls": 2, "failures": 0, "lastFailure": ""}
    assert httpx.get(f"{emulator.url}/_emulator/stats", timeout=10).json()["hooks"] == status


def test_an_unreachable_hook_is_a_failure_and_the_archive_goes_on(
    emulator: RunningEmulator,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    hooks(emulator, f"http://127.0.0.1:{port}/gone").raise_for_status()
    put_file(emulator.servers["NAS"], "b.mxf")
    with DivaApi(emulator.url, "operator", "operator") as api:
        rid = submit(api, "archive", archive_body("unheard", ["b.mxf"]))
        assert api.wait(rid)["stateName"] == "DIVA_COMPLETED"
    status = httpx.get(f"{emulator.url}/_emulator/hooks", timeout=10).json()
    assert status["calls"] == 1 and status["failures"] == 1
    assert "ConnectError" in status["lastFailure"]
    log = (emulator.state / "emulator.log").read_text()
    assert "archive hook failed for unheard" in log


def test_hook_urls_are_checked_and_reset_forgets_them(
    emulator: RunningEmulator, recorder: Recorder
) -> None:
    for bad in ({"archive": "http://192.0.2.1/hook"}, {"archive": "ftp://127.0.0.1/x"},
                {"archive": 7}, {"other": None}):  # fmt: skip
        refused(httpx.put(f"{emulator.url}/_emulator/hooks", json=bad, timeout=10), 1008, 400)
    hooks(emulator, recorder.url).raise_for_status()
    httpx.post(f"{emulator.url}/_emulator/reset", timeout=30).raise_for_status()
    assert httpx.get(f"{emulator.url}/_emulator/hooks", timeout=10).json()["archive"] is None
    put_file(emulator.servers["NAS"], "c.mxf")
    with DivaApi(emulator.url, "operator", "operator") as api:
        submit(api, "archive", archive_body("quiet", ["c.mxf"]))
    assert recorder.calls == []


def test_archive_hook_on_the_command_line(tmp_path: Path) -> None:
    servers = make_servers(tmp_path / "servers")
    state = tmp_path / "state"
    recorder = Recorder(state / "emulator.db")
    try:
        args = [*emulator_args(servers), "--archive-hook", recorder.url]
        with EmulatorProcess(state, args) as process:
            put_file(servers["NAS"], "d.mxf")
            with DivaApi(process.url, "operator", "operator") as api:
                submit(api, "archive", archive_body("cli", ["d.mxf"]))
            httpx.post(f"{process.url}/_emulator/reset", timeout=30).raise_for_status()
            # A reset goes back to the command line's hook, not to none.
            status = httpx.get(f"{process.url}/_emulator/hooks", timeout=10).json()
            assert status["archive"] == recorder.url and status["calls"] == 0
    finally:
        recorder.close()
    assert [payload["objectName"] for payload, _ in recorder.calls] == ["cli"]
    refused_start = subprocess.run(
        [sys.executable, "-m", "ingest", "emulator", "--state", str(tmp_path / "s2"),
         "--archive-hook", "http://198.51.100.7:9/x"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused_start.returncode == 2
    assert "must be on a loopback address" in refused_start.stderr


# -- keep_sources_rate -------------------------------------------------------------------


def test_keep_sources_archives_everything_and_deletes_nothing(emulator: RunningEmulator) -> None:
    nas = emulator.servers["NAS"]
    files = [put_file(nas, rel, seed=i) for i, rel in enumerate(["k/a.mxf", "k/sub/b.mxf"])]
    before = {p: p.read_bytes() for p in files}
    faults(emulator, keep_sources_rate=1)
    with DivaApi(emulator.url, "operator", "operator") as api:
        rid = submit(api, "archive", archive_body("kept", ["k"], qos=DELETE_ON_SOURCE))
        done = api.wait(rid)
        info = api.get("/manager/objects/info", params={"objectName": "kept",
                                                        "collectionName": "TEST"})  # fmt: skip
    assert done["stateName"] == "DIVA_COMPLETED"
    assert sorted(c["fileName"] for c in info.json()["components"]) == ["k/a.mxf", "k/sub/b.mxf"]
    assert {p: p.read_bytes() for p in files} == before
    # Back to a DIVA that deletes: the same call removes the sources.
    faults(emulator, keep_sources_rate=0)
    with DivaApi(emulator.url, "operator", "operator") as api:
        rid = submit(api, "archive", archive_body("gone", ["k"], qos=DELETE_ON_SOURCE))
        assert api.wait(rid)["stateName"] == "DIVA_COMPLETED"
    assert not any(p.exists() for p in files)


def test_keep_sources_rate_is_checked_and_on_the_command_line(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    refused(httpx.put(f"{emulator.url}/_emulator/faults", json={"keep_sources_rate": 1.5},
                      timeout=10), 1008, 400)  # fmt: skip
    assert httpx.get(f"{emulator.url}/_emulator/faults", timeout=10).json()[
        "keep_sources_rate"] == 0  # fmt: skip
    args = [*emulator_args(make_servers(tmp_path / "servers")), "--keep-sources-rate", "0.25"]
    with EmulatorProcess(tmp_path / "state", args) as process:
        knobs = httpx.get(f"{process.url}/_emulator/faults", timeout=10).json()
    assert knobs["keep_sources_rate"] == 0.25
