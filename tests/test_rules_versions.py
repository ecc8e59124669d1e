"""Rules versions: the content hash, the reload's diff, the refusal a bad edit leaves, what
the daemon publishes to the ledger (``RulesRecord``), and the commands that read it
(``rules history|show|check``, ``ledger list --rules-version``, ``status``). The daemon
driving all of it over a real emulator is in ``test_rules_reload_daemon.py``."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ingest.engine.rulestate import RulesRecord
from ingest.ledger import Ledger
from ingest.rulefiles import RuleBook, load_rules
from ingest.ruleversions import diff_rules, normalize, version_of
from ingest.web import views

from .support.ledgers import invoke
from .support.wait import wait_for


def rule_text(name: str = "r", *, comment: str = "", **keys: Any) -> str:
    values: dict[str, Any] = {
        "name": name, "watch": "w", "match": ["*.mxf"], "collection": "C", "media": "M",
        "source_server": "S",
    }  # fmt: skip
    values.update(keys)
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return f"{comment}[[rule]]\n" + "\n".join(lines) + "\n"


def bump(path: Path, seconds: int) -> None:
    """Move the file's mtime forward, so the change is seen whatever the clock's grain."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A service config with a ledger and a rules folder, and the watch folder ``w``."""
    (tmp_path / "w").mkdir()
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "a.toml").write_text(rule_text("a"))
    (tmp_path / "ingest.toml").write_text(
        '[ledger]\nurl = "sqlite:///ledger.db"\n[rules]\npaths = ["rules"]\n'
    )
    return tmp_path


def version(tmp_path: Path, *texts: str) -> str:
    rules = tmp_path / "v"
    rules.mkdir()
    for i, text in enumerate(texts):
        (rules / f"{i}.toml").write_text(text)
    found = version_of(normalize(load_rules([rules], tmp_path)))
    for file in rules.iterdir():
        file.unlink()
    rules.rmdir()
    return found


# -- the version and the diff ----------------------------------------------------------


