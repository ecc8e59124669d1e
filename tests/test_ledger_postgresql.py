"""ingest on a PostgreSQL ledger: ``ingest run`` archives drops end to end against the
emulator, the operator commands read and retry on it, and its password shows nowhere.

The server is a throwaway PostgreSQL (tests/support/postgres.py), one database per test.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import httpx
import pytest

from tests.support.deployment import Deployment
from tests.support.http import ADDRESS
from tests.support.pgledger import ingest, rows, use_postgresql
from tests.support.postgres import PASSWORD, PASSWORD_ENV, PostgresServer, start_server
from tests.support.wait import wait_for


def test_ingest_run_archives_on_postgresql_and_the_commands_read_it(
    deployment: Deployment, pg_url: str
) -> None:
    dep = deployment
    use_postgresql(dep, pg_url)
    dep.rule()
    dep.rule("broken", watch=str(dep.watch), match=["*.bad"], media="NO_SUCH_MEDIA")
    (dep.watch / "good.mxf").write_bytes(b"good")
    (dep.watch / "sub").mkdir()
    (dep.watch / "sub" / "also.mxf").write_bytes(b"also")
    (dep.watch / "wrong.bad").write_bytes(b"bad")
    dep.config_path.write_text(dep.config_path.read_text() + '[http]\nlisten = "127.0.0.1:0"\n')
    daemon = dep.daemon()
    try:
        done = {"good.mxf": "COMPLETED", "sub/also.mxf": "COMPLETED", "wrong.bad": "REJECTED"}
        wait_for(
            lambda: {p: r["state"] for p, r in rows(pg_url).items()} == done or None, timeout=60
        )
        assert sorted(dep.stored()) == ["also", "good"]
        assert not dep.ledger_path.exists()  # no SQLite ledger on the side
        # Each archive call found its intent committed in PostgreSQL when it reached DIVA.
        assert dep.intents is not None
        assert [a.verdict for a in dep.intents.arrivals] == ["ok"] * 3

        # The status page, its API and /metrics read the same ledger.
        log_path = dep.root / "daemon.log"
        base = wait_for(lambda: ADDRESS.search(log_path.read_text()), timeout=30).group(1)
        api = httpx.get(base + "api/status", timeout=30)
        assert api.status_code == 200 and api.json()["ledger"] == pg_url
        metrics = httpx.get(base + "metrics", timeout=30).text
        assert 'ingest_drops{rule="news",state="COMPLETED"} 2.0' in metrics
        assert httpx.get(base, timeout=30).status_code == 200

        status = ingest(dep, "status", "--json")
        assert status.returncode == 1, status.stderr  # a rejection in the last 24 h
        doc = json.loads(status.stdout)
        assert doc["ledger"] == pg_url
        assert "COMPLETED" in json.dumps(doc) and str(dep.watch) in json.dumps(doc)

        listed = ingest(dep, "ledger", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        by_path = {r["path"]: r for r in json.loads(listed.stdout)}
        assert {p: r["state"] for p, r in by_path.items()} == done
        good = by_path["good.mxf"]
        assert good["source_deleted"] is True and good["finished_at"].endswith("Z")
        assert by_path["wrong.bad"]["status_code"] == 1017

        # Several states with a limit (the UNION of per-state scans) and a path glob.
        some = ingest(dep, "ledger", "list", "--state", "completed", "--state", "rejected",
                      "--limit", "5", "--path", "sub/*.mx[!x]", "--nl")  # fmt: skip
        assert some.returncode == 0, some.stderr
        assert [json.loads(line)["path"] for line in some.stdout.splitlines()] == ["sub/also.mxf"]

        shown = ingest(dep, "ledger", "show", "sub/also.mxf", "--json")
        assert shown.returncode == 0, shown.stderr
        history = json.loads(shown.stdout)["history"]
        assert [h["to_state"] for h in history][:2] == ["DETECTED", "SUBMITTING"]
        assert history[-1]["to_state"] == "COMPLETED"

        exported = ingest(dep, "ledger", "export", "--csv")
        assert exported.returncode == 0, exported.stderr
        assert exported.stdout.count("\n") == 4  # a header and three drops

        rejected = by_path["wrong.bad"]["id"]
        retried = ingest(dep, "retry", str(rejected), "--json")
        assert retried.returncode == 0, retried.stderr
        assert json.loads(retried.stdout)["drops"][0]["outcome"] == "requeued"
        shown = ingest(dep, "ledger", "show", str(rejected), "--json")
        steps = [h["to_state"] for h in json.loads(shown.stdout)["history"]]
        assert "RETRY_WAIT" in steps

        doctor = ingest(dep, "doctor", "--json")
        checks = {c["check"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert checks["ledger"]["level"] == "OK", checks["ledger"]
        assert checks["ledger"]["message"] == f"{pg_url} writable, schema current"
        outputs = [status, listed, some, shown, exported, retried, doctor]
        assert not any(PASSWORD in p.stdout + p.stderr for p in outputs)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    log = (dep.root / "daemon.log").read_text()
    assert pg_url.rpartition("/")[2] in log and PASSWORD not in log


def test_postgresql_lost_while_running_pauses_and_resumes(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server stopped under a running daemon: nothing is submitted while the ledger
    cannot take the intent; once it is back, the daemon resumes and archives once."""
    dep = deployment
    server = start_server()  # its own: this test stops it
    try:
        monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
        url = server.create_database()
        use_postgresql(dep, url)
        dep.rule()
        (dep.watch / "a.mxf").write_bytes(b"a")
        daemon = dep.daemon()
        log = dep.root / "daemon.log"
        try:
            wait_for(lambda: rows(url).get("a.mxf", {}).get("state") == "COMPLETED", timeout=60)
            server.stop("fast")
            (dep.watch / "b.mxf").write_bytes(b"b")
            wait_for(lambda: "not submitting until it recovers" in log.read_text(), timeout=60)
            assert [r["objectName"] for r in dep.archive_requests()] == ["a"]
            server.start()
            wait_for(lambda: rows(url).get("b.mxf", {}).get("state") == "COMPLETED", timeout=60)
            assert sorted(r["objectName"] for r in dep.archive_requests()) == ["a", "b"]
            assert "ledger writable again: resuming" in log.read_text()
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=30) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        assert PASSWORD not in log.read_text()
    finally:
        server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


