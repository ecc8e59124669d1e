"""The daemon's HTTP endpoint (``[http] listen``): a real ``ingest run`` against the
emulator over loopback, a real watch folder, and plain HTTP requests.

Each daemon listens on port 0 (the system picks a free one) and logs the address it got;
the tests read it from the log. ``/metrics`` is parsed with prometheus-client's own parser
and compared with the ledger read by plain ``sqlite3``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.config import load_config
from ingest.errors import ConfigError

from .leakcheck import PASSWORD, SECRET_FORMS, TOKEN
from .support.deployment import DIVA_PASSWORD_ENV, Deployment
from .support.emulator import DivaApi
from .support.http import daemon, enable_http, samples
from .support.wait import wait_for

#: a token as an admin would make one (``openssl rand -hex 24``)
HTTP_TOKEN = "5f0c1b7e9a2d4c6e8f10a3b5c7d9e1f2a4b6c8d0e2f4a6b8"


def ledger_counts(dep: Deployment) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """(rule, state) -> drops now, and (rule, state) -> transitions into that state."""
    with contextlib.closing(sqlite3.connect(dep.ledger_path, timeout=30)) as conn:
        drops = conn.execute("SELECT rule, state, count(*) FROM drops GROUP BY 1, 2").fetchall()
        steps = conn.execute(
            "SELECT d.rule, t.to_state, count(*) FROM transitions t "
            "JOIN drops d ON d.id = t.drop_id GROUP BY 1, 2"
        ).fetchall()
    return {(r, s): n for r, s, n in drops}, {(r, s): n for r, s, n in steps}


def cli_json(dep: Deployment, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "ingest", *args, "--config", str(dep.config_path), "--json"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


def test_metrics_status_and_drops_match_the_ledger_after_a_run(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    enable_http(dep)
    with daemon(dep) as url, httpx.Client(base_url=url, timeout=30) as http:
        for i in range(3):
            (dep.watch / f"clip{i}.mxf").write_bytes(b"x" * (100 + i))
        # A stem ending in a space is an unsafe object name: REJECTED by the rules.
        (dep.watch / "bad .mxf").write_bytes(b"bad")
        for i in range(3):
            dep.wait_state(f"clip{i}.mxf", "COMPLETED")
        dep.wait_state("bad .mxf", "REJECTED")
        # The snapshot is published just after the turn that committed the last answer.
        wait_for(lambda: http.get("/healthz").json()["engine"]["in_flight"] == 0)

        health = http.get("/healthz")
        assert health.status_code == 200, health.text
        doc = health.json()
        assert doc["ok"] and doc["ledger"]["writable"] and doc["diva"]["reachable"] is True
        assert doc["paused"] == [] and [f["watch"] for f in doc["folders"]] == [str(dep.watch)]

        scrape = http.get("/metrics")
        assert scrape.status_code == 200
        assert scrape.headers["content-type"].startswith("text/plain")
        got = samples(scrape.text)
        drops, steps = ledger_counts(dep)
        gauge = {
            (dict(k)["rule"], dict(k)["state"]): v for k, v in got["ingest_drops"].items() if v
        }
        assert gauge == drops == {("news", "COMPLETED"): 3, ("news", "REJECTED"): 1}
        # The ledger was new: every transition it holds happened since this daemon started.
        counted = {
            (dict(k)["rule"], dict(k)["state"]): v
            for k, v in got["ingest_transitions_total"].items()
        }
        assert counted == steps
        calls = {
            (dict(k)["call"], dict(k)["outcome"]): v
            for k, v in got["ingest_diva_calls_total"].items()
        }
        assert calls[("archive", "ok")] == len(dep.archive_requests()) == 3
        assert got["ingest_diva_call_seconds_count"][(("call", "archive"),)] == 3
        assert got["ingest_settle_to_submit_seconds_count"][()] == steps[("news", "SUBMITTED")]
        assert got["ingest_ledger_commit_seconds_count"][()] > 0
        assert got["ingest_folder_up"] == {(("watch", str(dep.watch)),): 1.0}
        assert got["ingest_in_flight"][()] == 0
        assert got["ingest_ready_queue"][()] == 0

        # The API answers what the CLI prints, from the same code.
        status = http.get("/api/status").json()
        cli = cli_json(dep, "status")
        for doc_ in (status, cli):
            doc_.pop("now")
            # The file grows meanwhile (its WAL takes each rescan's watcher row).
            assert doc_.pop("ledger_bytes") > 0
            for watcher in doc_["watchers"]:  # rescanned every 2 s meanwhile
                del watcher["last_scan_at"], watcher["updated_at"]
        assert status == cli
        listed = http.get("/api/drops", params={"state": "completed", "limit": "2"}).json()
        assert listed == cli_json(dep, "ledger", "list", "--state", "COMPLETED", "--limit", "2")
        every = http.get("/api/drops", params=[("state", "REJECTED"), ("state", "COMPLETED")])
        ids = [d["id"] for d in every.json()]
        assert ids == sorted(ids, reverse=True)  # newest first
        assert {d["path"] for d in every.json()} == {
            "bad .mxf",
            "clip0.mxf",
            "clip1.mxf",
            "clip2.mxf",
        }
        assert http.get("/api/drops", params={"rule": "other"}).json() == []
        bad = http.get("/api/drops", params={"state": "DONE"})
        assert bad.status_code == 400 and "COMPLETED" in bad.json()["error"]

        # The page, server-rendered: usable without its script.
        page = http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for text in ("clip0.mxf", "bad .mxf", "REJECTED", "<svg", "Requests in flight"):
            assert text in page.text, text
        nonce = re.search(r"script-src 'nonce-([^']+)'", page.headers["content-security-policy"])
        assert nonce and f'<script nonce="{nonce.group(1)}">' in page.text
        parts = http.get("/api/page").json()
        assert "clip2.mxf" in parts["sections"]["latest"]
        assert "3 completed in the last 24 h" in parts["sections"]["chart"]

        # Read-only, and deaf to a page elsewhere that rebinds its name to loopback.
        assert http.post("/api/status").status_code == 405
        assert http.get("/", headers={"Host": "evil.example"}).status_code == 421


def test_healthz_is_503_while_the_ledger_cannot_be_written_and_200_again(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.rule()
    enable_http(dep)
    with daemon(dep) as url, httpx.Client(base_url=url, timeout=30) as http:
        wait_for(lambda: http.get("/healthz").status_code == 200, timeout=30)
        # Another process holds the write lock: every write of the engine waits out its
        # busy timeout and fails, as on a ledger whose disk stopped taking writes.
        holder = sqlite3.connect(dep.ledger_path, timeout=30, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            (dep.watch / "late.mxf").write_bytes(b"late")

            def unwritable() -> dict[str, Any] | None:
                answer = http.get("/healthz")
                doc: dict[str, Any] = answer.json()
                if answer.status_code == 503 and not doc["ledger"]["writable"]:
                    return doc
                return None

            doc = wait_for(unwritable, timeout=60, interval=0.2)
            assert not doc["ok"]
            assert any("ledger is not writable" in r and "locked" in r for r in doc["reasons"])
            # Still says what it knows of DIVA and the folders.
            assert "reachable" in doc["diva"] and doc["paused"] == []
            metrics = samples(http.get("/metrics").text)
            assert metrics["ingest_ledger_writable"][()] == 0
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        wait_for(lambda: http.get("/healthz").status_code == 200, timeout=60, interval=0.2)
        dep.wait_state("late.mxf", "COMPLETED", timeout=60)


def test_a_non_loopback_listen_without_a_token_is_refused(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    (dep.watch / "kept.mxf").write_bytes(b"kept")
    # A documentation address (TEST-NET-1): the daemon must refuse before binding anything.
    enable_http(dep, listen="192.0.2.10:9180")
    done = subprocess.run(
        [sys.executable, "-m", "ingest", "run", "--config", str(dep.config_path)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, DIVA_PASSWORD_ENV: "operator"},
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "[http]" in done.stderr and "listen" in done.stderr
    assert "not a loopback address" in done.stderr and "token" in done.stderr
    assert dep.archive_requests() == [] and not dep.ledger_path.exists()


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("9180", "must be HOST:PORT"),
        ("127.0.0.1:99999", "must be HOST:PORT"),
        ("::1:9180", "in brackets"),
        ("ingest.example:9180", "an IP address or 'localhost'"),
    ],
)
def test_listen_is_checked_when_the_config_loads(tmp_path: Path, listen: str, message: str) -> None:
    config = tmp_path / "ingest.toml"
    config.write_text(f'[http]\nlisten = "{listen}"\n')
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(config)


def test_the_token_is_checked_and_never_echoed(tmp_path: Path) -> None:
    config = tmp_path / "ingest.toml"
    config.write_text('[http]\nlisten = "[::1]:0"\ntoken = "s3cret-short"\n')
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert "at least 16 characters" in str(info.value) and "s3cret" not in str(info.value)
    config.write_text(f'[http]\nlisten = "0.0.0.0:9180"\ntoken = "{HTTP_TOKEN}"\n')
    config.chmod(0o644)
    loaded = load_config(config)
    http = loaded.http
    assert http is not None and not http.loopback and http.token() == HTTP_TOKEN
    assert HTTP_TOKEN not in repr(loaded)
    # A token in a file others can read works, with a warning that says what to do.
    [warning] = [w for w in loaded.warnings if w.section == "http"]
    assert "chmod 600" in str(warning) and HTTP_TOKEN not in str(warning)
    config.chmod(0o600)
    assert not [w for w in load_config(config).warnings if w.section == "http"]


def test_the_token_guards_every_route_and_no_secret_is_ever_served(
    deployment: Deployment,
) -> None:
    dep = deployment
    # A DIVA user with the unusual test password, so that any leak of it is recognisable.
    with DivaApi(dep.emulator.url, "sysadmin", "sysadmin") as api:
        added = api.post(
            "/dataservice/users", {"username": "ingest", "password": PASSWORD, "role": "operator"}
        )
        assert added.status_code == 200, added.text
    dep.config_path.write_text(
        dep.config_path.read_text().replace('username = "operator"', 'username = "ingest"')
    )
    dep.rule()
    enable_http(dep, token=HTTP_TOKEN)
    (dep.watch / "a.mxf").write_bytes(b"a")
    (dep.watch / "bad .mxf").write_bytes(b"b")
    routes = ["/", "/api/page", "/api/status", "/api/drops", "/healthz", "/metrics"]
    bodies: dict[str, str] = {}
    with daemon(dep, password=PASSWORD) as url, httpx.Client(base_url=url, timeout=30) as http:
        dep.wait_state("a.mxf", "COMPLETED")
        dep.wait_state("bad .mxf", "REJECTED")
        statuses: Counter[tuple[str, int]] = Counter()
        for route in routes:
            for who, headers in (
                ("nobody", {}),
                ("wrong", {"Authorization": "Bearer " + HTTP_TOKEN[:-1] + "0"}),
                ("right", {"Authorization": "Bearer " + HTTP_TOKEN}),
            ):
                answer = http.get(route, headers=headers)
                statuses[(who, answer.status_code)] += 1
                bodies[f"{who} {route}"] = answer.text + str(answer.headers)
        assert statuses == {("nobody", 401): 6, ("wrong", 401): 6, ("right", 200): 6}
        assert "a.mxf" in bodies["right /"] and "a.mxf" in bodies["right /api/drops"]

        # The login form: a wrong token is refused, the right one sets a session cookie
        # (not the token) that opens every page.
        wrong = http.post("/login", data={"token": "nope"})
        assert wrong.status_code == 401 and "wrong token" in wrong.text
        login = http.post("/login", data={"token": HTTP_TOKEN})
        assert login.status_code == 303
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and HTTP_TOKEN not in cookie
        assert http.get("/").status_code == 200  # the client keeps the cookie
        bodies["login"] = login.text + str(login.headers)
        bodies["cookie /api/page"] = http.get("/api/page").text

    for where, body in bodies.items():
        assert not any(form in body for form in SECRET_FORMS), f"the password is in {where}"
        assert not TOKEN.search(body), f"a DIVA token is in {where}"
        assert HTTP_TOKEN not in body, f"the [http] token is in {where}"


def test_the_follower_reads_each_transition_once_from_where_it_started(tmp_path: Path) -> None:
    from ingest.follow import Follower
    from ingest.ledger import Ledger

    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    with ledger.batch() as tx:
        old = tx.add(rule="news", watch="/w", path="old.mxf")
    follower = Follower(tmp_path / "ledger.db")  # earlier runs' history is not "new"
    assert list(follower.new()) == []
    with ledger.batch() as tx:
        tx.transition(old, "DETECTED", "SUBMITTING", "intent", settled_at=tx.now - 2)
        new = tx.add(rule="dpx", watch="/w", path="reel")
    steps = list(follower.new())
    assert [(s.rule, s.path, s.from_state, s.to_state) for s in steps] == [
        ("news", "old.mxf", "DETECTED", "SUBMITTING"),
        ("dpx", "reel", None, "DETECTED"),
    ]
    assert steps[0].at - (steps[0].settled_at or 0) == pytest.approx(2) and steps[1].drop_id == new
    assert list(follower.new()) == []
    assert len(list(Follower(tmp_path / "ledger.db", from_start=True).new())) == 3
    ledger.close()


def test_healthz_says_when_diva_is_unreachable_and_stays_200(deployment: Deployment) -> None:
    dep = deployment
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dep.write_config(url=f"http://127.0.0.1:{port}")
    dep.rule()
    enable_http(dep)
    (dep.watch / "waits.mxf").write_bytes(b"w")
    with daemon(dep) as url, httpx.Client(base_url=url, timeout=30) as http:

        def unreachable() -> dict[str, Any] | None:
            answer = http.get("/healthz")
            doc: dict[str, Any] = answer.json()
            return doc if answer.status_code == 200 and doc["diva"]["reachable"] is False else None

        doc = wait_for(unreachable, timeout=60, interval=0.2)
        # The daemon is alive and records what happens: not a reason to restart it.
        assert doc["ok"] and doc["reasons"] == [] and doc["diva"]["detail"]
        got = samples(http.get("/metrics").text)
        assert got["ingest_diva_up"][()] == 0
        calls = {dict(k)["outcome"]: v for k, v in got["ingest_diva_calls_total"].items()}
        assert calls.get("unreachable", 0) >= 1 and calls.get("ok", 0) == 0
        assert "UNREACHABLE" in http.get("/").text
    # Nothing was lost: the drop waits, with its file in place.
    assert dep.rows("waits.mxf")[-1]["state"] in ("DETECTED", "RETRY_WAIT", "SUBMITTING")
    assert (dep.watch / "waits.mxf").exists()
