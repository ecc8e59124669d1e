"""Ledgers filled the way the engine fills them, and the operator CLI run in-process.

``build(root)`` is the realistic ledger the ``ingest ledger|status|retry`` tests read (the
``setup`` fixture); ``invoke`` runs ``ingest ARGS`` through the real entry function.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from ingest.cli import main
from ingest.ledger import Ledger, State

HOUR = 3600.0


@dataclass
class Setup:
    """A config, its ledger and the watch folders, with the drops by nickname."""

    root: Path
    config: Path
    ledger: Path
    news: Path
    dpx: Path
    ids: dict[str, int]
    #: when the ledger was built: its drops' times count back from it
    now: float

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        return invoke(*args, "--config", str(self.config), env=env)


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str
    output: str  # both, interleaved as a terminal shows them


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``ingest ARGS`` through :func:`ingest.cli.main` (which turns errors into exits)."""
    code = 0
    with CliRunner().isolation(env=env) as (out, err, both):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    text = [s.getvalue().decode("utf-8", "replace") for s in (out, err, both)]
    return Result(code, *text)


def write_config(root: Path, extra: str = "") -> Path:
    config = root / "ingest.toml"
    config.write_text(f'[ledger]\nurl = "sqlite:///ledger.db"\n{extra}', encoding="utf-8")
    return config


def life(
    ledger: Ledger,
    start: float,
    steps: list[tuple[str, str, dict[str, Any]]],
    **fields: Any,
) -> int:
    """Add a drop at ``start``, then take ``steps`` (state, detail, fields) a minute apart."""
    with ledger.batch(start) as tx:
        drop_id = tx.add(detail=f"detected by rule {fields['rule']!r}", **fields)
    state = str(State.DETECTED)
    for i, (to_state, detail, more) in enumerate(steps, 1):
        with ledger.batch(start + 60 * i) as tx:
            if to_state == "update":
                tx.update(drop_id, **more)
                continue
            tx.transition(drop_id, state, to_state, detail, **more)
            state = to_state
    return drop_id


def archived(name: str, request_id: int, at: float) -> list[tuple[str, str, dict[str, Any]]]:
    body = json.dumps({"objectName": name, "collectionName": "NEWS", "media": "TAPE1"})
    return [
        ("update", "", {"settled_at": at + 30, "size": 1234}),
        ("SUBMITTING", f"attempt 1: archiving as {name!r}",
         {"object_name": name, "collection": "NEWS", "media": "TAPE1", "qos": 256, "body": body,
          "attempts": 1}),
        ("SUBMITTED", f"DIVA accepted request {request_id}",
         {"request_id": request_id, "submitted_at": at + 120}),
        ("RUNNING", "DIVA is running it", {"diva_state": "RUNNING", "progress": 10}),
    ]  # fmt: skip


