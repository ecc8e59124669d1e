"""The service config: defaults, paths, validation, the password, and where the file is found."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from ingest import defaults
from ingest.config import find_config, load_config
from ingest.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-Pa55word"

MINIMAL = """\
[diva]
url = "https://diva.example:8765/"
username = "ingest"
password_env = "TEST_DIVA_PASSWORD"
"""


def write_config(tmp_path: Path, text: str, name: str = "ingest.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_config_gets_every_default(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, MINIMAL))
    diva = config.require_diva()
    assert diva.url == "https://diva.example:8765"
    assert diva.data_url == "https://diva.example:8765/dataservice"
    assert diva.manager_url == "https://diva.example:8765/manager"
    assert diva.auth_scheme == "raw" and diva.verify is True
    assert diva.timeout_seconds == defaults.DIVA_TIMEOUT_SECONDS
    assert diva.poll_seconds == defaults.DIVA_POLL_SECONDS
    assert (diva.max_in_flight, diva.max_attempts) == (50, 5)
    assert config.ledger.url == f"sqlite:///{tmp_path / 'ingest.db'}"
    assert config.ledger.path == tmp_path / "ingest.db"
    assert config.rules.paths == (tmp_path / "rules",)
    assert (config.engine.rescan_seconds, config.engine.reload_seconds) == (60, 2)
    assert config.base_dir == tmp_path
    assert config.warnings == ()


def test_relative_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "ca.pem").write_text("x")
    path = write_config(
        tmp_path / "etc",
        MINIMAL.replace('username = "ingest"', 'username = "ingest"\nverify = "ca.pem"')
        + '[ledger]\nurl = "sqlite:///db/ledger.db"\n[rules]\npaths = ["r1", "/abs/r2"]\n',
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc/ingest.toml"))
    assert config.require_diva().verify == tmp_path / "etc" / "ca.pem"
    assert config.ledger.path == tmp_path / "etc" / "db" / "ledger.db"
    assert config.rules.paths == (tmp_path / "etc" / "r1", Path("/abs/r2"))
    assert path.exists()


def test_absolute_ledger_url_and_overrides(tmp_path: Path) -> None:
    config = load_config(
        write_config(
            tmp_path,
            MINIMAL.replace(
                'username = "ingest"',
                'username = "ingest"\n'
                'manager_url = "https://other:9000/mgr/"\nauth_scheme = "bearer"',
            )
            + '[ledger]\nurl = "sqlite:////var/lib/ingest/ledger.db"\n',
        )
    )
    diva = config.require_diva()
    assert diva.manager_url == "https://other:9000/mgr"
    assert diva.data_url == "https://diva.example:8765/dataservice"
    assert diva.auth_scheme == "bearer"
    assert config.ledger.path == Path("/var/lib/ingest/ledger.db")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            MINIMAL + "pol_seconds = 10\n",
            "ingest.toml:5: [diva]: key 'pol_seconds': unknown key (did you mean 'poll_seconds'?)",
        ),
        (MINIMAL + "[legder]\n", ":5: [legder]: unknown section (did you mean 'ledger'?)"),
        (MINIMAL + "poll_seconds = 0.5\n", "key 'poll_seconds': must be >= 1"),
        (MINIMAL + "poll_seconds = '10'\n", "key 'poll_seconds': must be a number"),
        (MINIMAL + "max_in_flight = 0\n", "key 'max_in_flight': must be >= 1"),
        (MINIMAL + "max_attempts = 1.5\n", "key 'max_attempts': must be a whole number"),
        (MINIMAL + "timeout_seconds = 0\n", "key 'timeout_seconds': must be > 0"),
        (MINIMAL + "auth_scheme = 'Bearer'\n", "(did you mean 'bearer'?)"),
        (MINIMAL + "verify = 'missing.pem'\n", "key 'verify': the CA bundle"),
        (MINIMAL + "verify = 1\n", "key 'verify': must be true, false or a path"),
        (MINIMAL.replace("https://diva.example:8765/", "diva:8765"), "key 'url': must be an http"),
        (MINIMAL.replace('username = "ingest"\n', ""), "key 'username': missing"),
        (MINIMAL + "password_file = 'p'\n", "give password_env or password_file, not both"),
        (
            MINIMAL.replace('password_env = "TEST_DIVA_PASSWORD"\n', ""),
            "key 'password_env': missing: give password_env",
        ),
        (MINIMAL + "[ledger]\nurl = 'postgres://x'\n", "[ledger]: key 'url': must be sqlite:///"),
        (MINIMAL + "[rules]\npaths = [1]\n", "[rules]: key 'paths': must be a list of strings"),
        (
            MINIMAL + "[engine]\nrescan_seconds = -1\n",
            "[engine]: key 'rescan_seconds': must be > 0",
        ),
        (MINIMAL + "[engine]\nreload = 2\n", "(did you mean 'reload_seconds'?)"),
        (MINIMAL + "ledger = 'x'\n", "[diva]: key 'ledger': unknown key"),
        ('ledger = "x"\n', "[ledger]: must be a section"),
        (MINIMAL + "url = \n", "ingest.toml:5: TOML syntax error"),
    ],
)
def test_each_config_error(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, text))
    assert expected in str(caught.value)
    assert caught.value.exit_code == 3


def test_every_problem_at_once(tmp_path: Path) -> None:
    text = MINIMAL + "poll_seconds = 0\nmax_in_flight = 0\n[engine]\nreload_seconds = 0\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, text))
    message = str(caught.value)
    assert message.startswith("3 problems in the service config:")
    assert ":5: [diva]: key 'poll_seconds'" in message
    assert ":6: [diva]: key 'max_in_flight'" in message
    assert ":8: [engine]: key 'reload_seconds'" in message


def test_warnings_are_logged_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ingest.config"):
        config = load_config(write_config(tmp_path, MINIMAL + "poll_seconds = 5\nverify = false\n"))
    assert len(config.warnings) == 2
    assert "below the API guide's advice" in caplog.text
    assert "TLS verification is off" in caplog.text


def test_password_from_env_is_read_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write_config(tmp_path, MINIMAL))
    diva = config.require_diva()
    monkeypatch.delenv("TEST_DIVA_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="TEST_DIVA_PASSWORD is not set"):
        diva.password()
    monkeypatch.setenv("TEST_DIVA_PASSWORD", SECRET)
    assert diva.password() == SECRET
    assert SECRET not in repr(config) and SECRET not in str(config)


def test_password_file_owner_only(tmp_path: Path) -> None:
    secret = tmp_path / "diva.password"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    text = MINIMAL.replace('password_env = "TEST_DIVA_PASSWORD"', 'password_file = "diva.password"')
    config = load_config(write_config(tmp_path, text))
    assert config.require_diva().password() == SECRET
    assert SECRET not in repr(config)
    secret.chmod(0o640)  # group-readable: refused at load, and when read
    with pytest.raises(ConfigError, match="readable by others") as caught:
        load_config(write_config(tmp_path, text))
    assert SECRET not in str(caught.value)
    with pytest.raises(ConfigError, match="chmod 600"):
        config.require_diva().password()
    secret.unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        config.require_diva().password()


def test_no_diva_section(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, '[rules]\npaths = ["r"]\n'))
    assert config.diva is None
    with pytest.raises(ConfigError, match="no \\[diva\\] section"):
        config.require_diva()


def test_no_config_at_all_means_defaults_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.path is None and config.base_dir == tmp_path
    assert config.rules.paths == (tmp_path / "rules",)


def test_find_config_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INGEST_CONFIG", raising=False)
    assert find_config(None) is None
    with pytest.raises(ConfigError, match="no service config"):
        find_config(None, required=True)
    local = write_config(tmp_path, MINIMAL)
    assert find_config(None) == Path("ingest.toml")
    env = write_config(tmp_path, MINIMAL, "env.toml")
    monkeypatch.setenv("INGEST_CONFIG", str(env))
    assert find_config(None) == env
    flag = write_config(tmp_path, MINIMAL, "flag.toml")
    assert find_config(flag) == flag
    with pytest.raises(ConfigError, match="does not exist \\(from --config\\)"):
        find_config(tmp_path / "missing.toml")
    monkeypatch.setenv("INGEST_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match="from INGEST_CONFIG"):
        find_config(None)
    assert local.exists()


def test_the_example_config_loads(tmp_path: Path) -> None:
    shutil.copy(REPO / "ingest.example.toml", tmp_path / "ingest.toml")
    config = load_config(tmp_path / "ingest.toml")
    assert config.require_diva().password_env == "DIVA_PASSWORD"
    assert config.rules.paths == (tmp_path / "rules",)
    assert os.path.isabs(str(config.ledger.path))
