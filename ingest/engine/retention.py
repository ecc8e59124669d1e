"""``[ledger] keep_days``: the daemon prunes its own ledger, in a thread of its own.

The prune (:mod:`ingest.prune`) takes the ledger's write lock one small batch at a time,
so the engine's turns go on meanwhile; it runs on its own connection, so a slow export
never holds up a turn. Each run exports to a new file in ``keep_export_dir``.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from .. import defaults
from ..config import LedgerConfig
from ..ledger import Ledger
from ..prune import prune

__all__ = ["Retention"]

log = logging.getLogger("ingest.engine")


class Retention:
    """Runs a prune once per ``every`` seconds while ``keep_days`` is set."""

    def __init__(
        self,
        config: LedgerConfig,
        now: float,
        *,
        first: float = defaults.LEDGER_PRUNE_FIRST_SECONDS,
        every: float = defaults.LEDGER_PRUNE_EVERY_SECONDS,
    ) -> None:
        self.config = config
        self.every = every
        self._next = now + first
        self._thread: threading.Thread | None = None
        self.last: str | None = None  # what the last run did, for the log and tests

    @property
    def enabled(self) -> bool:
        return self.config.keep_days is not None and self.config.keep_export_dir is not None

    def tick(self, now: float) -> None:
        """Start a prune when one is due and none is running (monotonic ``now``)."""
        if not self.enabled or now < self._next:
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._next = now + self.every
        self._thread = threading.Thread(target=self._run, name="ingest-prune", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        days, folder = self.config.keep_days, self.config.keep_export_dir
        assert days is not None and folder is not None  # (enabled)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        export = folder / f"pruned-{stamp}.jsonl"
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            ledger = Ledger.open(self.config.url, migrate=False, password=self.config.password())
            try:
                done = prune(ledger, before=time.time() - days * 86_400, export=export)
            finally:
                ledger.close()
        except Exception as exc:  # a prune that fails is retried next period; never fatal
            self.last = f"failed: {exc}"
            log.error("[ledger] keep_days: the prune failed: %s", exc)
            return
        if done.exported == 0:
            export.unlink(missing_ok=True)
        self.last = f"removed {done.deleted}"
        log.info(
            "[ledger] keep_days=%g: removed %d drop(s) and %d transition(s) finished over "
            "%g days ago, exported to %s (%s); kept %d whose files remain",
            days, done.deleted, done.transitions, days, export if done.exported else "-",
            done.vacuum, done.kept_files_remain,
        )  # fmt: skip
