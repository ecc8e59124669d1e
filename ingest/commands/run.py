"""``ingest run``: the daemon."""

from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import AbstractContextManager, nullcontext
from types import FrameType
from typing import TYPE_CHECKING

import click

from ..config import find_config, load_config
from ..nodes import NodeLock

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..engine.monitor import Monitor

log = logging.getLogger("ingest.run")


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Service config (default: env INGEST_CONFIG, else ./ingest.toml).",
)
@click.option(
    "--until-idle",
    is_flag=True,
    help="Exit 0 once every drop is in a final state and nothing new appeared for one "
    "settle window (for cron jobs and tests).",
)
def run(config_path: str | None, until_idle: bool) -> None:
    """Watch every rule's drop folder and archive what settles there.

    Runs until SIGTERM or SIGINT: the first one finishes the ledger write in hand and
    exits 0 (requests in flight are picked up by the next start); a second one exits at
    once.

    \b
    Example:
      ingest run --config /etc/ingest/ingest.toml
      DIVA_PASSWORD=... ingest --log-format json run --until-idle
    """
    from ..engine import Engine
    from ..web import serve

    config = load_config(find_config(config_path, required=True))
    # One node on an SQLite ledger: a second one is refused before it touches anything.
    lock = None
    if config.ledger.path is not None:
        lock = NodeLock.acquire(config.ledger.path, config.cluster.node_name())
    try:
        engine = Engine(config)
        if threading.current_thread() is threading.main_thread():
            _install_signals(engine.stop)
        # [http]: the status page, API and metrics; [notify]: notifications. Both stop
        # once the engine has stopped (the last digest goes out then).
        with serve(config, engine.monitor), _notifying(config, engine.monitor):
            engine.run(until_idle=until_idle)
    finally:
        if lock is not None:
            lock.release()


def _notifying(config: ServiceConfig, monitor: Monitor) -> AbstractContextManager[object]:
    """``[notify]``'s notifier while the daemon runs; without ``[notify]``, the notifier
    (and Apprise, a tenth of a second of imports) is not even imported."""
    if config.notify is None:
        return nullcontext()
    from ..notify.notifier import notifying

    return notifying(config, monitor)


def _install_signals(stop: object) -> None:
    stopping = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            # SQLite's journal keeps the ledger whole even if we die mid-transaction.
            os.write(2, b"second signal: exiting now\n")
            os._exit(128 + signum)
        stopping = True
        log.info("%s received: stopping after the step in hand", signal.Signals(signum).name)
        assert callable(stop)
        stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
