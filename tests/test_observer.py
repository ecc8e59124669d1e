"""The doctor and the engine agree on how each watch folder is watched.

Both are run as an operator runs them, on the same config: the engine for one idle turn
(its decision is the observer in the ledger's watchers row, as ``ingest status`` shows
it), the doctor with ``--no-diva`` (its decision is the folder's filesystem line, and
whether the folder counts against the inotify limit). The filesystem type is stubbed
where the decision reads it, so network and FUSE shares are covered on a local disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest import watch
from ingest.config import load_config
from ingest.engine import Engine
from ingest.ledger import Ledger

from .support.ledgers import invoke

RULE = """
[[rule]]
name = "{name}"
watch = "{watch}"
match = ["*.mxf"]
collection = "NEWS"
media = "DISK1"
source_server = "NAS"
settle_seconds = 0.1
{observer}
"""


def _site(root: Path, settings: tuple[str, ...]) -> tuple[Path, Path]:
    """A config whose rules all watch one folder, one rule per observer setting
    (``"default"``: the rule does not name one)."""
    folder = root / "drops"
    folder.mkdir()
    rules = root / "rules"
    rules.mkdir()
    for i, setting in enumerate(settings):
        observer = "" if setting == "default" else f'observer = "{setting}"'
        text = RULE.format(name=f"rule{i}", watch=folder, observer=observer)
        (rules / f"rule{i}.toml").write_text(text, encoding="utf-8")
    config = root / "ingest.toml"
    # DIVA at a loopback port nothing listens on: an idle engine makes no call.
    config.write_text(
        '[diva]\nurl = "http://127.0.0.1:9"\nusername = "operator"\n'
        'password_env = "OBSERVER_TEST_PASSWORD"\n'
        '[ledger]\nurl = "sqlite:///ledger.db"\n[rules]\npaths = ["rules"]\n',
        encoding="utf-8",
    )
    return config, folder


def _engine_observer(config: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OBSERVER_TEST_PASSWORD", "operator")
    engine = Engine(load_config(config))
    # Idle once the folder is scanned and a settle window (0.1 s here) has been quiet.
    assert engine.run(until_idle=True) == 0
    ledger = Ledger.open(f"sqlite:///{config.parent / 'ledger.db'}")
    try:
        rows: dict[str, str] = {row["watch"]: row["observer"] for row in ledger.watchers()}
    finally:
        ledger.close()
    return rows[str(folder)]


def _doctor_observer(config: Path, folder: Path) -> str:
    result = invoke("doctor", "--no-diva", "--json", "--config", str(config))
    checks = json.loads(result.stdout)["checks"]
    access = "exists, readable and writable"
    lines = [c["message"] for c in checks if c["check"] == f"folder {folder}"]
    lines.remove(access)
    assert len(lines) == 1, checks
    said = [kind for kind in ("native", "polling") if kind in lines[0]]
    assert len(said) == 1, lines
    # A natively watched folder takes inotify watches; a polled one takes none.
    counted = any(c["check"] == "inotify" for c in checks)
    assert counted == (said[0] == "native"), checks
    return said[0]


@pytest.mark.parametrize(
    ("settings", "fstype", "expected"),
    [
        (("default",), "ext4", "native"),
        (("default",), "nfs4", "polling"),
        (("default",), "fuse.sshfs", "polling"),
        (("default",), "unknown", "native"),
        (("polling", "default"), "ext4", "polling"),
        (("polling", "native"), "ext4", "polling"),
        (("polling", "native"), "cifs", "polling"),
        (("native", "default"), "ext4", "native"),
        (("native", "default"), "nfs4", "polling"),
        (("native",), "ext4", "native"),
        (("native", "native"), "nfs4", "native"),
        (("polling",), "ext4", "polling"),
        (("polling",), "nfs4", "polling"),
    ],
)
def test_doctor_and_engine_agree_on_the_observer(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: tuple[str, ...],
    fstype: str,
    expected: str,
) -> None:
    monkeypatch.setattr(watch, "filesystem_type", lambda path, mounts="": fstype)
    monkeypatch.chdir(tmp_path)
    config, folder = _site(tmp_path, settings)
    doctor = _doctor_observer(config, folder)
    engine = _engine_observer(config, folder, monkeypatch)
    assert (doctor, engine) == (expected, expected)
