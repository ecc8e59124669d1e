"""Rule edits while the real daemon runs against the emulator: a refused edit is visible
(``ingest status`` exits 1 naming file and line) and the fix clears it; every drop records
the rules version that built its request, and ``rules show`` gives back its values; an
editor's multi-step write, a rename save and a delete and re-create end in the rules on
disk, with no drop lost on the way."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from ingest.rulefiles import load_rules
from ingest.ruleversions import normalize, version_of

from .support.deployment import Deployment, rule_toml
from .support.wait import wait_for


def rules_state(dep: Deployment) -> dict[str, Any] | None:
    """The daemon's published word on its rules (None before it wrote it)."""
    if not dep.ledger_path.exists():
        return None
    with contextlib.closing(sqlite3.connect(dep.ledger_path, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        try:
            row = conn.execute("SELECT * FROM rules_state WHERE id = 1").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
    return dict(row) if row else None


def disk_version(dep: Deployment) -> str:
    """The version of the rules on disk, as the daemon would compute it."""
    return version_of(normalize(load_rules([dep.rules_dir], dep.root)))


def wait_in_force(dep: Deployment, version: str, timeout: float = 20) -> dict[str, Any]:
    """The rules state once ``version`` is in force and nothing is refused."""

    def check() -> dict[str, Any] | None:
        state = rules_state(dep)
        ok = state and state["version"] == version and state["refused_since"] is None
        return state if ok else None

    return wait_for(check, timeout)


def wait_refused(dep: Deployment, timeout: float = 20) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        state = rules_state(dep)
        return state if state and state["refused_since"] is not None else None

    return wait_for(check, timeout)


def news_text(dep: Deployment, **keys: Any) -> str:
    """The text ``dep.rule()`` writes, with ``keys`` changed."""
    values: dict[str, Any] = {
        "name": "news", "watch": str(dep.watch), "match": ["**/*.mxf"],
        "settle_seconds": 0.5, "object_name": "{stem}", "collection": "NEWS",
        "media": "DISK1", "source_server": "NAS", "file_path_root": "/news",
    }  # fmt: skip
    values.update(keys)
    return rule_toml(values)


def started_in_force(dep: Deployment) -> tuple[Path, str]:
    """The news rule written, the engine started with it in force: (its file, its version)."""
    path = dep.rule()
    good = disk_version(dep)
    dep.start()
    wait_in_force(dep, good)
    return path, good


def archive(dep: Deployment, name: str) -> dict[str, Any]:
    (dep.watch / name).write_bytes(name.encode())
    return dep.wait_state(name, "COMPLETED", timeout=60)


def test_an_invalid_edit_is_refused_visible_in_status_and_cleared_by_the_fix(
    deployment: Deployment,
) -> None:
    dep = deployment
    path = dep.rule()
    good = disk_version(dep)
    dep.start()
    before = archive(dep, "before.mxf")
    assert before["rules_version"] == good
    assert dep.ingest("status").returncode == 0

    # Saved with an unknown QoS on line 8 (the admin believes it is live).
    path.write_text(
        news_text(dep).replace('collection = "NEWS"\n', 'collection = "X"\nqos = "fastest"\n')
    )
    state = wait_refused(dep)
    assert state["version"] == good
    status = dep.ingest("status")
    assert status.returncode == 1, status.stdout
    assert "the rule files on disk are invalid since" in status.stdout
    assert f"{path}:8: rule 'news': key 'qos': unknown QoS 'fastest'" in status.stdout
    doc = json.loads(dep.ingest("status", "--json").stdout)
    (problem,) = doc["rules_in_force"]["problems"]
    assert (problem["file"], problem["line"], problem["key"]) == (str(path), 8, "qos")
    check = dep.ingest("rules", "check")
    assert check.returncode == 3 and f"it keeps version {good[:12]}" in check.stdout

    # The last good rules stay in force meanwhile.
    during = archive(dep, "during.mxf")
    assert (during["rules_version"], during["collection"]) == (good, "NEWS")

    path.write_text(news_text(dep, collection="FIXED"))
    fixed = disk_version(dep)
    wait_in_force(dep, fixed)
    status = dep.ingest("status")
    assert status.returncode == 0, status.stdout
    after = archive(dep, "after.mxf")
    assert (after["rules_version"], after["collection"]) == (fixed, "FIXED")
    assert (
        f"the daemon runs these rules (version {fixed[:12]}" in dep.ingest("rules", "check").stdout
    )


def test_drops_before_and_after_an_edit_carry_their_versions_and_rules_show_gives_them_back(
    deployment: Deployment,
) -> None:
    dep = deployment
    path = dep.rule()
    dep.start()
    first = archive(dep, "first.mxf")
    path.write_text(news_text(dep, collection="ARCHIVE", priority=80, comments="edited"))
    wait_in_force(dep, disk_version(dep))
    second = archive(dep, "second.mxf")
    assert first["rules_version"] != second["rules_version"]

    for drop in (first, second):
        shown = dep.ingest("rules", "show", drop["rules_version"][:10], "--json")
        assert shown.returncode == 0, shown.stderr
        (rule,) = json.loads(shown.stdout)["rules"]
        body = json.loads(drop["body"])
        qos = rule["qos"] | (0x100 if rule["delete_on_source"] else 0)
        expected = {
            "collectionName": rule["collection"], "media": rule["media"],
            "sourceServer": rule["source_server"], "filePathRoot": rule["file_path_root"],
            "qos": qos, "priority": rule["priority"], "comments": rule["comments"],
            "options": rule["options"],
        }  # fmt: skip
        assert {k: body[k] for k in expected} == expected
    assert json.loads(second["body"])["collectionName"] == "ARCHIVE"

    listed = dep.ingest("ledger", "list", "--rules-version", first["rules_version"][:8], "--json")
    assert [r["path"] for r in json.loads(listed.stdout)] == ["first.mxf"]
    shown = dep.ingest("ledger", "show", "second.mxf")
    assert f"rules_version   {second['rules_version']}" in shown.stdout
    history = json.loads(dep.ingest("rules", "history", "--json").stdout)
    assert [h["version"] for h in history] == [second["rules_version"], first["rules_version"]]
    assert history[0]["in_force"] and not history[1]["in_force"]


def test_an_editor_writing_in_several_steps_ends_in_the_rules_it_wrote(
    deployment: Deployment,
) -> None:
    dep = deployment
    path, good = started_in_force(dep)
    text = news_text(dep, collection="STEPS")
    cut = text.index("media") + 3  # mid-line: the first part alone is not a valid rule
    with path.open("w") as out:
        out.write(text[:cut])
        out.flush()
        os.fsync(out.fileno())
        # The daemon sees the half-written file: refused, the last good rules kept.
        assert wait_refused(dep)["version"] == good
        out.write(text[cut:])
    wait_in_force(dep, disk_version(dep))
    assert archive(dep, "steps.mxf")["collection"] == "STEPS"


def test_a_rename_save_and_a_delete_and_recreate_never_drop_the_rules(
    deployment: Deployment,
) -> None:
    dep = deployment
    path, good = started_in_force(dep)

    # vim: the file renamed to a backup, written anew, the backup removed; a drop
    # settling meanwhile must not lose its rule (nor its watch folder).
    (dep.watch / "vim.mxf").write_bytes(b"v")
    backup = path.with_name("news.toml~")
    os.rename(path, backup)
    path.write_text(news_text(dep, collection="VIM"))
    backup.unlink()
    vim = disk_version(dep)
    wait_in_force(dep, vim)
    assert dep.wait_state("vim.mxf", "COMPLETED", timeout=60)["rule"] == "news"

    # VS Code: a hidden temporary file renamed over the rule file.
    temporary = path.with_name(".news.toml.tmp")
    temporary.write_text(news_text(dep, collection="CODE"))
    os.replace(temporary, path)
    code = disk_version(dep)
    wait_in_force(dep, code)

    # Deleted and re-created with the same content: the same version, no new row.
    text = path.read_text()
    path.unlink()
    (dep.watch / "gap.mxf").write_bytes(b"g")
    path.write_text(text)
    wait_in_force(dep, code)
    assert archive(dep, "after.mxf")["collection"] == "CODE"
    gap = dep.wait_state("gap.mxf", "COMPLETED", timeout=60)
    assert gap["rules_version"] == code
    history = json.loads(dep.ingest("rules", "history", "--json").stdout)
    assert sorted(h["version"] for h in history) == sorted({good, vim, code})
    assert all(r["state"] == "COMPLETED" for r in dep.rows())


def confirm_new_matches(dep: Deployment) -> None:
    text = dep.config_path.read_text()
    dep.config_path.write_text(text.replace("[rules]\n", "[rules]\nconfirm_new_matches = true\n"))


def test_a_widened_glob_archives_the_files_present_at_once_by_default(
    deployment: Deployment,
) -> None:
    dep = deployment
    path = dep.rule()
    (dep.watch / "present.mov").write_bytes(b"p")
    dep.start()
    archive(dep, "a.mxf")
    assert dep.rows("present.mov") == []
    path.write_text(news_text(dep, match=["**/*.mxf", "**/*.mov"]))
    wait_in_force(dep, disk_version(dep))
    assert dep.wait_state("present.mov", "COMPLETED", timeout=60)["rule"] == "news"


def test_confirm_new_matches_holds_the_files_present_until_rules_accept(
    deployment: Deployment,
) -> None:
    dep = deployment
    confirm_new_matches(dep)
    path = dep.rule()
    (dep.watch / "present.mov").write_bytes(b"p")
    dep.start()
    archive(dep, "a.mxf")

    # Before saving: rules check on the edited copy lists what it would archive.
    draft = dep.root / "draft"
    draft.mkdir()
    (draft / "news.toml").write_text(news_text(dep, match=["**/*.mxf", "**/*.mov"]))
    check = dep.ingest("rules", "check", str(draft))
    assert "this edit would archive 1 file now present" in check.stdout, check.stdout
    assert f"{dep.watch}/present.mov (rule 'news')" in check.stdout
    assert "holds them until `ingest rules accept`" in check.stdout

    path.write_text(news_text(dep, match=["**/*.mxf", "**/*.mov"]))
    wait_in_force(dep, disk_version(dep))
    # A file arriving after the reload is not held; the one present is.
    arrived = archive(dep, "arrived.mov")
    assert arrived["rules_version"] == disk_version(dep)
    assert dep.rows("present.mov") == []
    status = dep.ingest("status")
    assert status.returncode == 1
    assert "1 file(s) already present, newly matched by a rules edit, are held" in status.stdout
    assert f"{dep.watch}/present.mov (rule 'news')" in status.stdout

    accepted = dep.ingest("rules", "accept")
    assert accepted.returncode == 0 and "releases 1 held file" in accepted.stdout
    assert dep.wait_state("present.mov", "COMPLETED", timeout=60)["rule"] == "news"
    assert dep.ingest("status").returncode == 0
