"""The security model, point by point (see the README, "Security model").

Covered elsewhere, referenced not repeated: the emulator enforces DIVA roles
(tests/test_emulator.py), the client verifies TLS by default, accepts a custom CA and
scrubs secrets from its errors (tests/test_client.py), symlinks of every kind are never
archived by the engine (tests/test_hostile.py::test_symlinks_are_never_archived).
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest.emulator.server import EmulatorProcess
from ingest.templates import check_component, check_name, clean_comment

from .leakcheck import PASSWORD, SECRET_FORMS, TOKEN
from .support.deployment import DIVA_PASSWORD_ENV, Deployment
from .support.wait import wait_for

# --- paths and names -----------------------------------------------------------------


@pytest.mark.parametrize("rel", ["../secret.mxf", "sub/../../secret.mxf", "../news2/x.mxf"])
def test_a_path_through_dotdot_matches_no_rule(deployment: Deployment, rel: str) -> None:
    """A path that climbs out of the watch folder is outside every rule, so it can never
    become a component (and so never be deleted by DIVA)."""
    from ingest.rulefiles import RuleBook

    dep = deployment
    dep.rule(match=["**/*.mxf", "*"])
    book = RuleBook([dep.rules_dir], dep.root)
    assert book.rules.match(Path(str(dep.watch) + "/" + rel)) is None


def test_control_characters_in_components_are_refused() -> None:
    assert check_component("a\nb.mxf") and check_component("esc\x1b.mxf")
    assert check_component("ok/sub dir/clip.mxf") is None


def test_dotdot_in_a_dropped_path_never_leaves_the_watch_folder(deployment: Deployment) -> None:
    """A ``..`` can only be part of a name here (``a..b``), never a path step: the engine
    walks real folders and never follows links, so every component is inside."""
    dep = deployment
    dep.rule(object_name="{stem}")
    (dep.watch / "..a..").mkdir()
    (dep.watch / "..a.." / "x..mxf").write_bytes(b"x")
    (dep.watch / "y..mxf").write_bytes(b"y")
    dep.start()
    row = dep.wait_state("y..mxf", "COMPLETED")
    body = json.loads(row["body"])
    assert body["components"] == ["y..mxf"] and body["filePathRoot"] == "/news"
    assert dep.rows("..a../x..mxf") == []  # a hidden folder: never looked into


@pytest.mark.parametrize(
    "name", ["a/b", "a\\b", "line\nbreak", "nul\0", "esc\x1b[0m", "tab\t", "del\x7f", "..", ""]
)
def test_object_names_cannot_carry_separators_or_control_characters(name: str) -> None:
    assert check_name(name, 192)


@pytest.mark.parametrize("comment", ["a\nb", "c\rd", "e\x00f", "g\x1b[31mh", "i\u2028j"])
def test_comments_are_cleaned_of_control_characters(comment: str) -> None:
    cleaned = clean_comment(comment)
    assert not any(ord(c) < 32 or ord(c) == 127 or c in "\u2028\u2029" for c in cleaned)


def test_a_template_that_builds_a_path_is_rejected_with_the_file_left(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.rule(object_name="{relpath}")  # the relative path: a '/' for files in folders
    (dep.watch / "sub").mkdir()
    (dep.watch / "sub" / "deep.mxf").write_bytes(b"deep")
    dep.start()
    row = dep.wait_state("sub/deep.mxf", "REJECTED", "COMPLETED")
    if row["state"] == "COMPLETED":  # the template cleaned it: no separator went out
        assert "/" not in row["object_name"] and "\\" not in row["object_name"]
    else:
        assert row["error"] and (dep.watch / "sub" / "deep.mxf").exists()
        assert dep.archive_requests() == []


# --- the password ------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "ok"), [(0o600, True), (0o400, True), (0o640, False),
                                          (0o604, False), (0o644, False)])  # fmt: skip
def test_the_password_file_must_be_owner_only(deployment: Deployment, mode: int, ok: bool) -> None:
    dep = deployment
    secret = dep.root / "diva.password"
    secret.write_text("operator\n")
    secret.chmod(mode)
    text = dep.config_path.read_text().replace(
        f'password_env = "{DIVA_PASSWORD_ENV}"', f'password_file = "{secret}"'
    )
    dep.config_path.write_text(text)
    dep.rule()
    (dep.watch / "pw.mxf").write_bytes(b"pw")
    proc = dep.daemon(log_name="pw.log")
    if ok:
        try:
            dep.wait_state("pw.mxf", "COMPLETED")
        finally:
            proc.terminate()
            assert proc.wait(timeout=30) == 0
    else:
        code = proc.wait(timeout=60)
        output = (dep.root / "pw.log").read_text()
        assert code != 0 and "password_file" in output, output
        assert "operator" not in output.split("password_file", 1)[1].splitlines()[0]
        assert (dep.watch / "pw.mxf").exists() and dep.archive_requests() == []


def test_the_password_and_tokens_never_leak(deployment: Deployment, tmp_path: Path) -> None:
    """A whole session with a known unusual password: the daemon's log, the CLI's JSON,
    the ledger file and the test's own output hold neither it nor any issued token."""
    dep = deployment
    user = f"ingest:{PASSWORD}:operator"
    args = ["--server", f"NAS={dep.watch.parent}", "--media", "DISK1", "--user", user,
            "--user", "admin:admin:admin", "--token-ttl", "3"]  # fmt: skip
    diva = EmulatorProcess(tmp_path / "diva", args).start()
    try:
        text = dep.config_path.read_text().replace('username = "operator"', 'username = "ingest"')
        dep.config_path.write_text(text)
        dep.write_config(url=diva.url)
        dep.config_path.write_text(
            dep.config_path.read_text().replace('username = "operator"', 'username = "ingest"')
        )
        dep.rule()
        for i in range(5):
            (dep.watch / f"s{i}.mxf").write_bytes(b"s" * i)
        env = {**os.environ, DIVA_PASSWORD_ENV: PASSWORD}
        log_path = dep.root / "session.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ingest", "--log-format", "json", "run",
                 "--config", str(dep.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        try:
            for i in range(5):
                dep.wait_state(f"s{i}.mxf", "COMPLETED")
            # Outlive the first token (3 s), then make the daemon talk to DIVA again.
            first = time.monotonic()
            wait_for(lambda: time.monotonic() - first > 4, timeout=10)
            (dep.watch / "late.mxf").write_bytes(b"late")
            dep.wait_state("late.mxf", "COMPLETED")
            assert diva_logins(diva.url) >= 2
        finally:
            proc.terminate()
            assert proc.wait(timeout=30) == 0
        outputs = {"daemon log": log_path.read_bytes()}
        for cmd in (["status", "--json"], ["ledger", "list", "--json"], ["doctor", "--json"]):
            done = subprocess.run(
                [sys.executable, "-m", "ingest", *cmd, "--config", str(dep.config_path)],
                capture_output=True, env=env, timeout=60, check=False,
            )  # fmt: skip
            outputs[" ".join(cmd)] = done.stdout + done.stderr
            assert done.stdout.strip(), cmd
        # A wrong password: the error names the user, never the password tried.
        wrong = subprocess.run(
            [sys.executable, "-m", "ingest", "doctor", "--json", "--config", str(dep.config_path)],
            capture_output=True, env={**env, DIVA_PASSWORD_ENV: PASSWORD + "x"}, timeout=60,
            check=False,
        )  # fmt: skip
        outputs["doctor with a wrong password"] = wrong.stdout + wrong.stderr
        for suffix in ("", "-wal", "-shm"):
            ledger = Path(str(dep.ledger_path) + suffix)
            if ledger.exists():
                outputs[f"ledger{suffix}"] = ledger.read_bytes()
        secrets = [PASSWORD.encode(), PASSWORD.encode("unicode_escape"),
                   json.dumps(PASSWORD).encode(), base64.b64encode(PASSWORD.encode())]  # fmt: skip
        for where, data in outputs.items():
            for secret in secrets:
                assert secret not in data, f"the password leaked into {where}"
            # Every token the emulator issues is a JWT: 'eyJ' + base64url.
            assert not re.search(rb"eyJ[A-Za-z0-9_-]{10,}", data), f"a token leaked into {where}"
    finally:
        diva.stop()


def diva_logins(url: str) -> int:
    import httpx

    return int(httpx.get(f"{url}/_emulator/stats", timeout=10).json()["logins"])


LEAKY_TESTS = """
import json, logging, sys

import pytest

from tests.leakcheck import PASSWORD


@pytest.fixture
def leaky_fixture():
    print("setting up with", PASSWORD)
    yield
    logging.getLogger("teardown").warning("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig")


def test_prints_it():
    print(PASSWORD)


def test_writes_it_as_json_to_stderr():
    sys.stderr.write(json.dumps({"password": PASSWORD}))


def test_logs_a_token():
    logging.getLogger("ingest").warning("got eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig")


def test_leaks_in_its_fixture(leaky_fixture):
    pass


def test_fails_and_prints_it():
    print(repr(PASSWORD))
    assert False, "its own failure"


def test_clean():
    print("nothing secret here")
"""


def test_a_test_whose_output_holds_a_secret_fails(tmp_path: Path) -> None:
    """tests/leakcheck.py, which checks every test of this suite, run on a session of
    deliberately leaky tests: each leak fails the test (or its fixture) that made it,
    the clean test passes, and the session's report does not repeat the secret."""
    (tmp_path / "test_leaky.py").write_text(LEAKY_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.leakcheck", "-p", "no:cacheprovider",
         "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), "-rA",
         str(tmp_path / "test_leaky.py")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    summary = {
        line.split(" ", 1)[0] + " " + line.split()[1].split("::")[-1]
        for line in out.splitlines()
        if line.startswith(("PASSED ", "FAILED ", "ERROR "))
    }
    assert summary == {
        "FAILED test_prints_it",
        "FAILED test_writes_it_as_json_to_stderr",
        "FAILED test_logs_a_token",
        "ERROR test_leaks_in_its_fixture",  # at setup, and again at teardown
        "FAILED test_fails_and_prints_it",
        "PASSED test_clean",
    }, out
    errors = [line for line in out.splitlines() if line.startswith("ERROR ")]
    assert len(errors) == 2, out  # the fixture's leak at setup, and its own at teardown
    assert "Captured stdout call: the test password" in out
    assert "Captured stderr call: the test password" in out
    assert "Captured log call: a DIVA token" in out
    assert "Captured stdout setup: the test password" in out
    assert "Captured log teardown: a DIVA token" in out
    assert "its own failure" in out  # a test's own failure is kept, the leak added
    assert "Captured stdout call: the test password" in out.split("its own failure", 1)[1]
    assert "<the test password>" in out  # the captured output shown, but redacted
    assert not [form for form in SECRET_FORMS if form in out], "the report repeats it"
    assert not TOKEN.search(out)


# --- TLS -----------------------------------------------------------------------------


def test_turning_tls_verification_off_is_warned_at_startup(deployment: Deployment) -> None:
    dep = deployment
    dep.write_config(verify=False)
    dep.rule()
    proc = dep.daemon(log_name="tls.log")
    try:
        log = dep.root / "tls.log"
        wait_for(lambda: "engine starting" in log.read_text(), timeout=30)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    text = log.read_text()
    assert "WARNING" in text and "TLS verification is off" in text


def test_tls_verification_is_on_by_default(deployment: Deployment) -> None:
    from ingest.config import load_config

    config = load_config(dep_config(deployment))
    assert config.require_diva().verify is True


def dep_config(dep: Deployment) -> Path:
    return dep.config_path


def test_a_custom_ca_bundle_is_used_by_the_engine(deployment: Deployment) -> None:
    import trustme  # a dev dependency: missing, it is an error, not a skip

    from ingest.config import load_config
    from ingest.engine import Engine

    ca = trustme.CA()
    bundle = deployment.root / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    deployment.write_config(verify=str(bundle))
    deployment.rule()
    engine = Engine(load_config(deployment.config_path))
    try:
        assert engine.config.require_diva().verify == bundle
    finally:
        engine.ledger.close()
        engine.client.close()


# --- the ledger's permissions --------------------------------------------------------


def test_the_ledger_and_its_folder_are_owner_only(deployment: Deployment) -> None:
    dep = deployment
    dep.ledger_path = dep.root / "state" / "ingest" / "ledger.db"
    dep.write_config()
    dep.rule()
    old = os.umask(0o022)  # a permissive umask must not matter
    try:
        dep.start()
        wait_for(lambda: dep.ledger_path.exists())
    finally:
        os.umask(old)
    assert stat.S_IMODE(dep.ledger_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(dep.ledger_path.parent.stat().st_mode) == 0o700
    (dep.watch / "perm.mxf").write_bytes(b"p")
    dep.wait_state("perm.mxf", "COMPLETED")
    for extra in ("-wal", "-shm"):
        side = Path(str(dep.ledger_path) + extra)
        if side.exists():  # SQLite's side files: as private as the ledger
            assert stat.S_IMODE(side.stat().st_mode) & 0o077 == 0, side
