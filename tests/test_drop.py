"""One drop value (:class:`ingest.drop.Drop`) for the rules, the templates, the engine's
live drops and the ledger's rows: each keeps or reads the same identity and signature."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from ingest.drop import Drop
from ingest.engine.drops import Tracked
from ingest.ledger import Ledger, State
from ingest.rules import Rule, RuleSet

MTIME_NS = 1_700_000_000_123_456_789  # more digits than a float holds: kept exact


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield opened
    opened.close()


@pytest.mark.parametrize(
    "drop",
    [
        Drop("news", "/mnt/news", "day1/clip.mxf", "file", 10, MTIME_NS, 1),
        Drop("dpx", "/mnt/dpx", "REEL_1", "folder", 99, MTIME_NS, 2, ("REEL_1/a", "REEL_1/b")),
        Drop("news", "/mnt/news", "just-seen.mxf"),  # detected, not read yet
    ],
)
def test_a_drop_reads_back_from_its_ledger_row(ledger: Ledger, drop: Drop) -> None:
    with ledger.batch() as tx:
        drop_id = tx.add(**drop.columns())
    row = ledger.get(drop_id)
    assert row is not None
    # The members are not a column: a folder's are in its archive body.
    assert Drop.from_row(row, drop.members) == drop


def test_a_tracked_drop_holds_its_drop(ledger: Ledger) -> None:
    members = ("REEL_1/a", "REEL_1/b")
    drop = Drop("dpx", "/mnt/dpx", "REEL_1", "folder", 99, MTIME_NS, 2, members)
    body = json.dumps({"objectName": "REEL_1", "components": list(members)})
    with ledger.batch() as tx:
        drop_id = tx.add(**drop.columns(), state=State.SUBMITTING, body=body)
    row = ledger.get(drop_id)
    assert row is not None
    tr = Tracked.from_row(row)
    assert tr.drop == drop  # the folder's members read back from its body
    assert (tr.rule, tr.watch, tr.path, tr.kind, tr.key) == (
        "dpx",
        "/mnt/dpx",
        "REEL_1",
        "folder",
        ("/mnt/dpx", "REEL_1"),
    )
    assert (tr.size, tr.mtime_ns, tr.file_count, tr.members) == (99, MTIME_NS, 2, members)


def test_settling_signs_the_same_drop() -> None:
    seen = Drop("news", "/w", "a.mxf")
    tr = Tracked(1, seen, State.DETECTED)
    assert (tr.size, tr.mtime_ns, tr.file_count) == (None, None, None)
    tr.drop = tr.drop.signed((10, MTIME_NS, 1))
    assert (tr.size, tr.mtime_ns, tr.file_count, tr.key) == (10, MTIME_NS, 1, seen.key)


def test_the_templates_see_the_signature() -> None:
    fields = Drop("news", "/w", "a/clip.mxf", size=10, mtime_ns=MTIME_NS).fields(now=0.0)
    assert fields["size"] == 10
    assert fields["mtime"] == datetime.fromtimestamp(MTIME_NS / 1e9)
    unread = Drop("news", "/w", "a/clip.mxf").fields(now=0.0)
    assert (unread["size"], unread["mtime"]) == (0, datetime.fromtimestamp(0))


def test_explain_reads_a_file_drop_as_the_daemon_does(tmp_path: Path) -> None:
    """``rules explain`` signs its drop with what a scan records: st_size, st_mtime_ns."""
    (tmp_path / "a.mxf").write_bytes(b"12345")
    rule = Rule(name="news", watch=tmp_path, match=("*.mxf",), collection="C", media="M",
                source_server="S")  # fmt: skip
    match = RuleSet([rule]).match(tmp_path / "a.mxf")
    assert match is not None
    assert match.identity == Drop("news", str(tmp_path), "a.mxf", "file")
    st = os.lstat(tmp_path / "a.mxf")
    assert rule.drop_for(match) == match.identity.signed((5, st.st_mtime_ns, 1))