def build(root: Path) -> Setup:
    """A realistic ledger: every state, two rules, failures old and new, a re-dropped path.

    Its times count back from the moment it is built (``Setup.now``), because the CLI
    measures ``--since 100m`` from the real clock and a suite runs for many minutes."""
    now = time.time()
    news, dpx = root / "news", root / "dpx"
    for folder in (news, dpx / "REEL_1", dpx / "REEL_3", news / "Spaces and ünïcode"):
        folder.mkdir(parents=True, exist_ok=True)
    for name in ("b.mxf", "c.mxf", "s.mxf", "dup.mxf", "Spaces and ünïcode/clip [1].mxf"):
        (news / name).write_bytes(b"x" * 10)
    config = write_config(root)
    ledger = Ledger.open(f"sqlite:///{root / 'ledger.db'}")
    ids: dict[str, int] = {}
    n, d = {"rule": "news", "watch": str(news)}, {"rule": "dpx", "watch": str(dpx)}
    done = [
        ("COMPLETED", "DIVA completed request 101; DIVA deleted the source",
         {"diva_state": "COMPLETED", "progress": 100, "status_code": 1000,
          "status_name": "DIVA_OK", "finished_at": now - 47 * HOUR, "source_deleted": True}),
    ]  # fmt: skip
    ids["done"] = life(
        ledger, now - 48 * HOUR, archived("a", 101, now - 48 * HOUR) + done, path="a.mxf", **n
    )
    ids["old_failed"] = life(
        ledger,
        now - 72 * HOUR,
        [
            (
                "FAILED",
                "attempts ran out",
                {"error": "DIVA unreachable", "finished_at": now - 70 * HOUR},
            )
        ],
        path="old.mxf",
        **n,
    )
    ids["dup_failed"] = life(
        ledger, now - 30 * HOUR,
        [("FAILED", "aborted", {"error": "aborted", "finished_at": now - 29 * HOUR})],
        path="dup.mxf", **n,
    )  # fmt: skip
    ids["dup_done"] = life(
        ledger, now - 20 * HOUR,
        [("COMPLETED", "done", {"object_name": "dup", "finished_at": now - 19 * HOUR,
                                "source_deleted": False})],
        path="dup.mxf", **n,
    )  # fmt: skip
    ids["failed"] = life(
        ledger,
        now - 3 * HOUR,
        [
            *archived("b", 102, now - 3 * HOUR),
            ("FAILED", "DIVA aborted request 102: DIVA_AR_DRIVE",
             {"diva_state": "ABORTED", "status_code": 1000, "abort_reason": "DIVA_AR_DRIVE",
              "error": "DIVA aborted request 102", "finished_at": now - 2 * HOUR}),
        ],
        path="b.mxf",
        **n,
    )  # fmt: skip
    ids["rejected"] = life(
        ledger, now - 2 * HOUR,
        [("REJECTED", "DIVA refused: 1017",
          {"status_code": 1017, "status_name": "DIVA_ERR_UNKNOWN_MEDIA", "media": "NOPE",
           "error": "DIVA refused the archive: unknown media", "finished_at": now - HOUR})],
        path="c.mxf", **n,
    )  # fmt: skip
    ids["skipped"] = life(
        ledger, now - 2 * HOUR,
        [("SKIPPED", "object exists, on_conflict = skip", {"finished_at": now - HOUR})],
        path="s.mxf", **n,
    )  # fmt: skip
    ids["running"] = life(
        ledger, now - 90 * 60, archived("run", 104, now - 90 * 60), path="run.mxf", **n
    )
    ids["submitted"] = life(
        ledger, now - 80 * 60,
        archived("REEL_1", 105, now - 80 * 60)[:3],
        path="REEL_1", kind="folder", **d,
    )  # fmt: skip
    ids["marker"] = life(
        ledger, now - 70 * 60,
        [("update", "", {"settled_at": now - 60 * 60,
                         "error": "waiting for the ready marker REEL_2/_COMPLETE"})],
        path="REEL_2", kind="folder", **d,
    )  # fmt: skip
    ids["retry_wait"] = life(
        ledger, now - 50 * 60,
        [("RETRY_WAIT", "DIVA unreachable; attempt 2 in 5 min",
          {"error": "DIVA unreachable", "attempts": 1, "next_attempt_at": now + 300})],
        path="r.mxf", **n,
    )  # fmt: skip
    ids["queued"] = life(
        ledger, now - 40 * 60, [("update", "", {"settled_at": now - 39 * 60})], path="q.mxf", **n
    )
    ids["unicode"] = life(ledger, now - 30 * 60, [], path="Spaces and ünïcode/clip [1].mxf", **n)
    ids["settling"] = life(ledger, now - 10 * 60, [], path="new.mxf", **n)
    with ledger.batch(now - 60) as tx:
        tx.watcher(str(news), "native", "ok", "ext4 is local", last_scan_at=now - 60)
        tx.watcher(str(dpx), "polling", "ok", "forced by the rule", last_scan_at=now - 90)
    ledger.close()
    return Setup(root, config, root / "ledger.db", news, dpx, ids, now)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def ids_of(result: Result) -> list[int]:
    return [d["id"] for d in as_json(result)]
