"""Templates: every field, name safety; no file name crashes matching or rendering."""

from __future__ import annotations

import doctest
import os
import time
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ingest.templates
import ingest.tomlcheck
from ingest.rules import DropRefused, Rule, RuleSet, build_archive_body
from ingest.templates import (
    FILE_FIELDS,
    FOLDER_FIELDS,
    Drop,
    Template,
    TemplateError,
    check_component,
    check_name,
    clean_comment,
    suffixed_name,
)
from ingest.watch import ignored_name

MTIME_NS = int(datetime(2024, 3, 9, 14, 5, 7).timestamp()) * 10**9  # local, as templates render
NOW = datetime(2025, 12, 31, 23, 59, 0).timestamp()


def render(source: str, drop: Drop) -> str:
    fields = FOLDER_FIELDS if drop.kind == "folder" else FILE_FIELDS
    return Template.compile(source, fields).render(drop.fields(now=NOW))


FILE = Drop("news", "/w", "day1/clip.v2.mxf", "file", size=1234, mtime_ns=MTIME_NS)
FOLDER = Drop("dpx", "/w", "REEL_1", "folder", size=99, mtime_ns=MTIME_NS, members=("REEL_1/a",))


@pytest.mark.parametrize(
    ("source", "drop", "expected"),
    [
        ("{name}", FILE, "clip.v2.mxf"),
        ("{stem}", FILE, "clip.v2"),
        ("{ext}", FILE, "mxf"),
        ("{relpath}", FILE, "day1/clip.v2.mxf"),
        ("{parent}", FILE, "day1"),
        ("{rule}", FILE, "news"),
        ("{size}", FILE, "1234"),
        ("{size:08d}", FILE, "00001234"),
        ("{mtime:%Y%m%d}", FILE, "20240309"),
        ("{mtime}", FILE, "20240309-140507"),
        ("{now:%Y-%m-%d}", FILE, "2025-12-31"),
        ("{stem:.4}", FILE, "clip"),
        ("{{{stem}}}", FILE, "{clip.v2}"),
        ("x{{y}}", FILE, "x{y}"),
        ("{folder}", FOLDER, "REEL_1"),
        ("{name}", FOLDER, "REEL_1"),
        ("{parent}", FOLDER, ""),
        ("{relpath}", FOLDER, "REEL_1"),
        ("{size} {rule}", FOLDER, "99 dpx"),
    ],
)
def test_every_field(source: str, drop: Drop, expected: str) -> None:
    assert render(source, drop) == expected


def test_name_parts_edge_cases() -> None:
    assert (Drop("r", "/w", ".bashrc").stem, Drop("r", "/w", ".bashrc").ext) == (
        ".bashrc",
        "",
    )
    assert Drop("r", "/w", "README").ext == ""
    assert Drop("r", "/w", "a/b.").ext == ""


def test_now_defaults_to_the_current_time() -> None:
    before = datetime.now().replace(microsecond=0)
    rendered = Template.compile("{now:%Y-%m-%d %H:%M:%S}", FILE_FIELDS).render(FILE.fields())
    assert datetime.strptime(rendered, "%Y-%m-%d %H:%M:%S") >= before


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{folder}", "unknown field 'folder'"),
        ("{nam}", "did you mean 'name'?"),
        ("{name.__class__}", "attribute or index access"),
        ("{name[0]}", "attribute or index access"),
        ("{name!s}", "conversions"),
        ("{", "write {{ and }} for literal braces"),
        ("}", "write {{ and }} for literal braces"),
        ("{size:x<}", None),
    ],
)
def test_refused_templates(source: str, message: str | None) -> None:
    if message is None:
        Template.compile(source, FILE_FIELDS)
        return
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("}", r"\}")):
        Template.compile(source, FILE_FIELDS)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a/b", "contains '/'"),
        ("a\\b", "contains " + repr("\\")),
        ("a..b", "contains '..'"),
        ("a\nb", "control character U+000A"),
        ("a\tb", "control character U+0009"),
        ("a\x7fb", "control character U+007F"),
        ("a\x85b", "control character U+0085"),
        ("a\u2028b", "line separator"),
        ("a\u202eb", "bidirectional override"),
        ("a\udcffb", "not valid UTF-8"),
        ("", "is empty"),
        ("   ", "only whitespace"),
        (" a", "starts or ends with whitespace"),
        ("x" * 193, "193 characters long; DIVA allows at most 192"),
    ],
)
def test_unsafe_object_names(value: str, reason: str) -> None:
    problem = check_name(value)
    assert problem is not None and reason in problem


def test_safe_names_and_limits() -> None:
    assert check_name("x" * 192) is None
    assert check_name("Clip — été 😀 v1.2") is None
    assert check_name("x" * 97, 96) is not None
    assert check_component("a/b c.mxf") is None
    assert check_component("a\nb") is not None


