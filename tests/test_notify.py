"""Notifications (``[notify]``): a real ``ingest run`` against the emulator, sending through
Apprise's ``json://`` to an HTTP receiver in the test, on loopback.

The emulator refuses an archive to an unknown media (1017), so a rule with ``media =
"NOPE"`` makes REJECTED drops on demand. The receiver can answer 200, answer 500, or
hang until the test lets it go.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.config import load_config
from ingest.engine.monitor import DivaView, FolderView, Monitor, Snapshot
from ingest.errors import ConfigError
from ingest.notify.events import Event, Lookout, digest
from ingest.notify.urls import Scrub, secrets_of, shown

from .support.deployment import Deployment
from .support.http import daemon, enable_http, samples
from .support.wait import wait_for

#: a credential in the notification URL: it must never reach the daemon's log
URL_PASSWORD = "n0tify-s3cret-pw"


@dataclass
class Receiver:
    """A webhook on loopback: records each POST; ``mode`` is ``ok``, ``fail`` or ``hang``."""

    mode: str = "ok"
    messages: list[dict[str, Any]] = field(default_factory=list)
    tries: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def url(self) -> str:
        return f"json://ingest:{URL_PASSWORD}@127.0.0.1:{self.port}/hook"

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.messages)


@contextlib.contextmanager
def receiver(mode: str = "ok") -> Iterator[Receiver]:
    box = Receiver(mode)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with box.lock:
                box.tries += 1
            if box.mode == "hang":
                box.release.wait(60)
            if box.mode == "fail":
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            with box.lock:
                box.messages.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    box.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield box
    finally:
        box.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def enable_notify(dep: Deployment, url: str, **keys: Any) -> None:
    values = {"urls": [url], **keys}
    table = "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    dep.config_path.write_text(dep.config_path.read_text() + "[notify]\n" + table)


def burst(dep: Deployment, names: list[str]) -> None:
    """``names`` appear in the watch folder at once (written aside, then renamed in)."""
    aside = dep.root / "aside"
    aside.mkdir(exist_ok=True)
    for name in names:
        (aside / name).write_bytes(b"x" * 100)
    for name in names:
        os.replace(aside / name, dep.watch / name)


def test_a_burst_of_refusals_sends_one_digest_naming_them_all(deployment: Deployment) -> None:
    dep = deployment
    dep.rule(media="NOPE")  # the emulator refuses it: 1017, REJECTED
    enable_http(dep)  # daemon() waits for its address: the daemon is up
    with receiver() as box:
        # A window wide enough for the burst's 20 refusals on a loaded machine.
        enable_notify(dep, box.url(), digest_seconds=20, events=["rejected", "failed"])
        names = [f"refused{i:02d}.mxf" for i in range(20)]
        with daemon(dep):
            burst(dep, names)
            rows = [dep.wait_state(name, "REJECTED", timeout=60) for name in names]
            spread = max(r["updated_at"] for r in rows) - min(r["updated_at"] for r in rows)
            assert spread < 20, f"the burst took {spread:.1f} s: more than one window"
            if spread < 10:  # the usual case: the window is still open, nothing sent yet
                assert box.received() == []
            wait_for(box.received, timeout=60)
            # (the receiver has it a moment before the sender logs that it was sent)
            sent = "notification sent to json://ingest:****@127.0.0.1"
            wait_for(lambda: sent in (dep.root / "daemon.log").read_text(), timeout=30)
            log = (dep.root / "daemon.log").read_text()
        (message,) = box.received()  # exactly one, also after the daemon stopped
    assert message["title"].endswith(": 20 REJECTED"), message
    assert message["type"] == "failure"
    text = message["message"]
    for name, row in zip(names, rows, strict=True):
        line = next(line for line in text.splitlines() if f"/{name} " in line)
        assert f"{dep.watch}/{name} (rule news)" in line and "DIVA 1017" in line, line
        assert f"ingest ledger show {row['id']}" in line
    assert "ingest status" in text
    assert URL_PASSWORD not in log


def test_a_failing_receiver_is_retried_then_the_message_is_dropped_and_counted(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.rule(media="NOPE")
    enable_http(dep)
    with receiver("fail") as box:
        enable_notify(dep, box.url(), digest_seconds=0)
        with daemon(dep) as url, httpx.Client(base_url=url, timeout=30) as http:
            (dep.watch / "refused.mxf").write_bytes(b"x")
            dep.wait_state("refused.mxf", "REJECTED")

            def dropped() -> dict[tuple[tuple[str, str], ...], float] | None:
                found = samples(http.get("/metrics").text)["ingest_notifications_total"]
                return found if found[(("outcome", "dropped"),)] == 1 else None

            counts = wait_for(dropped, timeout=40)  # 1 + 2 + 4 s of backoff, and the tries
            log = (dep.root / "daemon.log").read_text()
    assert counts[(("outcome", "retried"),)] == 3
    assert counts[(("outcome", "sent"),)] == 0
    assert box.tries == 4 and box.messages == []
    assert "failed (try 1 of 4), retrying in 1 s" in log
    assert "dropped after 4 tries" in log
    assert URL_PASSWORD not in log


def test_a_receiver_that_hangs_does_not_hold_drops_up(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    dep.rule("refusing", watch=str(dep.watch), match=["**/*.bad"], media="NOPE")
    enable_http(dep)
    with receiver("hang") as box:
        enable_notify(dep, box.url(), digest_seconds=0)
        with daemon(dep):
            (dep.watch / "first.bad").write_bytes(b"x")
            dep.wait_state("first.bad", "REJECTED")
            wait_for(lambda: box.tries >= 1, timeout=30)  # the sender is stuck in it now
            names = [f"clip{i}.mxf" for i in range(5)]
            burst(dep, names)
            for name in names:
                dep.wait_state(name, "COMPLETED", timeout=60)
            assert box.tries == 1 and box.messages == []  # still hanging
            box.release.set()


def test_lookout_tells_folders_outages_and_a_refused_edit_once(tmp_path: Path) -> None:
    from ingest.ledger import Ledger

    ledger_path = tmp_path / "ledger.db"
    Ledger.open(f"sqlite:///{ledger_path}").close()
    monitor = Monitor()
    lookout = Lookout(
        monitor, ledger_path, events=frozenset({"folder", "outage", "rules", "stuck"}),
        outage_after=60, stuck_after=3600,
    )  # fmt: skip
    base = monitor.snapshot

    def publish(diva: DivaView, *folders: FolderView) -> None:
        monitor.snapshot = Snapshot(
            base.started_at, 0, 1, None, diva, folders, 0, 0,
        )  # fmt: skip

    up = DivaView(True, "DIVA answered", 1000.0)
    down = DivaView(False, "connection refused", 1000.0)
    publish(down, FolderView("/w", "native", "paused", "the share is unmounted"))
    (paused,) = lookout.look(1010.0)
    assert paused.kind == "folder" and paused.line == "/w: paused: the share is unmounted"
    assert lookout.look(1020.0) == []  # said once, not again while it lasts
    (outage,) = lookout.look(1061.0)
    assert outage.kind == "outage" and "unreachable for 1m 01s" in outage.line
    assert "connection refused" in outage.line
    assert lookout.look(1100.0) == []
    publish(up, FolderView("/w", "native", "ok", ""))
    back = lookout.look(1200.0)
    assert [(e.kind, e.alarm) for e in back] == [("folder", False), ("outage", False)]
    title, body = digest(back, host="h")
    assert title == "ingest on h: back to normal" and "/w: watched again" in body

    # A refused rule edit, as the engine's RulesRecord writes it: told once per refusal.
    problem = {"file": "/r/news.toml", "line": 3, "text": "news.toml:3: key 'media': missing"}
    with contextlib.closing(sqlite3.connect(ledger_path)) as conn, conn:
        conn.execute(
            "INSERT INTO rules_state (id, version, loaded_at, refused_since, problems, "
            "updated_at) VALUES (1, 'abcdef0123456789', 1.0, 1500.0, ?, 1500.0)",
            (json.dumps([problem]),),
        )
    (refused,) = lookout.look(1501.0)
    assert refused.kind == "rules" and "version abcdef012345" in refused.line
    assert "news.toml:3: key 'media': missing" in refused.line
    assert lookout.look(1502.0) == []


def test_digest_caps_the_drops_named_and_says_how_to_see_the_rest() -> None:
    events = [Event("failed", f"/w/clip{i}.mxf (rule r): DIVA 1002: x") for i in range(1000)]
    events.append(Event("folder", "/w: down: gone"))
    title, body = digest(events, host="h")
    assert title == "ingest on h: 1000 FAILED, 1 folder(s) down"
    assert body.count("/w/clip") == 50
    assert "... and 950 more: ingest ledger list --state FAILED" in body
    assert "/w: down: gone" in body


def test_notify_urls_are_checked_and_never_echoed(tmp_path: Path) -> None:
    config = tmp_path / "ingest.toml"
    config.write_text(
        "[notify]\n"
        f'urls = ["json://127.0.0.1:9/ok", "nosuch://u:{URL_PASSWORD}@host", "mailto://"]\n'
        'events = ["failed", "explode"]\ndigest_seconds = -1\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    text = str(raised.value)
    assert "urls[1]: Apprise knows no service 'nosuch://'" in text
    assert "urls[2]: Apprise cannot read this mailto:// URL" in text
    assert "unknown event 'explode'" in text and "digest_seconds" in text
    assert URL_PASSWORD not in text
    config.write_text('[notify]\nurls = ["json://127.0.0.1:9/hook"]\n')
    notify = load_config(config).notify
    assert notify is not None and notify.digest_seconds == 60 and "rules" in notify.events
    assert "json://" not in repr(notify)


def test_url_secrets_are_masked_and_scrubbed() -> None:
    slack = "slack://T1234ABCD/B1234ABCD/abcdefghijklmnopqrstuvwx"
    assert "abcdefghijklmnopqrstuvwx" not in shown(slack)
    assert shown(f"mailto://bob:{URL_PASSWORD}@example.com").startswith("mailto://bob:****@")
    scrub = Scrub(secrets_of([slack, f"json://u:{URL_PASSWORD}@127.0.0.1:9/hook"]))
    import logging

    record = logging.LogRecord("apprise", 30, "", 0, "to %s and %s", (slack, URL_PASSWORD), None)
    scrub.filter(record)
    assert "abcdefghijklmnopqrstuvwx" not in record.getMessage()
    assert URL_PASSWORD not in record.getMessage()


def test_a_refused_rule_edit_is_notified_and_shown_by_ingest_rules_refused(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.rule()
    enable_http(dep)
    with receiver() as box:
        enable_notify(dep, box.url(), digest_seconds=0, events=["rules"])
        with daemon(dep) as url, httpx.Client(base_url=url, timeout=30) as http:

            def refused(value: int) -> bool:
                found = samples(http.get("/metrics").text)["ingest_rules_refused"]
                return found[()] == value

            wait_for(lambda: refused(0))
            path = dep.rule(qos="fastest")  # an unknown QoS: the daemon refuses the edit
            wait_for(lambda: refused(1), timeout=30)
            (message,) = wait_for(box.received, timeout=30)
            assert message["title"].endswith(": 1 rule edit refused")
            assert (
                f"{path}:" in message["message"] and "unknown QoS 'fastest'" in message["message"]
            )
            dep.rule(collection="FIXED")
            wait_for(lambda: refused(0), timeout=30)
            assert len(box.received()) == 1  # the fix is no alarm


def test_the_sender_drops_the_oldest_when_full_and_what_is_left_at_stop() -> None:
    from prometheus_client import CollectorRegistry

    from ingest import defaults
    from ingest.notify.sender import Message, Sender

    registry = CollectorRegistry()
    # Not started: nothing leaves, so the queue fills.
    sender = Sender(("json://127.0.0.1:9/a", "json://127.0.0.1:9/b"), registry)
    for i in range(defaults.NOTIFY_QUEUE_MESSAGES + 3):
        sender.put(Message(f"m{i}", "body"))

    def dropped() -> float | None:
        return registry.get_sample_value("ingest_notifications_total", {"outcome": "dropped"})

    assert dropped() == 3 * 2  # the 3 oldest, for each of the 2 URLs
    sender.stop(within=0)
    assert dropped() == (defaults.NOTIFY_QUEUE_MESSAGES + 3) * 2