def test_an_unreachable_postgresql_at_start_is_a_config_error(
    deployment: Deployment, postgres: PostgresServer
) -> None:
    dep = deployment
    dead = socket_nobody_listens_on()
    use_postgresql(dep, f"postgresql://ingest@127.0.0.1:{dead}/ingest")
    dep.rule()
    for args in (["run"], ["status"], ["ledger", "list"]):
        done = ingest(dep, *args)
        assert done.returncode == 3, (args, done.stderr)  # ConfigError's code
        assert f"127.0.0.1:{dead}" in done.stderr, done.stderr
        assert PASSWORD not in done.stdout + done.stderr


def test_a_wrong_password_is_refused_without_showing_it(
    deployment: Deployment, pg_url: str, tmp_path: Path
) -> None:
    dep = deployment
    secret = tmp_path / "pg-password"
    secret.write_text("not-the-password-91c2\n")
    secret.chmod(0o600)
    use_postgresql(dep, pg_url)
    text = dep.config_path.read_text().replace(
        f'password_env = "{PASSWORD_ENV}"', f"password_file = {json.dumps(str(secret))}"
    )
    dep.config_path.write_text(text)
    dep.rule()
    for args in (["run"], ["status"]):
        done = ingest(dep, *args)
        assert done.returncode == 3, done.stderr
        assert "password authentication failed" in done.stderr
        assert "not-the-password-91c2" not in done.stdout + done.stderr


def test_a_password_in_the_url_is_refused_and_not_repeated(deployment: Deployment) -> None:
    dep = deployment
    use_postgresql(dep, f"postgresql://ingest:{PASSWORD}@127.0.0.1:5/ingest")
    done = ingest(dep, "status")
    assert done.returncode == 3
    assert "must not hold the password" in done.stderr and "ingest:***@" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr


def socket_nobody_listens_on() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: connecting is refused


# -- [ledger] in the service config (no server needed) --------------------------------

SECRET = "url-secret-55d1"


@pytest.mark.parametrize(
    ("ledger", "expected"),
    [
        ('url = "sqlite:///l.db"\npassword_env = "X"\n', "is for a PostgreSQL ledger"),
        (
            'url = "postgresql://ingest@127.0.0.1/db"\npassword_env = "X"\npassword_file = "p"\n',
            "give password_env or password_file, not both",
        ),
        ('url = "postgresql://127.0.0.1/db"\n', "a user is needed"),
        ('url = "postgresql://ingest@127.0.0.1:x/db"\n', "the port must be a number"),
        (f'url = "postgresql://ingest:{SECRET}@127.0.0.1/db"\n', "must not hold the password"),
        ('url = "mysql://ingest@127.0.0.1/db"\n', "or postgresql://USER@HOST:PORT/DB"),
    ],
)
def test_ledger_config_problems(tmp_path: Path, ledger: str, expected: str) -> None:
    from ingest.config import load_config
    from ingest.errors import ConfigError

    config = tmp_path / "ingest.toml"
    config.write_text(f"[ledger]\n{ledger}")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert expected in str(caught.value) and "[ledger]" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_ledger_password_from_env_or_owner_only_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingest.config import load_config
    from ingest.errors import ConfigError

    config = tmp_path / "ingest.toml"
    url = "postgresql://ingest@127.0.0.1:5432/ingest"
    config.write_text(f'[ledger]\nurl = "{url}"\npassword_env = "PG_PW_TEST"\n')
    ledger = load_config(config).ledger
    assert ledger.path is None and ledger.url == url
    monkeypatch.delenv("PG_PW_TEST", raising=False)
    with pytest.raises(ConfigError, match="environment variable PG_PW_TEST is not set"):
        ledger.password()
    monkeypatch.setenv("PG_PW_TEST", SECRET)
    assert ledger.password() == SECRET
    assert SECRET not in repr(ledger)

    secret = tmp_path / "pw"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o644)
    config.write_text(f'[ledger]\nurl = "{url}"\npassword_file = "pw"\n')
    with pytest.raises(ConfigError, match="readable by others"):
        load_config(config)
    secret.chmod(0o600)
    ledger = load_config(config).ledger
    assert ledger.password_file == secret and ledger.password() == SECRET  # newline dropped
    config.write_text(f'[ledger]\nurl = "{url}"\n')
    assert load_config(config).ledger.password() is None  # a trusted peer: none sent
