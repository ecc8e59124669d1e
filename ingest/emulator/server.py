"""Serving the emulator: the uvicorn server, and two helpers for tests.

- :func:`serve` runs it in the foreground (``ingest emulator``).
- :class:`EmulatorProcess` starts ``python -m ingest emulator`` as a subprocess on a free
  loopback port and waits for its ready file; it can be killed and restarted (crash tests).
- :class:`EmulatorThread` runs the same app in-process in a thread.

The listening socket is bound before uvicorn starts, so ``--port 0`` yields the real port
and the printed URL is right.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import uvicorn

from .app import create_app
from .config import EmulatorConfig

__all__ = ["EmulatorConfig", "EmulatorProcess", "EmulatorThread", "serve"]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it every reply waits ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _url(config: EmulatorConfig, sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{config.scheme}://{shown}:{port}"


class _Server(uvicorn.Server):
    """A uvicorn server that announces itself once it really listens."""

    def __init__(self, config: uvicorn.Config, url: str, emulator: EmulatorConfig) -> None:
        super().__init__(config)
        self.url = url
        self.emulator = emulator
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        if self.emulator.ready_file:
            path = self.emulator.ready_file
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps({"url": self.url, "pid": os.getpid()}))
            os.replace(tmp, path)
        self.ready.set()


def _server(config: EmulatorConfig) -> tuple[_Server, socket.socket]:
    sock = _bind(config.host, config.port)
    url = _url(config, sock)
    uv_config = uvicorn.Config(
        create_app(config),
        log_level="warning",
        access_log=False,
        ssl_certfile=str(config.certfile) if config.certfile else None,
        ssl_keyfile=str(config.keyfile) if config.keyfile else None,
        timeout_keep_alive=30,
        # Slow replies (the reply_latency knob) must not hold a stop for long.
        timeout_graceful_shutdown=3,
    )
    return _Server(uv_config, url, config), sock


def serve(config: EmulatorConfig, announce: bool = True) -> None:
    """Run the emulator until SIGINT/SIGTERM; prints the URL once listening."""
    server, sock = _server(config)
    if announce:

        def say_ready() -> None:
            server.ready.wait()
            print(f"DIVA emulator listening on {server.url} (profile {config.profile})", flush=True)

        threading.Thread(target=say_ready, daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class EmulatorThread:
    """The emulator in this process, on a free loopback port, in a background thread."""

    def __init__(self, config: EmulatorConfig, port: int = 0) -> None:
        self.config = dataclasses.replace(config, port=port)
        self._server, self._sock = _server(self.config)
        self.url = self._server.url
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self, timeout: float = 20.0) -> EmulatorThread:
        self._thread.start()
        if not self._server.ready.wait(timeout):
            self.stop()
            raise RuntimeError("the emulator thread did not start")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=20)
        self._sock.close()

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmulatorProcess:
    """``python -m ingest emulator`` as a subprocess on a free loopback port.

    ``args`` are extra command-line flags (``--server``, ``--media``, ...); ``profile`` is
    ``--profile``. The process's output goes to ``STATE/emulator.log``. :meth:`kill` is
    SIGKILL, for crash tests.
    """

    def __init__(
        self,
        state: Path,
        args: Sequence[str] = (),
        host: str = "127.0.0.1",
        profile: str = "lenient",
    ) -> None:
        self.state = Path(state)
        self.args = list(args)
        self.host = host
        self.profile = profile
        self.url = ""
        self.pid = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 30.0) -> EmulatorProcess:
        self.state.mkdir(parents=True, exist_ok=True)
        ready = self.state / "ready.json"
        ready.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "ingest",
            "emulator",
            "--host",
            self.host,
            "--port",
            "0",
            "--state",
            str(self.state),
            "--ready-file",
            str(ready),
            "--profile",
            self.profile,
            *self.args,
        ]
        self._log = open(self.state / "emulator.log", "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = (self.state / "emulator.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the emulator did not start:\n{log}")
            time.sleep(0.02)
        info: dict[str, Any] = json.loads(ready.read_text())
        self.url, self.pid = info["url"], info["pid"]
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop the process (SIGTERM: graceful) and release its log file."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL: the emulator dies without any chance to tidy up."""
        self.stop(signal.SIGKILL)

    def restart(self, timeout: float = 30.0) -> EmulatorProcess:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
