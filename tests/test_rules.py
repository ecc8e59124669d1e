"""Rules: loading, validation (every error class), matching, folder mode, bodies, hot reload."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from ingest.errors import RulesError
from ingest.rulefiles import RuleBook, check_rules, load_rules
from ingest.rules import (
    Drop,
    DropRefused,
    Rule,
    RuleSet,
    build_archive_body,
    glob_regex,
)


def toml_value(value: Any) -> str:
    # JSON scalars and lists of them are valid TOML values.
    return json.dumps(value, ensure_ascii=False)


def rule_text(name: str = "r", watch: str = "w", match: Any = ("*.mxf",), **keys: Any) -> str:
    base: dict[str, Any] = {
        "name": name,
        "watch": watch,
        "match": None if match is None else list(match),
        "collection": "C",
        "media": "M",
        "source_server": "S",
    }
    base.update(keys)
    body = "\n".join(f"{k} = {toml_value(v)}" for k, v in base.items() if v is not None)
    return f"[[rule]]\n{body}\n"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp_path with watch folders w, w2 and a rules folder."""
    (tmp_path / "w").mkdir()
    (tmp_path / "w2").mkdir()
    (tmp_path / "rules").mkdir()
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load(tree: Path, *texts: str) -> RuleSet:
    for i, text in enumerate(texts):
        write(tree / "rules" / f"{i:02d}.toml", text)
    return load_rules([tree / "rules"], base_dir=tree)


def problems(tree: Path, *texts: str) -> list[str]:
    for i, text in enumerate(texts):
        write(tree / "rules" / f"{i:02d}.toml", text)
    result = check_rules([tree / "rules"], base_dir=tree)
    return [str(p) for p in result.errors]


def make_rule(watch: Path, **keys: Any) -> Rule:
    values: dict[str, Any] = {
        "name": "r",
        "watch": watch,
        "match": ("*.mxf",),
        "collection": "C",
        "media": "M",
        "source_server": "S",
    }
    values.update(keys)
    return Rule(**values)


# --- globs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "hit"),
    [
        ("*.mxf", "a.mxf", True),
        ("*.mxf", "d/a.mxf", False),  # * stays in one folder
        ("**/*.mov", "a.mov", True),  # **/ spans zero folders too
        ("**/*.mov", "d/e/a.mov", True),
        ("**/*.mov", "d/e/a.mxf", False),
        ("d/**", "d/e/f", True),
        ("d/**", "x/e/f", False),
        ("a?.mxf", "ab.mxf", True),
        ("a?.mxf", "a/.mxf", False),  # ? does not cross /
        ("[ab]*.mxf", "b1.mxf", True),
        ("[!ab]*.mxf", "b1.mxf", False),
        ("[!ab]*.mxf", "c1.mxf", True),
        ("clip[1].mxf", "clip1.mxf", True),
        ("a[.mxf", "a[.mxf", True),  # an unclosed [ is literal
        ("a+b (1).mxf", "a+b (1).mxf", True),  # regex characters are literal
    ],
)
def test_glob(pattern: str, path: str, hit: bool) -> None:
    import re

    assert (re.fullmatch(glob_regex(pattern), path, re.DOTALL) is not None) is hit


# --- matching ---------------------------------------------------------------------------


def test_file_mode_patterns_relative_to_watch(tree: Path) -> None:
    rules = load(tree, rule_text(match=["*.mxf", "**/*.mov"]))
    w = tree / "w"
    assert rules.match(w / "a.mxf") is not None
    assert rules.match(w / "sub" / "a.mxf") is None
    found = rules.match(w / "sub" / "deep" / "a.mov")
    assert found is not None and found.drop == "sub/deep/a.mov" and found.kind == "file"
    assert found.drop_path == w / "sub" / "deep" / "a.mov"


@pytest.mark.parametrize(
    "name",
    [
        ".hidden.mxf",
        "a.mxf.part",
        "a.tmp",
        "a.crdownload",
        "~$a.mxf",
        "Thumbs.db",
        ".DS_Store",
        "._a.mxf",
    ],
)
def test_builtin_ignores_hide_files_and_folders(tree: Path, name: str) -> None:
    rules = load(tree, rule_text(match=["**"]))
    w = tree / "w"
    assert rules.match(w / name) is None
    assert rules.match(w / "sub" / name) is None
    # a folder with such a name hides everything below it
    assert rules.match(w / name / "clip.mxf") is None
    assert rules.match(w / "clip.mxf") is not None
    explanation = rules.explain(w / "sub" / name, read_disk=False)
    assert explanation.trials[0].outcome == "ignored"
    assert "built-in ignore" in explanation.trials[0].detail


