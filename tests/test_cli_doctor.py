"""``ingest doctor`` against a healthy setup on the emulator, and each broken piece."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from ingest.commands import doctor as doctor_module

from .support.emulator import RunningEmulator
from .support.ledgers import invoke
from .support.sites import Site
from .unprivileged import Unprivileged


@pytest.fixture
def site(tmp_path: Path, emulator: RunningEmulator) -> Site:
    return Site(tmp_path, emulator)


def levels(checks: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for check in checks:
        out.setdefault(check["level"], []).append(f"{check['check']}: {check['message']}")
    return out


def test_healthy(site: Site) -> None:
    result = site.run()
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[-1] == "all checks OK"
    assert all(line.startswith("OK   ") for line in lines[:-1]), result.output
    out = result.output
    assert f"OK   config: {site.config} is valid" in out
    assert "OK   rules: 2 rules in 2 file(s)" in out
    assert f"OK   ledger: {site.root / 'ledger.db'} writable, schema current" in out
    assert f"OK   diva: DIVA reachable at {site.url}" in out
    assert "OK   diva login: logged in as 'operator'" in out
    assert "OK   diva logout: logged out" in out
    assert "OK   rule news: media 'DISK1' is a DIVA disk array" in out
    assert "OK   rule archive: media 'TAPE1' is a DIVA tape group" in out
    assert "OK   rule news: source server 'NAS' is known to DIVA" in out
    assert f"OK   folder {site.nas / 'news'}: exists, readable and writable" in out
    assert f"OK   folder {site.nas / 'news'}: filesystem " in out
    assert ": native (" in out
    assert "OK   inotify: 2 folder(s) to watch natively" in out
    assert "\x1b[" not in out


def test_healthy_json(site: Site) -> None:
    result = site.run("--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["ok"] is True
    assert {c["level"] for c in doc["checks"]} == {"OK"}
    assert {"check", "level", "message", "fix"} == set(doc["checks"][0])


def test_wrong_password(site: Site) -> None:
    site.password = "s3cret-Pw"
    code, checks = site.checks()
    assert code == 1
    fails = levels(checks)["FAIL"]
    assert fails == ["diva login: login refused for user 'operator'"]
    fix = next(c["fix"] for c in checks if c["level"] == "FAIL")
    assert "DOCTOR_TEST_PASSWORD" in fix
    result = site.run()
    assert "FAIL diva login: login refused for user 'operator' -> check [diva] username" in (
        result.output
    )
    assert "s3cret-Pw" not in result.output  # never the password


def test_unknown_media(site: Site) -> None:
    """A warning, not a failure: the media may be a storage plan, which DIVA's array and
    group lists do not name (DIVA itself refuses an unknown media with 1017)."""
    site.rule("news", site.nas / "news", "DISK2")
    code, checks = site.checks()
    assert code == 0
    warn = next(c for c in checks if c["level"] == "WARN")
    assert warn["check"] == "rule news"
    assert warn["message"] == (
        "media 'DISK2' is neither a disk array nor a tape group DIVA lists (did you mean 'DISK1'?)"
    )
    assert "DISK1" in warn["fix"] and "TAPE1" in warn["fix"] and "storage plan" in warn["fix"]


def test_unknown_server(site: Site) -> None:
    site.rule("archive", site.nas / "archive", "TAPE1", server="NSA")
    code, checks = site.checks()
    assert code == 1
    assert levels(checks)["FAIL"] == [
        "rule archive: source server 'NSA' is unknown to DIVA (did you mean 'NAS'?)"
    ]


def test_diva_down(site: Site) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    site.write_config(url=f"http://127.0.0.1:{port}")
    code, checks = site.checks()
    assert code == 1
    fails = levels(checks)["FAIL"]
    assert len(fails) == 1
    assert fails[0].startswith(f"diva: DIVA unreachable at http://127.0.0.1:{port}")
    # the rest is still checked
    assert any(c["check"].startswith("folder ") and c["level"] == "OK" for c in checks)


def test_missing_folder(site: Site) -> None:
    site.rule("news", site.nas / "news", "DISK1")
    (site.nas / "news").rmdir()
    code, checks = site.checks()
    assert code == 1
    fails = levels(checks)["FAIL"]
    assert len(fails) == 1
    assert "does not exist" in fails[0] and "news" in fails[0]
    assert "per-rule checks (media, server, folders) skipped" in " ".join(levels(checks)["WARN"])
    # DIVA itself is still checked
    assert "diva login: logged in as 'operator'" in levels(checks)["OK"]


def test_file_instead_of_folder(site: Site) -> None:
    (site.nas / "news").rmdir()
    (site.nas / "news").write_text("not a folder", encoding="utf-8")
    code, checks = site.checks()
    assert code == 1
    assert any("is not a folder" in f for f in levels(checks)["FAIL"])


def test_unreadable_folder_for_real(emulator: RunningEmulator, unprivileged: Unprivileged) -> None:
    """A watch folder the daemon's user cannot read, for real: doctor runs as an
    unprivileged user (root reads every folder), on a site that user owns, so the folder's
    own mode is the only thing in the way."""
    site = Site(unprivileged.root, emulator)
    site.nas = unprivileged.root / "nas"
    site.rule("news", site.nas / "news", "DISK1")
    site.rule("archive", site.nas / "archive", "TAPE1")
    unprivileged.give(site.root)
    env = {"DOCTOR_TEST_PASSWORD": site.password}
    args = ("doctor", "--json", "--config", str(site.config))

    def checks() -> tuple[int, list[dict[str, Any]]]:
        done = unprivileged.run(*args, env=env)
        return done.returncode, json.loads(done.stdout)["checks"]

    code, found = checks()  # the same site, readable: all OK as that user
    assert (code, levels(found).get("FAIL")) == (0, None), found
    folder = site.nas / "news"
    folder.chmod(0o000)
    code, found = checks()
    assert code == 1
    assert levels(found)["FAIL"] == [f"folder {folder}: not readable by this user"]


@pytest.mark.parametrize(
    ("denied", "expected"),
    [
        (os.R_OK, "not readable by this user"),
        (os.W_OK, "not writable, but news delete(s) on source"),
    ],
)
def test_unreadable_or_unwritable_folder(
    site: Site, monkeypatch: pytest.MonkeyPatch, denied: int, expected: str
) -> None:
    """As root (how the tests run) access cannot be denied: the access check is stubbed."""
    folder = site.nas / "news"
    real = doctor_module._can

    def can(path: Path, mode: int) -> bool:
        return not (path == folder and mode & denied) and real(path, mode)

    monkeypatch.setattr(doctor_module, "_can", can)
    code, checks = site.checks()
    assert code == 1
    assert levels(checks)["FAIL"] == [f"folder {folder}: {expected}"]


def test_inotify_limit(site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for i in range(5):
        (site.nas / "news" / f"show{i}" / "reel").mkdir(parents=True)
    limit = tmp_path / "max_user_watches"
    limit.write_text("8\n", encoding="ascii")
    monkeypatch.setattr(doctor_module, "INOTIFY_LIMIT_FILE", str(limit))
    code, checks = site.checks()
    assert code == 1
    fail = next(c for c in checks if c["level"] == "FAIL")
    assert fail["message"] == "12 folder(s) to watch natively; the limit is 8 per user"
    assert "sysctl fs.inotify.max_user_watches=" in fail["fix"]
    limit.write_text("14\n", encoding="ascii")
    code, checks = site.checks()
    assert code == 0
    assert any(c["check"] == "inotify" and c["level"] == "WARN" for c in checks)


def test_pending_migration_warns(site: Site) -> None:
    import sqlite3

    conn = sqlite3.connect(site.root / "ledger.db")
    with conn:
        conn.execute("DELETE FROM schema_migrations WHERE name = '0002_drops_state_finished'")
    conn.close()
    code, checks = site.checks()
    assert code == 0
    assert levels(checks)["WARN"] == [
        "ledger schema: 1 migration(s) pending: 0002_drops_state_finished"
    ]


def test_a_ledger_from_a_newer_ingest_fails(site: Site) -> None:
    import sqlite3

    conn = sqlite3.connect(site.root / "ledger.db")
    with conn:
        conn.execute(
            "INSERT INTO schema_migrations (name, applied_at) VALUES ('9999_from_later', 0)"
        )
    conn.close()
    code, checks = site.checks("--no-diva")
    assert code == 1
    assert levels(checks)["FAIL"] == [
        "ledger schema: written by a newer ingest (migrations 9999_from_later)"
    ]


def test_no_ledger_yet_is_fine(site: Site) -> None:
    (site.root / "ledger.db").unlink()
    code, checks = site.checks("--no-diva")
    assert code == 0
    assert "does not exist yet" in " ".join(levels(checks)["OK"])
    assert not (site.root / "ledger.db").exists()  # the doctor does not create it


def test_bad_rules(site: Site) -> None:
    (site.rules / "bad.toml").write_text('[[rule]]\nname = "x"\nmedai = "DISK1"\n', "utf-8")
    code, checks = site.checks("--no-diva")
    assert code == 1
    assert any("medai" in f for f in levels(checks)["FAIL"])


def test_unreadable_config_is_exit_3(tmp_path: Path) -> None:
    result = invoke("doctor", "--config", str(tmp_path / "nope.toml"))
    assert result.exit_code == 3
    assert result.output.startswith("FAIL config: ")
    bad = tmp_path / "bad.toml"
    bad.write_text("[diva\n", encoding="utf-8")
    result = invoke("doctor", "--config", str(bad), "--json")
    assert result.exit_code == 3
    assert json.loads(result.stdout)["checks"][0]["level"] == "FAIL"


# -- "unknown to DIVA" only on DIVA's own word: a complete list ---------------------------


def _client_answering(lists: dict[str, Any]) -> Any:
    """A DIVA client whose manager answers ``GET /<name>`` with ``lists[name]``."""
    import httpx

    from ingest.client import DivaClient

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/dataservice/users/"):
            return httpx.Response(200, json={"token": "t"})  # login and logout
        return httpx.Response(200, json=lists[request.url.path.removeprefix("/manager/")])

    return DivaClient("http://diva", "operator", "pw", transport=httpx.MockTransport(handler))


def _rule(media: str, server: str) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(enabled=True, name="news", media=media, source_server=server)


@pytest.mark.parametrize(
    ("lists", "expected"),
    [
        (  # a paged list: the rest may hold them
            {
                "arrays": {"arrays": [{"name": "DISK1"}], "totalElements": 30},
                "groups": {"groups": []},
                "servers": {"servers": [{"name": "NAS"}], "last": False},
            },
            [
                "cannot confirm media 'DISK9': DIVA sent 1 of its 30 arrays: a paged list",
                "cannot confirm source server 'NSA': DIVA sent 1 servers: a paged list",
            ],
        ),
        (  # an answer without the list, an entry without a name the doctor reads
            {
                "arrays": {"data": [{"name": "DISK1"}]},
                "groups": [{"name": "TAPE1"}],
                "servers": [{"name": "NAS"}, {"host": "127.0.0.9"}],
            },
            [
                "cannot confirm media 'DISK9': DIVA's answer holds no list of arrays: "
                '{"data": [{"name": "DISK1"}]}',
                "cannot confirm source server 'NSA': 1 of DIVA's servers have no name this "
                "doctor can read",
            ],
        ),
    ],
)
def test_incomplete_lists_cannot_say_unknown(lists: dict[str, Any], expected: list[str]) -> None:
    report = doctor_module.Report()
    with _client_answering(lists) as client:
        doctor_module._check_resources(report, client, [_rule("DISK9", "NSA")])
    assert [(c.level, c.message) for c in report.checks] == [("WARN", m) for m in expected]
    assert not report.failed


def test_a_complete_list_can_say_unknown() -> None:
    lists = {"arrays": [{"name": "DISK1"}], "groups": [], "servers": [{"serverName": "NAS"}]}
    report = doctor_module.Report()
    with _client_answering(lists) as client:
        doctor_module._check_resources(report, client, [_rule("DISK1", "NSA")])
    assert [(c.level, c.message) for c in report.checks] == [
        ("OK", "media 'DISK1' is a DIVA disk array"),
        ("FAIL", "source server 'NSA' is unknown to DIVA (did you mean 'NAS'?)"),
    ]