def test_a_version_is_the_rules_content_not_their_layout(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    one_file = version(tmp_path, rule_text("a") + rule_text("b", match=["*.mov"]))
    two_files = version(
        tmp_path, rule_text("a", comment="# news\n"), rule_text("b", match=["*.mov"])
    )
    defaults_spelled_out = version(
        tmp_path, rule_text("a", mode="file", priority=-1), rule_text("b", match=["*.mov"])
    )
    assert one_file == two_files == defaults_spelled_out
    assert len(one_file) == 64
    # A value, or the match order (the first rule that matches wins), is what counts.
    assert (
        version(tmp_path, rule_text("a", media="M2"), rule_text("b", match=["*.mov"])) != one_file
    )
    assert version(tmp_path, rule_text("b", match=["*.mov"]), rule_text("a")) != one_file


def test_the_diff_names_rules_added_removed_and_the_keys_changed() -> None:
    a = {"name": "a", "media": "M", "qos": 0}
    b = {"name": "b", "media": "M"}
    c = {"name": "c"}
    diff = diff_rules([a, b], [{**a, "media": "T", "qos": 1}, c])
    assert (diff.added, diff.removed, diff.changed) == (("c",), ("b",), {"a": ("media", "qos")})
    assert str(diff) == "added c; removed b; changed a (media, qos)"
    assert diff_rules([a, b], [b, a]).changed == {"a": ("order",), "b": ("order",)}
    assert not diff_rules([a], [dict(a)])


def test_a_reload_logs_the_keys_that_changed(site: Path, caplog: pytest.LogCaptureFixture) -> None:
    book = RuleBook([site / "rules"], site)
    first = book.version
    path = site / "rules" / "a.toml"
    path.write_text(rule_text("a", media="TAPE", collection="X") + rule_text("n", match=["*.mov"]))
    bump(path, 10)
    with caplog.at_level(logging.INFO, logger="ingest.rules"):
        assert book.maybe_reload() is True
    assert book.version.version != first.version
    assert f"version {book.version.short} (was {first.short})" in caplog.text
    assert "added n; removed none; changed a (collection, media)" in caplog.text


# -- a refused edit --------------------------------------------------------------------


def test_a_refused_edit_is_kept_with_its_problems_and_since_when(site: Path) -> None:
    book = RuleBook([site / "rules"], site)
    good = book.version
    path = site / "rules" / "a.toml"
    path.write_text(rule_text("a", priority=0))
    bump(path, 10)
    assert book.maybe_reload() is False
    assert book.refusal is not None and book.version is good
    (problem,) = book.refusal.problems
    assert (problem["file"], problem["line"], problem["key"]) == (str(path), 8, "priority")
    since = book.refusal.since
    # A second bad edit: new problems, the same "since" (the disk still differs).
    path.write_text("[[rule]\n")
    bump(path, 20)
    assert book.maybe_reload() is False
    assert book.refusal.since == since
    assert book.refusal.problems[0]["line"] == 1
    # Fixed: in force, and nothing refused any more.
    path.write_text(rule_text("a", media="M2"))
    bump(path, 30)
    assert book.maybe_reload() is True
    assert book.refusal is None and book.version.version != good.version


def test_undoing_a_refused_edit_clears_it(site: Path) -> None:
    path = site / "rules" / "a.toml"
    book = RuleBook([site / "rules"], site)
    good = book.version
    broken = site / "rules" / "a.toml.new"
    broken.write_text("[[rule]\n")
    # An editor's swap: the bad file renamed in, then the original renamed back.
    os.rename(path, site / "a.toml.kept")
    os.rename(broken, path)
    assert book.maybe_reload() is False and book.refusal is not None
    os.rename(site / "a.toml.kept", path)
    book.maybe_reload()
    assert book.refusal is None
    assert book.version.version == good.version


def test_a_rule_file_briefly_gone_keeps_its_rules(site: Path) -> None:
    """An editor's save (rename away, write anew) or a delete and re-create: the rules in
    force, and so their watch folders, do not go for a moment; a file that stays gone
    for the grace does take its rules with it."""
    path = site / "rules" / "a.toml"
    book = RuleBook([site / "rules"], site, vanish_grace=0.5)
    good = book.version
    text = path.read_text()
    path.unlink()
    assert book.maybe_reload() is False
    assert book.rules.get("a") is not None and book.refusal is None
    path.write_text(text)
    book.maybe_reload()
    assert book.version.version == good.version
    path.unlink()
    assert book.maybe_reload() is False
    wait_for(book.maybe_reload, timeout=10)
    assert book.rules.get("a") is None and len(book.rules) == 0


# -- what the daemon publishes ---------------------------------------------------------


def read(ledger: Path, sql: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(ledger)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def publish(ledger: Ledger, record: RulesRecord, now: float) -> None:
    with ledger.batch() as tx:
        record.publish(tx, now)


def test_the_record_writes_each_version_once_and_the_refusal_until_fixed(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger.open(f"sqlite:///{site / 'ledger.db'}")
    path = site / "rules" / "a.toml"
    try:
        book = RuleBook([site / "rules"], site)
        record = RulesRecord(book, remind_seconds=60)
        publish(ledger, record, 0.0)
        first = book.version.version
        (row,) = read(site / "ledger.db", "SELECT * FROM rules_versions")
        assert row["version"] == first and row["rule_count"] == 1
        assert json.loads(row["rules"])[0]["collection"] == "C"
        assert json.loads(row["files"]) == [{"path": str(path), "mtime": path.stat().st_mtime}]
        # A restart on the same rules: the same row, brought up to date; none added.
        record = RulesRecord(RuleBook([site / "rules"], site), remind_seconds=60)
        book = record.book
        publish(ledger, record, 1.0)
        (again,) = read(site / "ledger.db", "SELECT * FROM rules_versions")
        assert again["loaded_at"] == row["loaded_at"]
        assert again["last_loaded_at"] > row["last_loaded_at"]

        path.write_text("[[rule]]\nname = 'a'\nmatch = [\n")
        bump(path, 10)
        with caplog.at_level(logging.ERROR, logger="ingest.rules"):
            book.maybe_reload()
            caplog.clear()
            for now in (2.0, 3.0, 61.0, 62.0, 121.0, 122.0, 181.5):
                publish(ledger, record, now)
        (state,) = read(site / "ledger.db", "SELECT * FROM rules_state")
        assert state["version"] == first and state["refused_since"] is not None
        (problem,) = json.loads(state["problems"])
        assert problem["file"] == str(path) and problem["line"] == 3
        # Reminded every 60 s (first at 62: the refusal itself was logged at once).
        reminders = [r for r in caplog.records if "still invalid" in r.getMessage()]
        assert len(reminders) == 2
        assert f"{path}:3" in reminders[0].getMessage()

        path.write_text(rule_text("a", collection="D"))
        bump(path, 20)
        assert book.maybe_reload() is True
        publish(ledger, record, 200.0)
        (state,) = read(site / "ledger.db", "SELECT * FROM rules_state")
        assert state["version"] == book.version.version != first
        assert (state["refused_since"], state["problems"]) == (None, None)
        assert len(read(site / "ledger.db", "SELECT * FROM rules_versions")) == 2
    finally:
        ledger.close()


# -- the commands ----------------------------------------------------------------------


@pytest.fixture
def published(site: Path) -> tuple[Path, list[str]]:
    """A ledger with two rules versions (the second in force) and a drop of each."""
    ledger = Ledger.open(f"sqlite:///{site / 'ledger.db'}")
    path = site / "rules" / "a.toml"
    versions = []
    try:
        book = RuleBook([site / "rules"], site)
        record = RulesRecord(book, remind_seconds=60)
        for n, collection in enumerate(("C", "D")):
            if n:
                path.write_text(rule_text("a", collection=collection))
                bump(path, 10)
                assert book.maybe_reload()
            with ledger.batch() as tx:
                record.publish(tx, float(n))
                tx.add(rule="a", watch=str(site / "w"), path=f"{n}.mxf", collection=collection,
                       rules_version=book.version.version)  # fmt: skip
            versions.append(book.version.version)
    finally:
        ledger.close()
    return site / "ingest.toml", versions


def test_rules_history_and_show(published: tuple[Path, list[str]]) -> None:
    config, (first, second) = published
    result = invoke("rules", "history", "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    history = json.loads(result.stdout)
    assert [(h["version"], h["in_force"]) for h in history] == [(second, True), (first, False)]
    assert history[0]["rule_count"] == 1 and history[0]["files"][0]["path"].endswith("a.toml")

    text = invoke("rules", "history", "--config", str(config)).stdout.splitlines()
    assert text[0].startswith(f"* {second[:12]}") and text[1].startswith(f"  {first[:12]}")

    shown = json.loads(invoke("rules", "show", first[:7], "--config", str(config), "--json").stdout)
    assert shown["version"] == first and shown["in_force"] is False
    assert shown["rules"][0]["collection"] == "C" and shown["rules"][0]["priority"] == -1
    # The text form is a rule file again: loading it gives the very same version.
    text_form = invoke("rules", "show", second, "--config", str(config)).stdout
    assert 'collection = "D"' in text_form
    again = config.parent / "again"
    again.mkdir()
    (again / "r.toml").write_text(text_form)
    assert version_of(normalize(load_rules([again], config.parent))) == second

    # A prefix of neither version (each is a hash of paths under a temporary folder: a
    # fixed "abc" began the second one in one CI run).
    prefix = next(p for p in ("abc", "def", "123") if not first.startswith(p) and
                  not second.startswith(p))  # fmt: skip
    missing = invoke("rules", "show", prefix, "--config", str(config))
    assert missing.exit_code == 9 and "rules history" in missing.stderr
    bad = invoke("rules", "show", "not-hex", "--config", str(config))
    assert bad.exit_code != 0 and "hex digits" in bad.stderr


def test_ledger_list_and_show_by_rules_version(published: tuple[Path, list[str]]) -> None:
    config, (first, second) = published
    result = invoke(
        "ledger", "list", "--rules-version", first[:6], "--config", str(config), "--json"
    )
    assert result.exit_code == 0, result.output
    assert [r["path"] for r in json.loads(result.stdout)] == ["0.mxf"]
    both = invoke("ledger", "list", "--rules-version", first[:6], "--rules-version", second,
                  "--config", str(config), "--json")  # fmt: skip
    assert sorted(r["rules_version"] for r in json.loads(both.stdout)) == sorted([first, second])
    shown = invoke("ledger", "show", "1.mxf", "--config", str(config))
    assert f"rules_version   {second}" in shown.stdout


def test_rules_check_says_whether_the_daemon_runs_the_rules_on_disk(
    published: tuple[Path, list[str]],
) -> None:
    config, (_, second) = published
    site = config.parent
    same = invoke("rules", "check", "--config", str(config))
    assert same.exit_code == 0, same.output
    assert f"the daemon runs these rules (version {second[:12]}" in same.stdout

    path = site / "rules" / "a.toml"
    path.write_text(rule_text("a", collection="E"))
    other = invoke("rules", "check", "--config", str(config), "--json")
    doc = json.loads(other.stdout)
    assert doc["daemon"]["same"] is False and doc["daemon"]["version"] == second
    assert doc["version"] == doc["daemon"]["disk_version"] != second
    text = invoke("rules", "check", "--config", str(config)).stdout
    assert f"does not run these rules (version {doc['version'][:12]})" in text
    assert f"it runs version {second[:12]}" in text

    path.write_text("[[rule]\n")
    broken = invoke("rules", "check", "--config", str(config))
    assert broken.exit_code == 3
    assert f"it keeps version {second[:12]}" in broken.stdout


def test_status_names_the_refused_files_problems_and_exits_1(site: Path) -> None:
    ledger = Ledger.open(f"sqlite:///{site / 'ledger.db'}")
    path = site / "rules" / "a.toml"
    try:
        book = RuleBook([site / "rules"], site)
        record = RulesRecord(book, remind_seconds=60)
        publish(ledger, record, 0.0)
        assert invoke("status", "--config", str(site / "ingest.toml")).exit_code == 0
        path.write_text(rule_text("a", qos="fast"))
        bump(path, 10)
        book.maybe_reload()
        publish(ledger, record, 1.0)
        result = invoke("status", "--config", str(site / "ingest.toml"))
        assert result.exit_code == 1
        assert "the rule files on disk are invalid since" in result.stdout
        assert f"{path}:8: rule 'a': key 'qos': unknown QoS 'fast'" in result.stdout
        doc = json.loads(invoke("status", "--config", str(site / "ingest.toml"), "--json").stdout)
        (problem,) = doc["rules_in_force"]["problems"]
        assert (problem["file"], problem["line"], problem["key"]) == (str(path), 8, "qos")
        assert doc["rules_in_force"]["version"] == book.version.version
        # /healthz says it too (without failing the probe: the daemon is alive).
        assert views.rules_in_force(site / "ledger.db") == doc["rules_in_force"]
        assert views.rules_in_force(site / "missing.db") is None
    finally:
        ledger.close()


def test_rules_check_lists_the_files_present_an_edit_would_newly_archive(
    published: tuple[Path, list[str]],
) -> None:
    config, _ = published
    site = config.parent
    for name in ("0.mxf", "1.mxf", "old.mxf", "new.mov", "also.mov", "0.mov", "x.txt"):
        (site / "w" / name).write_bytes(b"x")
    # The ledger knows 0.mov already (say, from an earlier rule): not new.
    ledger = Ledger.open(f"sqlite:///{site / 'ledger.db'}")
    with ledger.batch() as tx:
        tx.add(rule="a", watch=str(site / "w"), path="0.mov")
    ledger.close()
    (site / "rules" / "a.toml").write_text(rule_text("a", collection="D", match=["*.mxf", "*.mov"]))
    result = invoke("rules", "check", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "this edit would archive 2 files now present" in result.stdout
    assert f"{site / 'w' / 'also.mov'} (rule 'a')" in result.stdout
    doc = json.loads(invoke("rules", "check", "--config", str(config), "--json").stdout)
    found = [(m["rule"], m["path"]) for m in doc["daemon"]["new_matches"]]
    assert found == [("a", "also.mov"), ("a", "new.mov")]
    # Narrowing the rules archives nothing new.
    (site / "rules" / "a.toml").write_text(rule_text("a", collection="D", match=["0*.mxf"]))
    narrowed = invoke("rules", "check", "--config", str(config), "--json")
    assert json.loads(narrowed.stdout)["daemon"]["new_matches"] == []


# -- [rules] confirm_new_matches -------------------------------------------------------


def test_confirm_new_matches_holds_what_an_edit_newly_matches_until_accepted(site: Path) -> None:
    watch = str(site / "w")
    for name in ("a.mxf", "b.mov", "c.mov"):
        (site / "w" / name).write_bytes(b"x")
    config = str(site / "ingest.toml")
    path = site / "rules" / "a.toml"
    url = f"sqlite:///{site / 'ledger.db'}"
    released: list[set[tuple[str, str]]] = []

    def record(book: RuleBook) -> RulesRecord:
        return RulesRecord(
            book, 60, confirm=True, held=set(), known=lambda w, p: p == "a.mxf",
            release=released.append,
        )  # fmt: skip

    ledger = Ledger.open(url)
    try:
        first = record(RuleBook([site / "rules"], site))
        publish(ledger, first, 0.0)  # a first start: nothing was archived under other rules
        assert first.held == set()
        path.write_text(rule_text("a", match=["*.mxf", "*.mov"]))
        bump(path, 10)
        assert first.book.maybe_reload()
        publish(ledger, first, 1.0)
        assert first.held == {(watch, "b.mov"), (watch, "c.mov")}
        # A file arriving after the reload is not held.
        (site / "w" / "d.mov").write_bytes(b"x")
        publish(ledger, first, 2.0)
        assert len(first.held) == 2

        status = invoke("status", "--config", config)
        assert status.exit_code == 1
        assert "2 file(s) already present, newly matched by a rules edit, are held" in status.stdout
        assert f"{watch}/b.mov (rule 'a')" in status.stdout
        check = invoke("rules", "check", "--config", config)
        assert "the daemon runs these rules" in check.stdout  # held, yet in force

        # A restart: still held.
        again = record(RuleBook([site / "rules"], site))
        publish(ledger, again, 0.0)
        assert again.held == first.held

        accepted = invoke("rules", "accept", "--config", config)
        assert accepted.exit_code == 0, accepted.output
        assert "releases 2 held files" in accepted.stdout
        publish(ledger, again, 1.0)
        assert again.held == set() and released == [{(watch, "b.mov"), (watch, "c.mov")}]
        assert invoke("status", "--config", config).exit_code == 0
        assert "nothing is held" in invoke("rules", "accept", "--config", config).stdout
    finally:
        ledger.close()

    # An edit made while the daemon was stopped is judged against the rules it last ran.
    (site / "w" / "e.wav").write_bytes(b"x")
    path.write_text(rule_text("a", match=["*.mxf", "*.mov", "*.wav"]))
    ledger = Ledger.open(url)
    try:
        later = record(RuleBook([site / "rules"], site))
        publish(ledger, later, 0.0)
        assert later.held == {(watch, "e.wav")}
    finally:
        ledger.close()