def test_user_ignores(tree: Path) -> None:
    rules = load(tree, rule_text(match=["**/*"], ignore=["**/proxy/**", "*.xml", "cache"]))
    w = tree / "w"
    assert rules.match(w / "a" / "proxy" / "x.mov") is None
    assert rules.match(w / "proxy" / "x.mov") is None
    assert rules.match(w / "deep" / "b.xml") is None  # slash-free: any depth
    assert rules.match(w / "cache" / "x.mov") is None  # a folder name hides its content
    assert rules.match(w / "a" / "x.mov") is not None
    trial = rules.explain(w / "proxy" / "x.mov", read_disk=False).trials[0]
    assert trial.ignored_by is not None and "**/proxy/**" in trial.ignored_by


def test_ignore_case(tree: Path) -> None:
    rules = load(tree, rule_text(match=["*.mxf"], ignore=["*.XML"], ignore_case=True))
    assert rules.match(tree / "w" / "A.MXF") is not None
    assert rules.match(tree / "w" / "a.xml") is None
    strict = load(tree, rule_text(match=["*.mxf"]))
    assert strict.match(tree / "w" / "A.MXF") is None


def test_first_match_wins_file_then_order_in_file(tree: Path) -> None:
    write(tree / "rules" / "b.toml", rule_text("b-first", match=["*"]) + rule_text("b-second"))
    write(tree / "rules" / "a.toml", rule_text("a-only", match=["*.mxf"]))
    rules = load_rules([tree / "rules"], base_dir=tree)
    assert [r.name for r in rules] == ["a-only", "b-first", "b-second"]
    found = rules.match(tree / "w" / "x.mxf")
    assert found is not None and found.rule.name == "a-only"
    found = rules.match(tree / "w" / "x.mov")
    assert found is not None and found.rule.name == "b-first"
    explanation = rules.explain(tree / "w" / "x.mxf", read_disk=False)
    assert "comes first" in explanation.trials[1].detail


def test_outside_dotdot_and_relative_paths_never_match(tree: Path) -> None:
    rules = load(tree, rule_text(match=["**"]))
    w = tree / "w"
    assert rules.match(tree / "w2" / "a.mxf") is None
    assert rules.match(Path(str(w) + "x") / "a.mxf") is None  # /w is not a prefix of /wx
    assert rules.match(w / ".." / "w2" / "a.mxf") is None
    assert rules.match(w / "a" / ".." / "a.mxf") is None
    assert rules.match(Path("w/a.mxf")) is None
    assert rules.match(w) is None


def test_symlinks_never_match(tree: Path) -> None:
    rules = load(tree, rule_text(match=["**"]))
    w = tree / "w"
    (tree / "outside.mxf").write_text("x")
    (tree / "outdir").mkdir()
    (tree / "outdir" / "a.mxf").write_text("x")
    (w / "real.mxf").write_text("x")
    (w / "link.mxf").symlink_to(tree / "outside.mxf")
    (w / "inner.mxf").symlink_to(w / "real.mxf")
    (w / "dirlink").symlink_to(tree / "outdir")
    (w / "dangling.mxf").symlink_to(tree / "nothing")
    assert rules.match(w / "real.mxf") is not None
    for name in ("link.mxf", "inner.mxf", "dirlink/a.mxf", "dangling.mxf"):
        assert rules.match(w / name) is None, name
    trial = rules.explain(w / "dirlink" / "a.mxf", read_disk=False).trials[0]
    assert trial.outcome == "symlink"


def test_watch_reached_through_a_symlink_matches(tree: Path) -> None:
    (tree / "alias").symlink_to(tree / "w")
    rules = load(tree, rule_text(watch="alias", match=["*.mxf"]))
    assert rules.match(tree / "alias" / "a.mxf") is not None
    assert rules.match(tree / "w" / "a.mxf") is not None


