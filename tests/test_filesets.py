"""File sets (DFM's File Set mode) with the real engine against the emulator: a manifest
and the files it lists are one object, submitted only once every listed file is there and
settled; never partially; a manifest that cannot be read as written is refused, naming
the line, its files left in place."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from ingest.cli import cli
from ingest.engine.folders import Tidy

from .support.deployment import Deployment, rule_toml
from .support.wait import wait_for


def fileset_rule(dep: Deployment, **keys: Any) -> None:
    values: dict[str, Any] = {
        "name": "sets", "watch": str(dep.watch), "mode": "fileset", "manifest": "**/*.mdf",
        "settle_seconds": 1.0, "object_name": "{stem}", "collection": "RULE_COLL",
        "media": "DISK1", "source_server": "NAS", "file_path_root": "/news",
    }  # fmt: skip
    values.update(keys)
    (dep.rules_dir / "sets.toml").write_text(rule_toml(values))


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_a_manifest_first_waits_for_its_files_then_archives_exactly_them(
    deployment: Deployment,
) -> None:
    dep = deployment
    fileset_rule(dep)
    show = dep.watch / "show"
    essence, audio = b"E" * 300_000, b"A" * 1000
    write(show / "EP_42.mxf", essence)
    write(show / "EP_42" / "a1.wav", audio)
    write(show / "unlisted.mxf", b"not in the set")
    # The manifest arrives first: one listed file is not even there yet.
    write(
        show / "EP_42.mdf",
        b"# from the MAM\nobjectName=EP_42_FINAL\ncategoryName=SERIES\npriority=55\n"
        b"<comments>\nfinal mix\n</comments>\n"
        b"<fileList>\nEP_42.mxf\nEP_42/*\nEP_42_subs.srt\n</fileList>\n",
    )
    dep.start()

    def waiting() -> dict[str, Any] | None:
        rows = dep.rows("show/EP_42.mdf")
        error = rows[-1]["error"] if rows else None
        return rows[-1] if error and "waiting for 1 listed file" in error else None

    row = wait_for(waiting, 30)
    assert "line 11: EP_42_subs.srt" in row["error"]
    # The missing file is copied in slowly: nothing leaves until it is there and settled.
    subs = show / "EP_42_subs.srt"
    with subs.open("wb") as out:
        for _ in range(25):
            out.write(b"S" * 100)
            out.flush()
            time.sleep(0.1)  # the copy's pace (shorter than the settle window)
            assert dep.archive_requests() == []
            assert dep.rows("show/EP_42.mdf")[-1]["state"] in ("DETECTED", "SETTLING")
    done = dep.wait_state("show/EP_42.mdf", "COMPLETED", "FAILED", "REJECTED", timeout=60)
    assert done["state"] == "COMPLETED", done
    body = json.loads(done["body"])
    listed = ["show/EP_42.mxf", "show/EP_42/a1.wav", "show/EP_42_subs.srt"]
    assert body["components"] == sorted(listed)
    assert (body["objectName"], body["collectionName"]) == ("EP_42_FINAL", "SERIES")
    assert (body["priority"], body["comments"]) == (55, "final mix")
    assert len(dep.archive_requests()) == 1  # one object, one request
    # DIVA archived the files whole: the subtitles as they were once copied, not mid-way
    stored = dep.stored()["EP_42_FINAL"]
    assert stored == {
        "show/EP_42.mxf": md5(essence),
        "show/EP_42/a1.wav": md5(audio),
        "show/EP_42_subs.srt": md5(b"S" * 2500),
    }
    # The manifest is not archived, and is removed once the set is COMPLETED; a file it
    # did not list is nobody's drop under this rule.
    wait_for(lambda: not (show / "EP_42.mdf").exists(), 10)
    assert (show / "unlisted.mxf").exists()
    assert [r["path"] for r in dep.rows()] == ["show/EP_42.mdf"]


def test_a_checksummed_file_set_records_each_listed_file(deployment: Deployment) -> None:
    dep = deployment
    fileset_rule(dep, checksum="sha256", settle_seconds=0.3)
    files = {"c/one.mxf": b"1" * 5000, "c/two.wav": b"2" * 70}
    for name, data in files.items():
        write(dep.watch / name, data)
    write(dep.watch / "c.mdf", b"<fileList>\nc/*\n</fileList>\n")
    dep.start()
    row = dep.wait_state("c.mdf", "COMPLETED", "FAILED", "REJECTED", timeout=30)
    assert row["state"] == "COMPLETED", row
    assert json.loads(row["checksums"]) == {
        name: hashlib.sha256(data).hexdigest() for name, data in files.items()
    }


def test_a_manifest_that_never_completes_fails_naming_what_is_missing(
    deployment: Deployment,
) -> None:
    dep = deployment
    fileset_rule(dep, settle_seconds=0.3, incomplete_after_seconds=2)
    write(dep.watch / "a.mxf", b"a")
    write(
        dep.watch / "set.mdf",
        b"objectName=SET\n<fileList>\na.mxf\nnever.mxf\nnothing_here/**\n</fileList>\n",
    )
    write(dep.watch / "lone.mdf", b"<fileList>\nlater.mxf\n</fileList>\n")
    dep.start()
    row = dep.wait_state("set.mdf", "FAILED", "COMPLETED", "REJECTED", timeout=30)
    assert row["state"] == "FAILED", row
    assert "incomplete 2 s after the manifest was written" in row["error"]
    assert "line 4: never.mxf; line 5: nothing_here/**" in row["error"]
    lone = dep.wait_state("lone.mdf", "FAILED", "COMPLETED", "REJECTED", timeout=30)
    assert lone["state"] == "FAILED" and "line 2: later.mxf" in lone["error"], lone
    assert dep.archive_requests() == []  # nothing partial: a.mxf did not go alone
    assert (dep.watch / "a.mxf").exists() and (dep.watch / "set.mdf").exists()
    # The files come after all (the manifests unchanged): each set is seen anew, whole.
    write(dep.watch / "never.mxf", b"n")
    write(dep.watch / "nothing_here" / "x" / "y.wav", b"y")
    write(dep.watch / "later.mxf", b"l")
    done = dep.wait_state("set.mdf", "COMPLETED", timeout=30)
    assert json.loads(done["body"])["components"] == [
        "a.mxf", "never.mxf", "nothing_here/x/y.wav",
    ]  # fmt: skip
    assert json.loads(dep.wait_state("lone.mdf", "COMPLETED", timeout=30)["body"])[
        "components"
    ] == ["later.mxf"]


def test_a_set_waiting_for_its_files_is_idle_as_one_waiting_for_a_marker(
    deployment: Deployment,
) -> None:
    dep = deployment
    fileset_rule(dep, settle_seconds=0.3)
    write(dep.watch / "w.mdf", b"<fileList>\nnot_yet.mxf\n</fileList>\n")
    dep.start(until_idle=True)  # (a cron job's ``ingest run --until-idle``)
    assert dep.thread is not None
    wait_for(lambda: dep.thread is not None and not dep.thread.is_alive(), 30)
    [row] = dep.rows("w.mdf")
    assert row["state"] == "DETECTED" and "line 2: not_yet.mxf" in row["error"], row


def test_hostile_manifests_are_rejected_naming_the_line(deployment: Deployment) -> None:
    dep = deployment
    fileset_rule(dep, settle_seconds=0.3)
    outside = dep.watch.parent / "outside.mxf"
    outside.write_bytes(b"secret")
    write(dep.watch / "a.mxf", b"a")
    manifests = {
        "up.mdf": (b"objectName=UP\n<fileList>\na.mxf\n../outside.mxf\n</fileList>\n", "line 4"),
        "abs.mdf": (f"<fileList>\n{outside}\n</fileList>\n".encode(), "line 2"),
        "junk.mdf": (b"objectName=J\n\x00\x9c\xffPK\x03\x04", "line 2"),
        "bad.mdf": (b"objectName=B\npriority=urgent\n<fileList>\na.mxf\n</fileList>\n", "line 2"),
    }
    for name, (data, _) in manifests.items():
        write(dep.watch / name, data)
    dep.start()
    for name, (_, line) in manifests.items():
        row = dep.wait_state(name, "REJECTED", "FAILED", "COMPLETED", timeout=30)
        assert row["state"] == "REJECTED", row
        assert f"manifest {name!r}: {line}: " in row["error"], row["error"]
    assert "leaves the watch folder" in dep.rows("up.mdf")[-1]["error"]
    assert dep.archive_requests() == []
    for name in [*manifests, "a.mxf"]:
        assert (dep.watch / name).exists()
    assert outside.read_bytes() == b"secret"


def test_explain_shows_the_files_a_manifest_would_archive(deployment: Deployment) -> None:
    dep = deployment
    fileset_rule(dep, archive_manifest=True, manifest_priority="secondary")
    write(dep.watch / "EP.mxf", b"e")
    write(dep.watch / "extras" / "x.wav", b"x")
    write(dep.watch / "EP.mdf", b"objectName=M\n<fileList>\nEP.mxf\nextras/**\n</fileList>\n")

    def explain(path: Path, code: int = 0) -> dict[str, Any]:
        argv = ["rules", "explain", "--config", str(dep.config_path), "--json", str(path)]
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == code, result.output
        doc: dict[str, Any] = json.loads(result.stdout)
        return doc

    told = explain(dep.watch / "EP.mdf")
    assert told["drop"]["kind"] == "fileset"
    assert told["drop"]["members"] == ["EP.mdf", "EP.mxf", "extras/x.wav"]
    # secondary: the rule's object name wins over the manifest's
    assert told["body"]["objectName"] == "EP"
    assert told["body"]["components"] == ["EP.mdf", "EP.mxf", "extras/x.wav"]
    listed = explain(dep.watch / "EP.mxf", code=1)  # (1: no rule takes it)
    assert listed["matched"] is False
    assert "only manifests" in listed["trials"][0]["detail"]
    text = CliRunner().invoke(
        cli, ["rules", "explain", "--config", str(dep.config_path), str(dep.watch / "EP.mdf")]
    )
    assert "the manifest lists 3 file(s) found:\n    EP.mdf\n    EP.mxf\n" in text.output


def test_a_manifest_written_again_after_its_set_settled_is_not_removed(tmp_path: Path) -> None:
    manifest = tmp_path / "EP.mdf"
    write(manifest, b"<fileList>\na\n</fileList>\n")
    settled_ns = manifest.stat().st_mtime_ns
    Tidy("sets EP.mdf", manifest, None, settled_ns)()
    assert not manifest.exists()  # the set's own manifest goes, once COMPLETED
    write(manifest, b"<fileList>\nb\n</fileList>\n")  # the next set of that name
    os.utime(manifest, ns=(settled_ns + 1, settled_ns + 1))
    Tidy("sets EP.mdf", manifest, None, settled_ns)()
    assert manifest.exists()
