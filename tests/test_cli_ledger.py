"""``ingest ledger list|show|export`` over a ledger filled the way the engine fills it
(``tests/support/ledgers.py``, through the ``setup`` fixture)."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest import queries
from ingest.ledger import Ledger, State

from .support.ledgers import HOUR, Setup, as_json, ids_of, invoke, write_config

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

#: The fields `ingest ledger list --json` promises (issue 4's ledger contract and issue 5).
CONTRACT = [
    "id",
    "rule",
    "watch",
    "path",
    "object_name",
    "collection",
    "media",
    "qos",
    "state",
    "diva_state",
    "request_id",
    "status_code",
    "status_name",
    "abort_reason",
    "attempts",
    "source_deleted",
    "detected_at",
    "submitted_at",
    "finished_at",
    "error",
    "progress",
]


# ---------------------------------------------------------------------------------------
# list


def test_list_json_follows_the_contract(setup: Setup) -> None:
    docs = as_json(setup.run("ledger", "list", "--json"))
    assert len(docs) == len(setup.ids)
    assert [d["id"] for d in docs] == sorted(setup.ids.values(), reverse=True)
    for doc in docs:
        assert set(CONTRACT) <= set(doc)
        assert doc["state"] in queries.STATES
        for key in ("detected_at", "submitted_at", "finished_at"):
            assert doc[key] is None or ISO_Z.match(doc[key]), doc[key]
        assert doc["source_deleted"] in (None, True, False)
    by_id = {d["id"]: d for d in docs}
    done = by_id[setup.ids["done"]]
    assert done["state"] == "COMPLETED"
    assert done["source_deleted"] is True
    assert done["request_id"] == 101
    assert done["object_name"] == "a"
    assert done["qos"] == 256
    assert done["watch"] == str(setup.news)
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(setup.now - 47 * HOUR))
    assert done["finished_at"].startswith(when)
    assert by_id[setup.ids["dup_done"]]["source_deleted"] is False
    rejected = by_id[setup.ids["rejected"]]
    assert (rejected["status_code"], rejected["status_name"]) == (1017, "DIVA_ERR_UNKNOWN_MEDIA")


def test_list_table_is_newest_first_and_fits_80_columns(setup: Setup) -> None:
    result = setup.run("ledger", "list")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["ID", "STATE", "RULE", "PATH", "DETECTED", "NOTE"]
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    first_ids = [int(line.split()[0]) for line in lines[1:]]
    assert first_ids == sorted(setup.ids.values(), reverse=True)
    assert "\x1b[" not in result.output  # not a terminal: no colour
    row = next(line for line in lines if line.split()[0] == str(setup.ids["done"]))
    assert (
        time.strftime("%Y-%m-%d %H:%M", time.localtime(setup.now - 48 * HOUR)) in row
    )  # local time


def test_list_table_cuts_long_values_to_fit(tmp_path: Path) -> None:
    write_config(tmp_path)
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    with ledger.batch() as tx:
        tx.add(rule="r" * 50, watch="/w", path="deep/" * 40 + "file.mxf", error="e" * 300)
    ledger.close()
    result = invoke("ledger", "list", "--config", str(tmp_path / "ingest.toml"))
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "…/deep/file.mxf" in lines[1]  # paths lose their start, not their name


def test_a_ledger_an_older_ingest_wrote_says_how_to_upgrade_it(tmp_path: Path) -> None:
    write_config(tmp_path)
    Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}").close()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:  # as before migration 0012
        conn.execute("DROP INDEX ix_drops_files_remain")
        conn.execute("ALTER TABLE drops DROP COLUMN files_gone_at")
    result = invoke("ledger", "list", "--json", "--config", str(tmp_path / "ingest.toml"))
    assert result.exit_code == 8, result.output  # LedgerError
    assert "files_gone_at" in result.stderr
    assert "an older ingest wrote this ledger: this version's `ingest run` upgrades it" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--state", "failed"], ["failed", "dup_failed", "old_failed"]),
        (["--state", "FAILED", "--state", "rejected"],
         ["rejected", "failed", "dup_failed", "old_failed"]),
        (["--state", "running", "--state", "submitted"], ["submitted", "running"]),
        (["--rule", "dpx"], ["marker", "submitted"]),
        (["--rule", "dpx", "--state", "DETECTED"], ["marker"]),
        (["--since", "1h"], ["settling", "unicode", "queued", "retry_wait"]),
        (["--since", "100m", "--until", "75m"], ["submitted", "running"]),
        (["--path", "*.mxf", "--rule", "news", "--state", "COMPLETED"], ["dup_done", "done"]),
        (["--path", "dup*"], ["dup_done", "dup_failed"]),
        (["--path", "[!a-c]*.mxf", "--since", "45m"], ["settling", "unicode", "queued"]),
        (["--path", "*/clip [[]1].mxf"], ["unicode"]),
        (["--path", "REEL_?"], ["marker", "submitted"]),
        (["--object", "run"], ["running"]),
        (["--object", "nothing"], []),
        (["--state", "FAILED", "--limit", "2"], ["failed", "dup_failed"]),
        (["--state", "FAILED", "--state", "REJECTED", "--limit", "2"], ["rejected", "failed"]),
        (["--limit", "3"], ["settling", "unicode", "queued"]),
    ],
)  # fmt: skip
def test_list_filters(setup: Setup, args: list[str], names: list[str]) -> None:
    assert ids_of(setup.run("ledger", "list", "--json", *args)) == [setup.ids[n] for n in names]


def test_list_path_glob_on_absolute_paths(setup: Setup) -> None:
    result = setup.run("ledger", "list", "--json", "--path", f"{setup.dpx}/*")
    assert ids_of(result) == [setup.ids["marker"], setup.ids["submitted"]]


def test_list_since_takes_iso_times_in_local_or_utc(setup: Setup) -> None:
    cut = setup.now - 45 * 60
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(cut))
    utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cut))
    expected = [setup.ids[n] for n in ("settling", "unicode", "queued")]
    assert ids_of(setup.run("ledger", "list", "--json", "--since", local)) == expected
    assert ids_of(setup.run("ledger", "list", "--json", "--since", utc)) == expected
    day = time.strftime("%Y-%m-%d", time.localtime(setup.now + 86400))
    assert ids_of(setup.run("ledger", "list", "--json", "--since", day)) == []


def test_list_nl_and_csv(setup: Setup) -> None:
    result = setup.run("ledger", "list", "--nl", "--state", "REJECTED", "--state", "COMPLETED")
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["id"] for d in docs] == [setup.ids[n] for n in ("rejected", "dup_done", "done")]
    result = setup.run("ledger", "list", "--csv", "--rule", "news", "--state", "COMPLETED")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert set(CONTRACT) <= set(rows[0])
    assert [int(r["id"]) for r in rows] == [setup.ids["dup_done"], setup.ids["done"]]
    assert rows[1]["source_deleted"] == "true"
    assert rows[0]["source_deleted"] == "false"
    assert ISO_Z.match(rows[1]["finished_at"])
    assert rows[1]["error"] == ""  # None is an empty cell


def test_list_json_is_unlimited_but_the_table_is_not(tmp_path: Path) -> None:
    write_config(tmp_path)
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    with ledger.batch() as tx:
        for i in range(130):
            tx.add(rule="news", watch="/w", path=f"f{i:03d}.mxf")
    ledger.close()
    config = str(tmp_path / "ingest.toml")
    assert len(as_json(invoke("ledger", "list", "--json", "--config", config))) == 130
    table = invoke("ledger", "list", "--config", config).output.splitlines()
    assert len(table) == 1 + 100 + 1
    assert table[-1] == "(the newest 100; --limit N shows more, --limit 0 all)"
    table = invoke("ledger", "list", "--limit", "0", "--config", config).output.splitlines()
    assert len(table) == 1 + 130


def test_list_refuses_bad_arguments(setup: Setup) -> None:
    result = setup.run("ledger", "list", "--state", "FIALED")
    assert result.exit_code == 2
    assert "unknown state 'FIALED'" in result.output
    assert "FAILED" in result.output
    result = setup.run("ledger", "list", "--since", "yesterday")
    assert result.exit_code == 2
    assert "cannot read the time 'yesterday'" in result.output
    result = setup.run("ledger", "list", "--json", "--csv")
    assert result.exit_code == 2
    result = setup.run("ledger", "list", "--limit", "-1")
    assert result.exit_code == 2


def test_list_errors_have_exit_codes(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = invoke("ledger", "list", "--config", str(config))
    assert result.exit_code == 8
    assert "no ledger at" in result.output
    (tmp_path / "ledger.db").write_text("not a database", encoding="utf-8")
    result = invoke("ledger", "list", "--config", str(config))
    assert result.exit_code == 8
    assert "not an SQLite database" in result.output
    config.write_text("[ledger]\nurl = 3\n", encoding="utf-8")
    assert invoke("ledger", "list", "--config", str(config)).exit_code == 3


def test_list_through_the_real_entry_point(setup: Setup) -> None:
    """``python -m ingest``: one error line on stderr and the exit code, no traceback."""
    base = [sys.executable, "-m", "ingest", "ledger", "list", "--config", str(setup.config)]
    proc = subprocess.run([*base, "--json", "--state", "RUNNING"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert [d["id"] for d in json.loads(proc.stdout)] == [setup.ids["running"]]
    setup.ledger.unlink()
    proc = subprocess.run(base, capture_output=True, text=True)
    assert proc.returncode == 8
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: no ledger at")


# ---------------------------------------------------------------------------------------
# show


def test_show_by_id(setup: Setup) -> None:
    result = setup.run("ledger", "show", str(setup.ids["failed"]))
    assert result.exit_code == 0
    out = result.output
    assert out.splitlines()[0] == f"drop {setup.ids['failed']}: FAILED"
    assert "DIVA_AR_DRIVE" in out
    assert "request_id      102" in out
    assert '"objectName": "b"' in out  # the archive body, pretty
    history = out[out.index("history:") :].splitlines()[1:]
    arrows = [line.split("  ")[2] for line in history if "→" in line]
    assert arrows == [
        "(new) → DETECTED",
        "DETECTED → SUBMITTING",
        "SUBMITTING → SUBMITTED",
        "SUBMITTED → RUNNING",
        "RUNNING → FAILED",
    ]
    assert "DIVA aborted request 102: DIVA_AR_DRIVE" in out


def test_show_json_has_history(setup: Setup) -> None:
    doc = as_json(setup.run("ledger", "show", str(setup.ids["done"]), "--json"))
    assert set(CONTRACT) <= set(doc)
    assert doc["body"]["objectName"] == "a"
    assert [h["to_state"] for h in doc["history"]] == [
        "DETECTED", "SUBMITTING", "SUBMITTED", "RUNNING", "COMPLETED"
    ]  # fmt: skip
    assert all(ISO_Z.match(h["at"]) for h in doc["history"])
    assert doc["history"][-1]["detail"].startswith("DIVA completed request 101")


def test_show_by_path_picks_the_newest_and_says_so(setup: Setup) -> None:
    result = setup.run("ledger", "show", "dup.mxf")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == f"drop {setup.ids['dup_done']}: COMPLETED"
    assert "2 drops recorded for this path" in lines[1]
    assert str(setup.ids["dup_failed"]) in lines[1]
    doc = as_json(setup.run("ledger", "show", str(setup.news / "dup.mxf"), "--json"))
    assert doc["id"] == setup.ids["dup_done"]
    assert doc["same_path_ids"] == [setup.ids["dup_done"], setup.ids["dup_failed"]]
    doc = as_json(setup.run("ledger", "show", "Spaces and ünïcode/clip [1].mxf", "--json"))
    assert doc["id"] == setup.ids["unicode"]
    doc = as_json(setup.run("ledger", "show", str(setup.dpx / "REEL_2"), "--json"))
    assert doc["id"] == setup.ids["marker"]


def test_show_unknown_is_exit_9(setup: Setup) -> None:
    for what, kind in (("99999", "drop id or path"), ("nope.mxf", "path"),
                       ("/elsewhere/a.mxf", "path")):  # fmt: skip
        result = setup.run("ledger", "show", what)
        assert result.exit_code == 9, what
        assert result.output.startswith(f"error: no {kind} {what!r} in the ledger "), result.output
        assert "ingest ledger list --path GLOB" in result.output


# ---------------------------------------------------------------------------------------
# export


def test_export_csv_is_everything_by_default(setup: Setup) -> None:
    result = setup.run("ledger", "export")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [int(r["id"]) for r in rows] == sorted(setup.ids.values(), reverse=True)
    assert list(rows[0]) == list(queries.RECORD_FIELDS)


def test_export_nl_filtered_to_a_file(setup: Setup, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    result = setup.run(
        "ledger", "export", "--nl", "--state", "FAILED", "--since", "2d", "-o", str(out)
    )
    assert result.exit_code == 0
    assert "exported 2 drops to" in result.stderr
    docs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [d["id"] for d in docs] == [setup.ids["failed"], setup.ids["dup_failed"]]
    docs = as_json(setup.run("ledger", "export", "--json", "--rule", "dpx"))
    assert [d["id"] for d in docs] == [setup.ids["marker"], setup.ids["submitted"]]


def test_export_into_a_closed_pipe_ends_quietly(setup: Setup) -> None:
    ledger = Ledger.open(f"sqlite:///{setup.ledger}")
    with ledger.batch() as tx:
        for i in range(5000):
            tx.add(rule="news", watch=str(setup.news), path=f"bulk/{i}.mxf")
    ledger.close()
    cmd = [sys.executable, "-m", "ingest", "ledger", "export", "--config", str(setup.config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


# ---------------------------------------------------------------------------------------
# reading beside the daemon


@pytest.fixture
def writer(setup: Setup) -> Iterator[sqlite3.Connection]:
    """Another connection in the middle of a write transaction, as the daemon may be."""
    conn = sqlite3.connect(setup.ledger, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO drops (rule, watch, path, state, detected_at, updated_at) "
        "VALUES ('news', '/w', 'uncommitted.mxf', 'DETECTED', 0, 0)"
    )
    yield conn
    conn.execute("ROLLBACK")
    conn.close()


def test_reads_do_not_wait_for_a_writer(setup: Setup, writer: sqlite3.Connection) -> None:
    docs = as_json(setup.run("ledger", "list", "--json"))
    assert len(docs) == len(setup.ids)  # the uncommitted row is not seen
    assert setup.run("ledger", "show", "b.mxf").exit_code == 0
    assert setup.run("ledger", "export").exit_code == 0
    # ...and the writer can still commit while a reader is open
    with queries.open_ledger(setup.ledger) as conn:
        cursor = queries.select_drops(conn, queries.DropFilter())
        cursor.fetchone()
        writer.execute("COMMIT")
        writer.execute("BEGIN")


# ---------------------------------------------------------------------------------------
# queries: fit the indexes, stream


def _plan(conn: sqlite3.Connection, sql: str, params: Any = ()) -> str:
    return " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


def test_list_queries_read_a_state_in_index_order(setup: Setup) -> None:
    """``--state FAILED --limit 50`` reads 50 index entries: no scan, no sort of a state."""
    with queries.open_ledger(setup.ledger) as conn:
        traced: list[str] = []
        conn.set_trace_callback(traced.append)  # the SQL with its values, as run
        queries.select_drops(conn, queries.DropFilter(states=("FAILED",)), limit=50).fetchall()
        two = queries.DropFilter(states=("FAILED", "REJECTED"))
        queries.select_drops(conn, two, limit=50).fetchall()
        conn.set_trace_callback(None)
        single, merged = (_plan(conn, sql).split(" | ") for sql in traced)
        assert single == ["SEARCH drops USING INDEX ix_drops_state_id (state=?)"]
        searches = [step for step in merged if "drops" in step]
        assert searches == ["SEARCH drops USING INDEX ix_drops_state_id (state=?)"] * 2
        # the only sorting is the merge of the two limited subqueries (at most 2 x 50 rows)
        for i, step in enumerate(merged):
            if "TEMP B-TREE" in step:
                assert merged[i - 1].startswith("SCAN (subquery")
        assert isinstance(queries.select_drops(conn, two), sqlite3.Cursor)  # a stream


def test_status_queries_use_covering_indexes(setup: Setup) -> None:
    with queries.open_ledger(setup.ledger) as conn:
        plan = _plan(conn, "SELECT state, rule, count(*) FROM drops GROUP BY state, rule")
        assert "COVERING INDEX ix_drops_state_rule" in plan
        plan = _plan(
            conn,
            "SELECT count(*) FROM drops WHERE state = ? AND finished_at >= ?",
            ("FAILED", 0),
        )
        assert "COVERING INDEX ix_drops_state_finished" in plan


def test_states_match_the_ledger() -> None:
    assert tuple(State) == queries.STATES