def test_disabled_rules_do_not_match_and_need_no_folder(tree: Path) -> None:
    rules = load(tree, rule_text("off", watch="missing", enabled=False), rule_text("on"))
    assert rules.get("off") is not None and not rules.get("off").enabled  # type: ignore[union-attr]
    assert rules.watch_folders() == {tree / "w": (rules.get("on"),)}
    assert rules.explain(tree / "missing" / "a.mxf", read_disk=False).trials[0].outcome == (
        "disabled"
    )


def test_watch_folders_groups_rules(tree: Path) -> None:
    rules = load(
        tree,
        rule_text("a", match=["*.mxf"]) + rule_text("b", match=["*.mov"]),
        rule_text("c", watch="w2"),
    )
    folders = rules.watch_folders()
    assert list(folders) == [tree / "w", tree / "w2"]
    assert [r.name for r in folders[tree / "w"]] == ["a", "b"]


def test_file_mode_marker_is_never_a_drop(tree: Path) -> None:
    rules = load(tree, rule_text(match=["*"], ready_marker="{name}.ready"))
    w = tree / "w"
    assert rules.match(w / "clip.mxf.ready") is None
    found = rules.match(w / "clip.mxf")
    assert found is not None
    drop = Drop("r", str(w), "clip.mxf")
    assert found.rule.marker_path(drop) == w / "clip.mxf.ready"
    assert rules.explain(w / "clip.mxf.ready", read_disk=False).trials[0].outcome == "marker"


# --- folder mode ------------------------------------------------------------------------


@pytest.fixture
def folder_rules(tree: Path) -> RuleSet:
    return load(
        tree,
        rule_text(
            "dpx", mode="folder", match=["REEL_*"], ready_marker="_COMPLETE", ignore=["*.md5"]
        ),
    )


def test_folder_mode_matches_top_level_folders(tree: Path, folder_rules: RuleSet) -> None:
    w = tree / "w"
    (w / "REEL_1" / "sub").mkdir(parents=True)
    (w / "loose.mxf").write_text("x")
    found = folder_rules.match(w / "REEL_1" / "sub" / "f1.dpx")
    assert found is not None
    assert (found.kind, found.drop, found.member) == ("folder", "REEL_1", "REEL_1/sub/f1.dpx")
    itself = folder_rules.match(w / "REEL_1")
    assert itself is not None and itself.member is None
    assert folder_rules.match(w / "OTHER" / "f.dpx") is None  # folder name fits no pattern
    assert folder_rules.match(w / "loose.mxf") is None  # files directly in watch: not drops
    assert folder_rules.match(w / "REEL_1" / ".DS_Store") is None
    assert folder_rules.match(w / "REEL_1" / "a.md5") is None
    marker = folder_rules.match(w / "REEL_1" / "_COMPLETE")
    assert marker is not None and marker.marker


def test_folder_members_and_body(tree: Path, folder_rules: RuleSet) -> None:
    w = tree / "w"
    reel = w / "REEL_1"
    (reel / "sub").mkdir(parents=True)
    for name in ("f2.dpx", "f1.dpx", "sub/f3.dpx", ".DS_Store", "a.md5", "_COMPLETE"):
        (reel / name).write_text("12")
    (reel / "link.dpx").symlink_to(reel / "f1.dpx")
    os.mkfifo(reel / "fifo")
    rule = folder_rules.rules[0]
    found = folder_rules.match(reel / "f1.dpx")
    assert found is not None
    drop = rule.drop_for(found)
    assert drop.members == ("REEL_1/f1.dpx", "REEL_1/f2.dpx", "REEL_1/sub/f3.dpx")
    assert drop.size == 6 and drop.kind == "folder"
    assert rule.marker_path(drop) == reel / "_COMPLETE"
    body = build_archive_body(rule, drop)
    assert body["components"] == list(drop.members)
    assert body["objectName"] == "REEL_1"


def test_empty_folder_drop_is_refused(tree: Path, folder_rules: RuleSet) -> None:
    (tree / "w" / "REEL_2").mkdir()
    found = folder_rules.match(tree / "w" / "REEL_2")
    assert found is not None
    drop = found.rule.drop_for(found)
    with pytest.raises(DropRefused, match="no file"):
        build_archive_body(found.rule, drop)


# --- the archive body -------------------------------------------------------------------


