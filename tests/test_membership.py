"""``ingest rules explain`` and the daemon agree on what a folder drop is made of.

One folder holds every case the rules know: nested folders, built-in ignores (hidden
files and folders, partial uploads, desktop litter), a rule's own ignores (by name, by
path, case-blind), the ready marker at the top and a file of the same name deeper down,
symlinks to a file and to a folder, a FIFO, an empty folder, spaces and accents. What
``explain`` prints is then compared with what the running engine asked DIVA to archive.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from ingest.cli import cli

from .support.deployment import Deployment

#: the members of REEL_1 below, as the rules define them
MEMBERS = [
    "REEL_1/audio/a.aif",
    "REEL_1/clip ü 1.dpx",
    "REEL_1/f1.dpx",
    "REEL_1/sub/_COMPLETE",  # only the marker at the top of the folder is one
    "REEL_1/sub/deeper/f3.dpx",
    "REEL_1/sub/f2.dpx",
]


def fill(reel: Path) -> None:
    for name in MEMBERS:
        (reel.parent / name).parent.mkdir(parents=True, exist_ok=True)
        (reel.parent / name).write_bytes(name.encode())
    litter = [".hidden.dpx", ".cache/x.dpx", "x.dpx.part", "~$lock.dpx", "Thumbs.db",
              "._f1.dpx", ".DS_Store", "sub/.DS_Store", "a.md5", "sub/B.MD5",
              "proxy/p.dpx", "sub/proxy/q.dpx", "audio/a.wav"]  # fmt: skip
    for name in litter:
        (reel / name).parent.mkdir(parents=True, exist_ok=True)
        (reel / name).write_bytes(b"not a member")
    (reel / "empty").mkdir()
    (reel / "link.dpx").symlink_to(reel / "f1.dpx")
    (reel / "linked").symlink_to(reel / "sub")
    os.mkfifo(reel / "fifo")
    (reel / "_COMPLETE").write_bytes(b"")


def explain(dep: Deployment, path: Path) -> dict[str, Any]:
    result = CliRunner().invoke(
        cli, ["rules", "explain", "--config", str(dep.config_path), "--json", str(path)]
    )
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def test_explain_lists_what_the_daemon_archives(deployment: Deployment) -> None:
    dep = deployment
    dep.rule("dpx", mode="folder", match=["REEL_*"], ready_marker="_COMPLETE",
             object_name="{folder}", ignore=["*.md5", "proxy", "REEL_*/audio/*.wav"],
             ignore_case=True, delete_on_source=False, settle_seconds=0.3)  # fmt: skip
    reel = dep.watch / "REEL_1"
    fill(reel)
    told = explain(dep, reel)
    assert told["drop"]["members"] == MEMBERS
    # any path inside the drop explains the same drop
    assert explain(dep, reel / "sub" / "deeper" / "f3.dpx")["drop"] == told["drop"]

    dep.start()
    row = dep.wait_state("REEL_1", "COMPLETED")
    sent = json.loads(row["body"])
    assert sent["components"] == MEMBERS
    assert sent == told["body"]  # the whole request, members and all, as explain printed it
    assert (row["file_count"], row["size"]) == (len(MEMBERS), told["drop"]["size"])
    [archived] = [o for o in dep.objects() if o["objectName"] == "REEL_1"]
    assert sorted(c["fileName"] for c in archived["components"]) == MEMBERS