def test_comments_have_control_characters_replaced() -> None:
    assert clean_comment("a\nb\tc\x7fd\x85e\u2028f") == "a b c d e f"


def test_suffixed_name_fits() -> None:
    assert suffixed_name("clip", 3) == "clip_3"
    assert len(suffixed_name("y" * 192, 12)) == 192


def test_doctests() -> None:
    for module in (ingest.templates, ingest.tomlcheck):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__


# --- property-based: no file name crashes matching or rendering --------------------------

ODD = st.sampled_from(
    [
        "\n",
        "\r",
        "\t",
        "\x7f",
        "\x85",
        "\u2028",
        "\u202e",
        "\udcff",
        " ",
        "..",
        "{",
        "}",
        "%",
        "\\",
        "é",
        "e\u0301",
        "😀",
        "~$",
        ".",
        "*",
        "[",
        "]",
    ]
)
NAME = (
    st.lists(st.one_of(st.text(min_size=1, max_size=40), ODD), min_size=1, max_size=12)
    .map("".join)
    .filter(lambda s: "/" not in s and "\x00" not in s and s not in (".", ".."))
)
LONG_NAME = st.integers(150, 400).map(lambda n: "x" * n + ".mxf")


def make_ruleset(watch: Path, object_name: str, mode: str) -> RuleSet:
    rule = Rule(
        name="r",
        watch=watch,
        match=("**",) if mode == "file" else ("*",),
        mode=mode,  # type: ignore[arg-type]
        object_name=object_name,
        collection="C_{ext}" if mode == "file" else "C",
        media="M",
        source_server="S",
        comments="from {relpath} at {mtime:%Y}",
    )
    return RuleSet([rule])


def check_outcome(ruleset: RuleSet, path: Path, drop: Drop) -> None:
    found = ruleset.match(path)
    if found is None:
        reason = ruleset.explain(path, read_disk=False).trials[0].detail
        assert reason
        return
    try:
        body = build_archive_body(found.rule, drop, now=NOW)
    except DropRefused as exc:
        assert exc.reason
        return
    assert check_name(body["objectName"]) is None
    assert check_name(body["collectionName"], 96) is None
    assert all(check_component(c) is None for c in body["components"])
    assert all(ord(c) >= 32 and c not in "\x7f\x85" for c in body["comments"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.one_of(NAME, LONG_NAME), min_size=1, max_size=4),
    template=st.sampled_from(["{name}", "{stem}_{mtime:%Y%m%d}", "{ext}{size}", "{relpath}"]),
)
def test_no_file_name_crashes_file_mode(parts: list[str], template: str) -> None:
    watch = Path("/nonexistent-watch")
    ruleset = make_ruleset(watch, template, "file")
    relpath = "/".join(parts)
    drop = Drop("r", str(watch), relpath, "file", size=len(relpath), mtime_ns=MTIME_NS)
    check_outcome(ruleset, watch.joinpath(*parts), drop)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(folder=st.one_of(NAME, LONG_NAME), member=NAME)
def test_no_folder_name_crashes_folder_mode(folder: str, member: str) -> None:
    watch = Path("/nonexistent-watch")
    ruleset = make_ruleset(watch, "{folder}", "folder")
    members = (f"{folder}/{member}",)
    drop = Drop("r", str(watch), folder, "folder", members=members, mtime_ns=MTIME_NS)
    check_outcome(ruleset, watch / folder / member, drop)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(name=NAME)
def test_real_files_with_odd_names(tmp_path: Path, name: str) -> None:
    """The same on disk: a real file of that name, read back through explain."""
    try:
        path = Path(os.fsdecode(tmp_path)) / name
        path.write_bytes(b"x")
    except OSError:  # longer than the filesystem allows: not a file that can exist
        return
    try:
        ruleset = make_ruleset(tmp_path, "{stem}", "file")
        now = time.time()
        explanation = ruleset.explain(path, now=now)
        # What the rules make of that name without the disk: the file's own verdict.
        found = ruleset.match(path)
        assert found is not None or ignored_name(name), "a '**' rule took no ordinary name"
        body, refused = None, None
        if found is not None:
            info = path.stat()
            drop = Drop("r", str(tmp_path), name, "file", info.st_size, info.st_mtime_ns)
            try:
                body = build_archive_body(found.rule, drop, now=now)
            except DropRefused as exc:
                refused = exc.reason
            else:
                assert body["objectName"] == drop.stem  # archived under its stem, unmangled
        assert (explanation.match is not None, explanation.body, explanation.refused) == (
            found is not None,
            body,
            refused,
        )
    finally:
        path.unlink()
