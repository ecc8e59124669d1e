"""The operator commands on a ledger the real engine filled while talking to the emulator."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

from .support.deployment import Deployment


def test_status_list_show_export_and_daemon_refusal(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    dep.rule("broken", watch=str(dep.watch), match=["*.bad"], media="NO_SUCH_MEDIA")
    (dep.watch / "good.mxf").write_bytes(b"good")
    (dep.watch / "sub").mkdir()
    (dep.watch / "sub" / "also.mxf").write_bytes(b"also")
    (dep.watch / "wrong.bad").write_bytes(b"bad")
    dep.start()
    dep.wait_state("good.mxf", "COMPLETED")
    dep.wait_state("sub/also.mxf", "COMPLETED")
    dep.wait_state("wrong.bad", "REJECTED")

    status = dep.ingest("status", "--json")
    assert status.returncode == 1  # a rejection in the last 24 h is worth a look
    doc = json.loads(status.stdout)
    text = json.dumps(doc)
    assert "COMPLETED" in text and "REJECTED" in text and str(dep.watch) in text

    listed = dep.ingest("ledger", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["path"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {"good.mxf", "sub/also.mxf", "wrong.bad"}
    good = rows["good.mxf"]
    assert good["state"] == "COMPLETED" and good["source_deleted"] is True
    assert good["finished_at"].endswith("Z") and good["request_id"]
    assert rows["wrong.bad"]["status_code"] == 1017

    failed = dep.ingest("ledger", "list", "--state", "rejected", "--nl")
    assert [json.loads(line)["path"] for line in failed.stdout.splitlines()] == ["wrong.bad"]

    shown = dep.ingest("ledger", "show", "sub/also.mxf", "--json")
    assert shown.returncode == 0, shown.stderr
    history = json.loads(shown.stdout)["history"]
    assert [h["to_state"] for h in history][:2] == ["DETECTED", "SUBMITTING"]
    assert history[-1]["to_state"] == "COMPLETED"

    exported = dep.ingest("ledger", "export", "--csv")
    table = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert sorted(r["path"] for r in table) == ["good.mxf", "sub/also.mxf", "wrong.bad"]

    missing = dep.ingest("ledger", "show", "no/such.mxf")
    assert missing.returncode == 9 and "error:" in missing.stderr

    # The daemon refuses to start on invalid rules, with the rules checker's message.
    dep.stop()
    (dep.rules_dir / "typo.toml").write_text('[[rule]]\nname = "x"\nwatc = "/nowhere"\n')
    refused = subprocess.run(
        [sys.executable, "-m", "ingest", "run", "--config", str(dep.config_path)],
        capture_output=True, text=True, timeout=60,
        env={**__import__("os").environ, "INGEST_TEST_DIVA_PASSWORD": "operator"},
    )  # fmt: skip
    assert refused.returncode == 3
    assert "typo.toml" in refused.stderr and "watc" in refused.stderr
    assert "did you mean" in refused.stderr