def test_archive_body_is_exactly_the_diva_body(tmp_path: Path) -> None:
    rule = make_rule(
        tmp_path,
        object_name="{stem}",
        collection="NEWS",
        qos=3,
        priority=50,
        file_path_root="/news",
        comments="from {relpath}",
        options="-r",
    )
    body = build_archive_body(rule, Drop("r", str(tmp_path), "day1/clip.mxf", size=5))
    assert body == {
        "objectName": "clip",
        "collectionName": "NEWS",
        "components": ["day1/clip.mxf"],
        "media": "M",
        "sourceServer": "S",
        "filePathRoot": "/news",
        "qos": 0x103,
        "priority": 50,
        "comments": "from day1/clip.mxf",
        "options": "-r",
    }
    keep = make_rule(tmp_path, qos=2, delete_on_source=False)
    assert build_archive_body(keep, Drop("r", str(tmp_path), "a.mxf"))["qos"] == 2


def test_qos_names_map_to_numbers(tree: Path) -> None:
    rules = load(tree, rule_text(qos="cache_and_direct"))
    assert rules.rules[0].qos == 4 and rules.rules[0].wire_qos == 0x104


def test_unsafe_rendered_names_are_refused(tmp_path: Path) -> None:
    rule = make_rule(tmp_path, object_name="{relpath}", collection="{parent}")
    with pytest.raises(DropRefused, match="contains '/'"):
        build_archive_body(rule, Drop("r", str(tmp_path), "a/b.mxf"))
    with pytest.raises(DropRefused, match="collection '' is empty"):
        build_archive_body(rule, Drop("r", str(tmp_path), "b.mxf"))
    with pytest.raises(DropRefused, match="control character"):
        build_archive_body(make_rule(tmp_path), Drop("r", str(tmp_path), "a\nb.mxf"))


def test_rule_repr_is_readable(tree: Path) -> None:
    rule = load(tree, rule_text("news", match=["*.mxf"])).rules[0]
    assert (
        repr(rule)
        == f"Rule('news', watch='{tree / 'w'}', mode='file', match=['*.mxf'], from 00.toml:1)"
    )


def test_relative_watch_is_resolved_against_base_dir(tree: Path) -> None:
    (tree / "cfg" / "drops").mkdir(parents=True)
    write(tree / "rules" / "a.toml", rule_text(watch="drops"))
    rules = load_rules([tree / "rules"], base_dir=tree / "cfg")
    assert rules.rules[0].watch == tree / "cfg" / "drops"


# --- validation -------------------------------------------------------------------------


def test_toml_syntax_error_names_the_line(tree: Path) -> None:
    found = problems(tree, rule_text() + 'priority = "unterminated\n')
    assert len(found) == 1
    assert found[0].startswith(f"{tree / 'rules' / '00.toml'}:8: TOML syntax error")


def test_unknown_key_with_did_you_mean(tree: Path) -> None:
    found = problems(tree, rule_text("news", colection="X"))
    assert found == [
        f"{tree / 'rules' / '00.toml'}:8: rule 'news': key 'colection': unknown key "
        "(did you mean 'collection'?)"
    ]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"settle_seconds": "30"}, "key 'settle_seconds': must be a number, got '30' (a string)"),
        ({"priority": 50.5}, "key 'priority': must be a whole number"),
        ({"delete_on_source": "yes"}, "key 'delete_on_source': must be true or false"),
        ({"match": [1]}, "key 'match': must be a list of strings"),
        ({"priority": 0}, "key 'priority': must be 1-100 or -1, got 0"),
        ({"priority": 101}, "must be 1-100 or -1, got 101"),
        ({"settle_seconds": -1}, "key 'settle_seconds': must be >= 0"),
        ({"qos": 7}, "key 'qos': must be 0-4"),
        ({"qos": 259}, "includes 0x100"),
        ({"qos": "direct_and_cash"}, "unknown QoS 'direct_and_cash'"),
        ({"mode": "folders"}, "key 'mode': must be one of 'file', 'folder'"),
        ({"on_conflict": "sufix"}, "(did you mean 'suffix'?)"),
        ({"observer": "inotify"}, "key 'observer': must be one of 'auto', 'native', 'polling'"),
        ({"name": "has space"}, "key 'name': 'has space': use 1-64 letters"),
        ({"match": []}, "key 'match': must hold at least one pattern"),
        ({"match": ["../*.mxf"]}, "'..' would reach outside"),
        ({"ignore": ["a\\b"]}, "use '/' to separate folders"),
        ({"media": ""}, "key 'media': must not be empty"),
        ({"object_name": "{stem"}, "key 'object_name': bad template"),
        ({"object_name": "{nmae}"}, "unknown field 'nmae' (did you mean 'name'?)"),
        ({"object_name": "{name.__class__}"}, "attribute or index access is not allowed"),
        ({"object_name": "{name[0]}"}, "attribute or index access is not allowed"),
        ({"object_name": "{name!r}"}, "conversions (!r) are not allowed"),
        ({"object_name": "{}"}, "a field needs a name"),
        ({"object_name": "{0}"}, "a field needs a name"),
        ({"object_name": "{name:{size}}"}, "nested fields are not allowed"),
        ({"object_name": "{size:q}"}, "bad format spec"),
        ({"object_name": "{folder}"}, "unknown field 'folder'"),  # file mode
        ({"object_name": "news/{stem}"}, "renders an unsafe name even for a plain file"),
        ({"collection": "A\\{stem}"}, "key 'collection': renders an unsafe name"),
        ({"comments": "{bogus}"}, "key 'comments': bad template"),
        ({"ready_marker": "done/{name}"}, "key 'ready_marker': must be a file name"),
        ({"ready_marker": "{name}"}, "must add text to the name"),
        ({"ready_marker": "{size}.ready"}, "key 'ready_marker': bad template"),
        ({"watch": "missing"}, "key 'watch': the folder"),
        ({"collection": None}, "key 'collection': missing (this key is required)"),
        ({"source_server": None}, "key 'source_server': missing"),
        ({"match": None}, "key 'match': missing"),
    ],
)
def test_each_validation_error(tree: Path, keys: dict[str, Any], expected: str) -> None:
    found = problems(tree, rule_text(**keys))
    assert len(found) == 1, found
    assert expected in found[0]
    assert found[0].startswith(f"{tree / 'rules' / '00.toml'}:")


