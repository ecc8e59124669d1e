"""``ingest rules check`` / ``explain`` driven through the real entry point, and the examples."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.cli import main
from ingest.rulefiles import RULE_FIELDS

REPO = Path(__file__).resolve().parent.parent

RULE = """\
[[rule]]
name = "news"
watch = "drops/news"
match = ["*.mxf", "**/*.mov"]
ignore = ["**/proxy/**"]
object_name = "{stem}"
collection = "NEWS"
media = "TAPE"
source_server = "NAS"
file_path_root = "/news"
qos = "direct_and_cache"
priority = 50
"""


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # main() attaches a stderr handler to the "ingest" logger; do not leak it between tests.
    logger = logging.getLogger("ingest")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    captured = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config folder: ingest.toml naming rules/, a news rule, drops/news."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INGEST_CONFIG", raising=False)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "news.toml").write_text(RULE)
    (tmp_path / "drops" / "news").mkdir(parents=True)
    (tmp_path / "ingest.toml").write_text('[rules]\npaths = ["rules"]\n')
    return tmp_path


def test_check_valid(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "rules", "check")
    assert (code, out, err) == (0, "OK: 1 rule in 1 file\n", "")


def test_check_invalid_lists_every_problem(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "rules" / "bad.toml").write_text(RULE.replace('"news"', '"news"\nprioritty = 5'))
    code, _, err = run(capsys, "rules", "check")
    assert code == 3
    assert "error: 2 problems in the rules:" in err
    # the config names its rules by absolute path, so messages do too
    assert f"{site / 'rules' / 'bad.toml'}:3: rule 'news': key 'prioritty': unknown key" in err
    assert "key 'name': duplicate rule name; first defined at" in err


def test_check_json(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "rules", "check", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] and doc["rules"] == 1 and doc["errors"] == []
    (site / "rules" / "news.toml").write_text(RULE.replace("priority = 50", "priority = 500"))
    code, out, _ = run(capsys, "rules", "check", "--json")
    doc = json.loads(out)
    assert code == 3 and not doc["ok"]
    assert doc["errors"][0]["key"] == "priority" and doc["errors"][0]["line"] == 12


def test_check_warnings_do_not_fail(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "rules" / "z.toml").write_text(RULE.replace('"news"', '"news2"'))
    code, out, _ = run(capsys, "rules", "check")
    assert code == 0
    assert out.startswith(f"warning: {site / 'rules' / 'z.toml'}:1: rule 'news2': key 'match':")
    assert out.endswith("OK: 2 rules in 2 files, 1 warning\n")


def test_check_paths_and_rules_option(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = site / "other"
    other.mkdir()
    (other / "x.toml").write_text(RULE.replace("priority = 50", "priority = 0"))
    assert run(capsys, "rules", "check", "--rules", "other")[0] == 3
    assert run(capsys, "rules", "check", "rules/news.toml")[0] == 0
    assert run(capsys, "rules", "check", "other/x.toml")[0] == 3


def test_check_with_config_elsewhere(
    site: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path_factory.mktemp("cwd")
    config = site / "ingest.toml"
    import os

    os.chdir(elsewhere)
    # relative watch folders resolve against the config's folder, not the current one
    assert run(capsys, "rules", "check", "--config", str(config))[0] == 0
    assert run(capsys, "rules", "check", str(site / "rules"))[0] == 3  # no config here


def test_explain_match(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "drops" / "news" / "clip.mxf").write_bytes(b"12345")
    code, out, _ = run(capsys, "rules", "explain", "drops/news/clip.mxf")
    assert code == 0
    assert "rule 'news' takes it" in out
    body = json.loads(out[out.index("{") :])
    assert body["objectName"] == "clip" and body["qos"] == 0x103
    assert body["components"] == ["clip.mxf"]
    code, out, _ = run(capsys, "rules", "explain", "--json", "drops/news/clip.mxf")
    doc = json.loads(out)
    assert code == 0 and doc["rule"] == "news" and doc["body"] == body
    assert doc["drop"]["size"] == 5


def test_explain_no_match_says_why(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "drops" / "news" / "proxy").mkdir()
    (site / "drops" / "news" / "proxy" / "a.mov").write_text("x")
    (site / "drops" / "news" / "a.wav").write_text("x")
    code, out, _ = run(capsys, "rules", "explain", "drops/news/proxy/a.mov")
    assert code == 1
    assert "ignored: hidden by the ignore '**/proxy/**'" in out
    code, out, _ = run(capsys, "rules", "explain", "drops/news/a.wav")
    assert code == 1
    assert "no match pattern fits (tried '*.mxf', '**/*.mov')" in out
    assert "no rule takes this path" in out
    (site / "elsewhere.mxf").write_text("x")
    code, out, _ = run(capsys, "rules", "explain", "--json", "elsewhere.mxf")
    doc = json.loads(out)
    assert code == 1 and doc["matched"] is False
    assert doc["trials"][0]["outcome"] == "outside"


def test_explain_refused_name(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "drops" / "news" / "a\nb.mxf").write_text("x")
    code, out, _ = run(capsys, "rules", "explain", str(site / "drops" / "news" / "a\nb.mxf"))
    assert code == 1 and "refused: object name" in out and "control character" in out


def test_invalid_rules_stop_explain(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "rules" / "news.toml").write_text("[[rule]\n")
    (site / "f").write_text("x")
    code, _, err = run(capsys, "rules", "explain", "f")
    assert code == 3 and "TOML syntax error" in err


@pytest.mark.parametrize("argv", [["rules"], ["rules", "check"], ["rules", "explain"]])
def test_help_ends_with_an_example(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *argv, "--help")
    assert code == 0
    description = out.split("Options:")[0].rstrip()
    assert re.search(r"Example:\n( +ingest rules .+\n?)+$", description), description


# --- the example rule files --------------------------------------------------------------


def example_site(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    shutil.copy(REPO / "ingest.example.toml", tmp_path / "ingest.toml")
    for folder in ("news", "dpx", "ftp", "sets", "clips"):
        (tmp_path / "drops" / folder).mkdir(parents=True)
    return tmp_path


def test_example_rules_pass_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = example_site(tmp_path)
    code, out, err = run(capsys, "rules", "check", "--config", str(site / "ingest.toml"))
    assert (code, err) == (0, ""), err
    assert out == "OK: 5 rules in 5 files\n"


def test_examples_cover_every_key_and_case() -> None:
    texts = {p.name: p.read_text() for p in (REPO / "rules").glob("*.toml")}
    assert set(texts) == {"news.toml", "dpx.toml", "ftp.toml", "fileset.toml", "sidecar.toml"}
    every = "\n".join(texts.values())
    for key in RULE_FIELDS:
        # ([rule.fields] is a table of its own)
        written = rf"^{key} = " if key != "fields" else r"^\[rule\.fields\]$"
        assert re.search(written, every, re.MULTILINE), f"no example sets {key!r}"
    assert (
        'mode = "folder"' in texts["dpx.toml"] and 'ready_marker = "_COMPLETE"' in texts["dpx.toml"]
    )


def test_examples_explain_a_dpx_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = example_site(tmp_path)
    reel = site / "drops" / "dpx" / "REEL_7"
    reel.mkdir()
    for name in ("f0001.dpx", "f0002.dpx", "_COMPLETE", "f0001.md5"):
        (reel / name).write_text("x")
    code, out, _ = run(
        capsys, "rules", "explain", "--json", "--config", str(site / "ingest.toml"), str(reel)
    )
    doc = json.loads(out)
    assert code == 0
    assert doc["body"]["components"] == ["REEL_7/f0001.dpx", "REEL_7/f0002.dpx"]
    assert doc["ready_marker"]["present"] is True


def test_python_dash_m_ingest(tmp_path: Path) -> None:
    site = example_site(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "ingest", "rules", "check", "--config", "ingest.toml"],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (site / "drops" / "ftp").rmdir()
    done = subprocess.run(
        [sys.executable, "-m", "ingest", "rules", "check", "--config", "ingest.toml"],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    assert "ftp.toml:10: rule 'ftp-landing': key 'watch': the folder" in done.stderr
