"""A deployment on a PostgreSQL ledger (the throwaway server of ``postgres.py``): its
config pointed there, the ledger read straight from PostgreSQL, and the ``ingest``
command run with both passwords."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ingest.ledgerurl import postgres_target
from ingest.pgread import PostgresLedger

from .deployment import DIVA_PASSWORD_ENV, Deployment
from .postgres import PASSWORD, PASSWORD_ENV


def use_postgresql(dep: Deployment, url: str, **ledger: str) -> None:
    """Point the deployment's config at the PostgreSQL ledger ``url``."""
    text = dep.config_path.read_text()
    keys = {"password_env": PASSWORD_ENV, **ledger}
    table = f"[ledger]\nurl = {json.dumps(url)}\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in keys.items()
    )
    text, n = re.subn(r"\[ledger\]\nurl = [^\n]*\n", table, text)
    assert n == 1
    dep.config_path.write_text(text)
    # The archive hook judges each call against what this ledger has committed.
    dep.ledger_at = PostgresLedger(postgres_target(url), PASSWORD)


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A psycopg connection to the ledger ``url`` (``postgresql://USER@HOST:PORT/DB``)."""
    target = url.removeprefix("postgresql://")
    user, _, rest = target.partition("@")
    hostport, _, dbname = rest.partition("/")
    host, _, port = hostport.partition(":")
    return psycopg.connect(host=host, port=int(port), user=user, dbname=dbname, password=PASSWORD)


def all_rows(url: str) -> list[dict[str, Any]]:
    """Every drop, oldest first; none before the daemon has migrated the ledger."""
    with connect(url) as conn:
        try:
            return (
                conn.cursor(row_factory=dict_row)
                .execute("SELECT * FROM drops ORDER BY id")
                .fetchall()
            )
        except psycopg.errors.UndefinedTable:
            return []


def rows(url: str) -> dict[str, dict[str, Any]]:
    """path -> its newest drop, read straight from PostgreSQL."""
    return {r["path"]: r for r in all_rows(url)}


def ingest(dep: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    """``ingest ARGS --config`` the deployment's, with the ledger's and DIVA's passwords."""
    return dep.ingest(*args, env={PASSWORD_ENV: PASSWORD, DIVA_PASSWORD_ENV: "operator"})