def test_watch_must_be_a_folder(tree: Path) -> None:
    (tree / "file").write_text("x")
    assert "is not a folder" in problems(tree, rule_text(watch="file"))[0]


def test_missing_name_and_watch(tree: Path) -> None:
    found = problems(
        tree, "[[rule]]\nmatch = ['*']\ncollection='C'\nmedia='M'\nsource_server='S'\n"
    )
    assert any("rule '#1 in file': key 'name': missing" in p for p in found)
    assert any("key 'watch': missing" in p for p in found)


def test_duplicate_names_name_both_files(tree: Path) -> None:
    found = problems(tree, rule_text("news"), "\n\n" + rule_text("news"))
    assert found == [
        f"{tree / 'rules' / '01.toml'}:3: rule 'news': key 'name': duplicate rule name; "
        f"first defined at {tree / 'rules' / '00.toml'}:1"
    ]


def test_every_problem_at_once_with_lines(tree: Path) -> None:
    text = rule_text("a", priority=0) + rule_text("b", qos="x", settle_seconds=-2)
    found = problems(tree, text, "[[rule]\n")
    assert len(found) == 4
    assert ":8: rule 'a': key 'priority'" in found[0]
    assert ":16: rule 'b': key 'qos'" in found[1]
    assert ":17: rule 'b': key 'settle_seconds'" in found[2]
    assert "01.toml:1: TOML syntax error" in found[3]


def test_single_bracket_rule_and_unknown_top_level_key(tree: Path) -> None:
    found = problems(tree, rule_text().replace("[[rule]]", "[rule]"))
    assert "write [[rule]] (double brackets)" in found[0]
    found = problems(tree, rule_text().replace("[[rule]]", "[[rules]]"))
    assert "key 'rules': unknown key (did you mean 'rule'?)" in found[0]


def test_missing_rules_path_is_an_error(tmp_path: Path) -> None:
    result = check_rules([tmp_path / "nope"], base_dir=tmp_path)
    assert not result.ok and "rules path does not exist" in str(result.errors[0])


def test_empty_rules_folder_is_a_warning(tmp_path: Path) -> None:
    result = check_rules([tmp_path], base_dir=tmp_path)
    assert result.ok and "no rule files found" in str(result.warnings[0])


