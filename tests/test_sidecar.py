"""Sidecar metadata (issue 14): ``sidecar``, ``[rule.fields]`` and ``{meta.*}`` in templates,
the wait for a sidecar, XML read safely, and ``rules explain``; unit tests, then the real
daemon against the emulator."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from ingest.rulefiles import check_rules, load_rules
from ingest.rules import Rule, build_archive_body
from ingest.sidecar import FieldSpec, SidecarError, read_values
from ingest.templates import Drop, TemplateError

from .support.deployment import Deployment
from .support.wait import wait_for

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Clip><HouseID>&lol9;</HouseID></Clip>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE Clip [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<Clip><HouseID>&secret;</HouseID></Clip>
"""

CLIP_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<Clip><HouseID>HX-0042</HouseID><Title>Evening <b>news</b></Title></Clip>
"""

HOUSE = FieldSpec.parse("house_id", "xml:/Clip/HouseID")


# -- reading fields ---------------------------------------------------------------------


def test_xml_and_json_fields_are_read() -> None:
    title = FieldSpec.parse("title", "xml:/Clip/Title")
    assert read_values(CLIP_XML, "c.xml", [HOUSE, title]) == {
        "house_id": "HX-0042",
        "title": "Evening news",
    }
    doc = json.dumps({"title": "T", "ids": [{"house": 7}], "a/b": True}).encode()
    specs = [
        FieldSpec.parse("t", "json:/title"),
        FieldSpec.parse("h", "json:/ids/0/house"),
        FieldSpec.parse("slash", "json:/a~1b"),
        FieldSpec.parse("missing", "json:/nope"),
    ]
    assert read_values(doc, "c.json", specs) == {"t": "T", "h": "7", "slash": "true"}
    # An element not there, or another root element: not found, not an error.
    other = FieldSpec.parse("x", "xml:/Other/HouseID")
    assert read_values(CLIP_XML, "c.xml", [FieldSpec.parse("x", "xml:/Clip/Nope"), other]) == {}


@pytest.mark.parametrize("data", [BILLION_LAUGHS, EXTERNAL_ENTITY])
def test_entity_declarations_are_refused_unexpanded(data: bytes) -> None:
    started = time.monotonic()
    with pytest.raises(SidecarError, match="refused unsafe XML"):
        read_values(data, "bomb.xml", [HOUSE])
    assert time.monotonic() - started < 1.0  # refused, not expanded


def test_bad_and_huge_sidecars_are_errors_not_crashes() -> None:
    with pytest.raises(SidecarError, match="not well-formed"):
        read_values(b"<Clip><HouseID>", "c.xml", [HOUSE])
    with pytest.raises(SidecarError, match="not valid JSON"):
        read_values(b"\xff\xfe junk", "c.json", [FieldSpec.parse("t", "json:/t")])
    with pytest.raises(SidecarError, match="bytes; a sidecar may be"):
        read_values(b" " * (5 * 1024 * 1024), "c.xml", [HOUSE])


@pytest.mark.parametrize(
    "spec", ["yaml:/a", "xml:Clip", "xml:/", "xml:/Clip//HouseID", "xml:/Clip/../x", "json:t"]
)
def test_bad_field_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        FieldSpec.parse("f", spec)


# -- rules and templates ----------------------------------------------------------------


def _rule(tmp_path: Path, **keys: object) -> Rule:
    values: dict[str, object] = dict(
        name="news", watch=tmp_path, match=("*.mxf",), collection="NEWS", media="M",
        source_server="NAS", sidecar="{stem}.xml", fields=(("house_id", "xml:/Clip/HouseID"),),
        object_name="{meta.house_id}_{stem}",
    )  # fmt: skip
    values.update(keys)
    return Rule(**values)  # type: ignore[arg-type]


def test_meta_fields_fill_templates_and_the_sidecar_is_a_component(tmp_path: Path) -> None:
    rule = _rule(tmp_path)
    drop = Drop("news", str(tmp_path), "a/clip.mxf", size=1, mtime_ns=0)
    body = build_archive_body(rule, drop, meta={"house_id": "HX-1"}, sidecar="a/clip.xml")
    assert body["objectName"] == "HX-1_clip"
    assert body["components"] == ["a/clip.mxf", "a/clip.xml"]
    assert rule.sidecar_path(drop) == tmp_path / "a" / "clip.xml"
    kept = _rule(tmp_path, archive_sidecar=False)
    body = build_archive_body(kept, drop, meta={"house_id": "HX-1"}, sidecar="a/clip.xml")
    assert body["components"] == ["a/clip.mxf"]
    # The sidecar is never a drop of its own, even where the rule's globs take it.
    wide = _rule(tmp_path, match=("*",))
    assert wide.try_path(tmp_path / "clip.xml").outcome == "sidecar"
    assert wide.try_path(tmp_path / "clip.mxf").outcome == "match"


def test_a_folder_drops_sidecar_is_inside_it_and_archived_once(tmp_path: Path) -> None:
    rule = _rule(tmp_path, mode="folder", match=("*",), sidecar="{folder}.xml",
                 object_name="{meta.house_id}")  # fmt: skip
    members = ("REEL/REEL.xml", "REEL/f1.dpx", "REEL/f2.dpx")
    drop = Drop("news", str(tmp_path), "REEL", "folder", 3, 0, 3, members)
    assert rule.sidecar_path(drop) == tmp_path / "REEL" / "REEL.xml"
    body = build_archive_body(rule, drop, meta={"house_id": "H"}, sidecar="REEL/REEL.xml")
    assert body["components"] == ["REEL/f1.dpx", "REEL/f2.dpx", "REEL/REEL.xml"]
    kept = _rule(tmp_path, mode="folder", match=("*",), sidecar="{folder}.xml",
                 object_name="{meta.house_id}", archive_sidecar=False)  # fmt: skip
    body = build_archive_body(kept, drop, meta={"house_id": "H"}, sidecar="REEL/REEL.xml")
    assert body["components"] == ["REEL/f1.dpx", "REEL/f2.dpx"]


def test_unknown_meta_field_is_a_template_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="no sidecar field 'title'"):
        _rule(tmp_path, object_name="{meta.title}")


def _write_rules(folder: Path, text: str) -> Path:
    path = folder / "r.toml"
    path.write_text(text)
    return path


RULE = """[[rule]]
name = "news"
watch = "{watch}"
match = ["*.mxf"]
collection = "NEWS"
media = "M"
source_server = "NAS"
object_name = "{{meta.house_id}}"
sidecar = "{{stem}}.xml"
sidecar_wait_seconds = 5
sidecar_required = true
{extra}
[rule.fields]
house_id = "xml:/Clip/HouseID"
"""


def test_rule_file_keys_are_checked(tmp_path: Path) -> None:
    watch = tmp_path / "w"
    watch.mkdir()
    good = _write_rules(tmp_path, RULE.format(watch=watch, extra='checksum = "sha256"'))
    rules = load_rules([good])
    rule = rules.rules[0]
    assert rule.fields == (("house_id", "xml:/Clip/HouseID"),) and rule.checksum == "sha256"
    assert rule.sidecar_required and rule.sidecar_wait_seconds == 5
    bad = RULE.format(watch=watch, extra='checksum = "crc32"').replace(
        "xml:/Clip/HouseID", "yaml:/x"
    )
    problems = [str(p) for p in check_rules([_write_rules(tmp_path, bad)]).errors]
    assert any("key 'fields'" in p and "yaml:/x" in p for p in problems), problems
    assert any("key 'checksum'" in p and "crc32" in p for p in problems), problems
    nosidecar = RULE.format(watch=watch, extra="").replace('sidecar = "{stem}.xml"\n', "")
    problems = [str(p) for p in check_rules([_write_rules(tmp_path, nosidecar)]).errors]
    assert any("needs a sidecar" in p for p in problems), problems


def test_explain_shows_fields_and_values(tmp_path: Path) -> None:
    watch = tmp_path / "w"
    watch.mkdir()
    rules = load_rules([_write_rules(tmp_path, RULE.format(watch=watch, extra=""))])
    (watch / "clip.mxf").write_bytes(b"x")
    missing = rules.explain(watch / "clip.mxf").as_dict()
    assert missing["sidecar"]["present"] is False
    assert missing["sidecar"]["fields"] == {
        "house_id": {"source": "xml:/Clip/HouseID", "value": None}
    }
    (watch / "clip.xml").write_bytes(CLIP_XML)
    found = rules.explain(watch / "clip.mxf").as_dict()
    assert found["sidecar"]["fields"]["house_id"]["value"] == "HX-0042"
    assert found["body"]["objectName"] == "HX-0042"
    assert found["body"]["components"] == ["clip.mxf", "clip.xml"]
    (watch / "clip.xml").write_bytes(BILLION_LAUGHS)
    bomb = rules.explain(watch / "clip.mxf").as_dict()
    assert "refused unsafe XML" in bomb["sidecar"]["error"]


# -- the daemon -------------------------------------------------------------------------


def _sidecar_rule(dep: Deployment, fields: str, **keys: Any) -> None:
    path = dep.rule(**keys)
    with path.open("a") as f:
        f.write(f"[rule.fields]\n{fields}")


def _old(path: Path) -> None:
    """Make ``path`` look written a while ago (a sidecar is read once left alone)."""
    then = time.time() - 60
    os.utime(path, (then, then))


def test_sidecar_fields_name_the_object_and_the_sidecar_is_archived(
    deployment: Deployment,
) -> None:
    dep = deployment
    _sidecar_rule(
        dep, 'house_id = "xml:/Clip/HouseID"\n',
        sidecar="{stem}.xml", object_name="{meta.house_id}", comments="id {meta.house_id}",
        match=["*.mxf", "*.xml"],
    )  # fmt: skip
    sidecar = dep.watch / "clip.xml"
    sidecar.write_bytes(CLIP_XML)
    _old(sidecar)
    (dep.watch / "clip.mxf").write_bytes(os.urandom(10_000))
    dep.start()
    row = dep.wait_state("clip.mxf", "COMPLETED", "REJECTED", "FAILED")
    assert row["state"] == "COMPLETED", row["error"]
    body = json.loads(row["body"])
    assert row["object_name"] == "HX-0042" and body["comments"] == "id HX-0042"
    assert body["components"] == ["clip.mxf", "clip.xml"]
    assert set(dep.stored()["HX-0042"]) == {"clip.mxf", "clip.xml"}
    assert dep.rows("clip.xml") == []  # never a drop of its own


def test_a_drop_waits_for_its_sidecar_then_goes_ahead_or_fails(deployment: Deployment) -> None:
    dep = deployment
    _sidecar_rule(
        dep, 'house_id = "xml:/Clip/HouseID"\n', sidecar="{stem}.xml", match=["*.mxf"],
        object_name="{stem}{meta.house_id}", sidecar_wait_seconds=3.0,
    )  # fmt: skip
    (dep.watch.parent / "strict").mkdir()
    dep.rule(
        "strict", watch=str(dep.watch.parent / "strict"), match=["*.mxf"], sidecar="{stem}.xml",
        sidecar_wait_seconds=1.0, sidecar_required=True,
    )  # fmt: skip
    (dep.watch / "late.mxf").write_bytes(b"late")
    (dep.watch / "never.mxf").write_bytes(b"never")
    (dep.watch.parent / "strict" / "lost.mxf").write_bytes(b"lost")
    dep.start()

    # Settled, yet nothing is submitted while the sidecar may still come.
    def waiting() -> bool:
        rows = dep.rows("late.mxf")
        return bool(rows) and "waiting for its sidecar" in (rows[-1]["error"] or "")

    wait_for(waiting, timeout=15)
    assert dep.rows("late.mxf")[-1]["state"] == "DETECTED"
    sidecar = dep.watch / "late.xml"
    sidecar.write_bytes(CLIP_XML)
    _old(sidecar)
    late = dep.wait_state("late.mxf", "COMPLETED", "FAILED", timeout=30)
    assert late["object_name"] == "lateHX-0042"
    never = dep.wait_state("never.mxf", "COMPLETED", "FAILED", timeout=30)
    assert never["state"] == "COMPLETED" and never["object_name"] == "never"
    assert json.loads(never["body"])["components"] == ["never.mxf"]
    lost = dep.wait_state("lost.mxf", "FAILED", "COMPLETED", timeout=30)
    assert lost["state"] == "FAILED" and "lost.xml did not come within 1 s" in lost["error"]
    assert (dep.watch.parent / "strict" / "lost.mxf").exists()


def test_a_billion_laughs_sidecar_is_rejected_safely(deployment: Deployment) -> None:
    dep = deployment
    _sidecar_rule(dep, 'house_id = "xml:/Clip/HouseID"\n', sidecar="{stem}.xml",
                  object_name="{meta.house_id}")  # fmt: skip
    bomb = dep.watch / "bomb.xml"
    bomb.write_bytes(BILLION_LAUGHS)
    _old(bomb)
    (dep.watch / "bomb.mxf").write_bytes(b"media")
    dep.start()
    row = dep.wait_state("bomb.mxf", "REJECTED", "COMPLETED", "FAILED")
    assert row["state"] == "REJECTED" and "refused unsafe XML" in row["error"]
    assert (dep.watch / "bomb.mxf").exists() and dep.objects() == []


def test_a_lost_answer_for_a_drop_with_its_sidecar_is_reconciled_as_ours(
    deployment: Deployment,
) -> None:
    dep = deployment
    # DIVA archives clip.mxf and clip.xml as one object and forgets the request; the
    # answer comes after the client gave up. The object's total size is the two files':
    # it must still be recognised as ours (the drop's own size is the clip's alone).
    dep.knobs(reply_latency=2.5, forget_after=0.05)
    dep.write_config(timeout_seconds=1, max_attempts=3)
    _sidecar_rule(dep, 'house_id = "xml:/Clip/HouseID"\n', sidecar="{stem}.xml",
                  object_name="{meta.house_id}")  # fmt: skip
    sidecar = dep.watch / "clip.xml"
    sidecar.write_bytes(CLIP_XML)
    _old(sidecar)
    (dep.watch / "clip.mxf").write_bytes(os.urandom(20_000))
    dep.start()
    row = dep.wait_state("clip.mxf", "COMPLETED", "FAILED", "REJECTED", "SKIPPED", timeout=40)
    steps = "\n".join(h["detail"] for h in dep.history(row["id"]))
    assert row["state"] == "COMPLETED", steps
    assert "holds the object with our components" in steps
    stats = dep.emulator.stats()["calls"]
    assert stats.get("POST /manager/requests/archive") == 1, "the archive was sent again"


def test_rules_explain_prints_the_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ingest.cli import main

    watch = tmp_path / "w"
    watch.mkdir()
    rules = _write_rules(tmp_path, RULE.format(watch=watch, extra=""))
    (watch / "clip.mxf").write_bytes(b"x")
    (watch / "clip.xml").write_bytes(CLIP_XML)
    with pytest.raises(SystemExit) as exited:
        main(["rules", "explain", "--rules", str(rules), str(watch / "clip.mxf")])
    out = capsys.readouterr().out
    assert exited.value.code in (0, None), out
    assert f"sidecar: {watch / 'clip.xml'} (present, archived with the drop)" in out
    assert "{meta.house_id} <- xml:/Clip/HouseID: 'HX-0042'" in out
    assert '"objectName": "HX-0042"' in out
