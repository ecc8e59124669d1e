"""``ingest ledger copy --to URL``: a realistic SQLite ledger into a real PostgreSQL, read
back the same by the operator commands; refused into a non-empty target or while a
daemon holds the source."""

from __future__ import annotations

import json
from pathlib import Path

from ingest.ledger import Ledger
from ingest.nodes import NodeLock
from tests.support.ledgers import Setup, invoke
from tests.support.postgres import PASSWORD, PASSWORD_ENV


def _pg_config(setup: Setup, url: str) -> Path:
    config = setup.root / "pg.toml"
    config.write_text(f'[ledger]\nurl = "{url}"\npassword_env = "{PASSWORD_ENV}"\n')
    return config


def _export(config: Path) -> list[dict[str, object]]:
    result = invoke("ledger", "export", "--json", "--config", str(config))
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert isinstance(records, list)
    return records


def test_copy_into_postgresql_keeps_every_drop_and_its_history(setup: Setup, pg_url: str) -> None:
    result = setup.run("ledger", "copy", "--to", pg_url, "--password-env", PASSWORD_ENV)
    assert result.exit_code == 0, result.output
    assert "copied" in result.stdout and PASSWORD not in result.output
    pg = _pg_config(setup, pg_url)
    before, after = _export(setup.config), _export(pg)
    assert len(after) == len(setup.ids) and after == before
    for drop_id in setup.ids.values():  # ids kept, histories whole
        show = [
            json.loads(invoke("ledger", "show", str(drop_id), "--json", "--config", c).stdout)
            for c in (str(setup.config), str(pg))
        ]
        assert show[0]["history"] == show[1]["history"] and show[1]["history"]
    # The sequences moved past the copied ids: a new drop does not collide.
    ledger = Ledger.open(pg_url, password=PASSWORD)
    try:
        with ledger.batch() as tx:
            new = tx.add(rule="news", watch="/n", path="new.mxf", kind="file")
        assert new > max(setup.ids.values())
    finally:
        ledger.close()
    # A second copy into the now non-empty target is refused, changing nothing.
    again = setup.run("ledger", "copy", "--to", pg_url, "--password-env", PASSWORD_ENV)
    assert again.exit_code == 8 and "not empty" in again.output
    assert len(_export(pg)) == len(setup.ids) + 1


def test_copy_refused_while_a_daemon_holds_the_ledger(setup: Setup, pg_url: str) -> None:
    lock = NodeLock.acquire(setup.ledger, "studio-a")
    try:
        result = setup.run("ledger", "copy", "--to", pg_url, "--password-env", PASSWORD_ENV)
    finally:
        lock.release()
    assert result.exit_code == 8
    assert 'in use by node "studio-a"' in result.output
    # Refused before it touched the target: not even migrated.
    untouched = invoke("ledger", "export", "--config", str(_pg_config(setup, pg_url)))
    assert untouched.exit_code == 8 and "has not initialised it yet" in untouched.output