def test_overlap_is_a_warning(tree: Path) -> None:
    (tree / "w" / "sub").mkdir()
    result = check_rules(
        [
            write(tree / "rules" / "a.toml", rule_text("outer", match=["**/*.mov"])),
            write(tree / "rules" / "b.toml", rule_text("inner", watch="w/sub", match=["*.mov"])),
        ],
        base_dir=tree,
    )
    assert result.ok
    assert len(result.warnings) == 1
    assert "rule 'inner': key 'match': watches" in str(result.warnings[0])
    assert "'outer' comes first" in str(result.warnings[0])
    # different patterns in the same folder: no warning
    distinct = check_rules(
        [write(tree / "rules" / "c.toml", rule_text("x") + rule_text("y", match=["*.mov"]))],
        base_dir=tree,
    )
    assert distinct.warnings == []


def test_folder_rule_overlapping_file_rule_is_a_warning(tree: Path) -> None:
    text = rule_text("files", match=["**/*.dpx"]) + rule_text("folders", mode="folder", match=["*"])
    result = check_rules([write(tree / "rules" / "a.toml", text)], base_dir=tree)
    assert result.ok and len(result.warnings) == 1


def test_object_name_warnings(tree: Path) -> None:
    result = check_rules(
        [write(tree / "rules" / "a.toml", rule_text(object_name="{relpath}_{now}"))],
        base_dir=tree,
    )
    assert result.ok
    assert len(result.warnings) == 2


def test_load_rules_raises_rules_error_with_every_problem(tree: Path) -> None:
    write(tree / "rules" / "a.toml", rule_text(priority=0, qos=9))
    with pytest.raises(RulesError) as caught:
        load_rules([tree / "rules"], base_dir=tree)
    assert len(caught.value.problems) == 2
    assert caught.value.exit_code == 3


def test_same_file_given_twice_is_read_once(tree: Path) -> None:
    path = write(tree / "rules" / "a.toml", rule_text())
    assert len(load_rules([tree / "rules", path], base_dir=tree)) == 1


# --- hot reload -------------------------------------------------------------------------


def bump(path: Path, seconds: int = 10) -> None:
    """Move the file's mtime forward, so the change is seen whatever the clock's grain."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_hot_reload_valid_edit_applied(tree: Path) -> None:
    path = write(tree / "rules" / "a.toml", rule_text(match=["*.mxf"]))
    book = RuleBook([tree / "rules"], base_dir=tree)
    assert book.maybe_reload() is False  # nothing changed
    path.write_text(rule_text(match=["*.mov"]))
    bump(path)
    assert book.maybe_reload() is True
    assert book.rules.match(tree / "w" / "a.mov") is not None
    assert book.rules.match(tree / "w" / "a.mxf") is None
    assert book.maybe_reload() is False


def test_hot_reload_invalid_edit_rejected_old_rules_stay(
    tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tree / "rules" / "a.toml", rule_text(match=["*.mxf"]))
    book = RuleBook([tree / "rules"], base_dir=tree)
    old = book.rules
    path.write_text(rule_text(match=["*.mov"], priority=0))
    bump(path)
    with caplog.at_level(logging.ERROR, logger="ingest.rules"):
        assert book.maybe_reload() is False
        assert book.maybe_reload() is False  # logged once, not every few seconds
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "key 'priority': must be 1-100 or -1" in errors[0].getMessage()
    assert book.rules is old
    assert book.rules.match(tree / "w" / "a.mxf") is not None
    # fixed: applied
    path.write_text(rule_text(match=["*.mov"]))
    bump(path, 20)
    assert book.maybe_reload() is True
    assert book.rules.match(tree / "w" / "a.mov") is not None


def test_hot_reload_file_added_and_removed(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tree / "rules" / "a.toml", rule_text("a", match=["*.mxf"]))
    book = RuleBook([tree / "rules"], base_dir=tree)
    added = write(tree / "rules" / "b.toml", rule_text("b", watch="w2", match=["*.mov"]))
    with caplog.at_level(logging.INFO, logger="ingest.rules"):
        assert book.maybe_reload() is True
    assert "added b" in caplog.text
    assert book.rules.match(tree / "w2" / "x.mov") is not None
    old_rule = book.rules.get("b")
    added.unlink()
    assert book.maybe_reload() is True
    assert book.rules.get("b") is None
    assert book.rules.match(tree / "w2" / "x.mov") is None
    assert old_rule is not None and old_rule.name == "b"  # matches made before keep their rule


def test_rulebook_refuses_to_start_on_invalid_rules(tree: Path) -> None:
    write(tree / "rules" / "a.toml", rule_text(priority=0))
    with pytest.raises(RulesError):
        RuleBook([tree / "rules"], base_dir=tree)
