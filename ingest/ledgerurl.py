"""The ledger's URL: which backend it names, and how to show it without a secret.

``[ledger] url`` is ``sqlite:///PATH`` (the embedded default, one machine) or
``postgresql://USER@HOST:PORT/DB`` (a server several hosts share). A PostgreSQL password
never sits in the URL: it comes from ``[ledger] password_env`` or ``password_file``, and is
handed to the driver on its own, so no URL this code logs or raises can hold it. This
module imports neither SQLAlchemy nor a driver: the CLI's fast path uses it.

>>> is_postgresql("postgresql://ingest@db.example:5432/ingest")
True
>>> redact("postgresql://ingest:hunter2@db.example/ingest")
'postgresql://ingest:***@db.example/ingest'
"""

from __future__ import annotations

import functools
import urllib.parse
from dataclasses import dataclass

__all__ = [
    "OLDER_LEDGER",
    "PostgresTarget",
    "check_url",
    "is_postgresql",
    "postgres_target",
    "postgresql_sql",
    "redact",
]

_POSTGRESQL_SCHEMES = ("postgresql://",)


#: what a read of a column the ledger lacks means (its migrations have not all run)
OLDER_LEDGER = "an older ingest wrote this ledger: this version's `ingest run` upgrades it"


def is_postgresql(url: str) -> bool:
    """True when ``url`` names a PostgreSQL ledger (not SQLite)."""
    return url.startswith(_POSTGRESQL_SCHEMES)


def redact(url: str) -> str:
    """``url`` with any password in it replaced by ``***`` (for messages and logs)."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not a URL a password could be told apart in: show none of it
        return "(the URL)"
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True)
class PostgresTarget:
    """Where a PostgreSQL ledger is: what a driver connects to, the password aside."""

    host: str
    port: int
    user: str
    dbname: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{self.user}@{host}:{self.port}/{self.dbname}"

    def connect_kwargs(self, password: str | None) -> dict[str, object]:
        """psycopg's ``connect()`` keywords; the password travels only here."""
        kwargs: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": self.dbname,
            "application_name": "ingest",
            "connect_timeout": 10,
        }
        if password is not None:
            kwargs["password"] = password
        return kwargs


def postgres_target(url: str) -> PostgresTarget:
    """The host, port, user and database of a ``postgresql://`` URL (ValueError if none).

    >>> str(postgres_target("postgresql://ingest@[::1]/ledger"))
    'postgresql://ingest@[::1]:5432/ledger'
    """
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or 5432
    except ValueError:
        raise ValueError("the port must be a number") from None
    if not parts.hostname:
        raise ValueError("a host is needed: postgresql://USER@HOST:PORT/DB")
    if not parts.username:
        raise ValueError("a user is needed: postgresql://USER@HOST:PORT/DB")
    dbname = urllib.parse.unquote(parts.path.lstrip("/")) or parts.username
    return PostgresTarget(parts.hostname, port, urllib.parse.unquote(parts.username), dbname)


def check_url(value: str, example: str) -> str | None:
    """What is wrong with ``value`` as ``[ledger] url``, or None (a config check).

    >>> check_url("postgresql://ingest:pw@db/ingest", "sqlite:///ingest.db")[:40]
    'must not hold the password: give it in ['
    """
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return None
    if is_postgresql(value):
        if urllib.parse.urlsplit(value).password is not None:
            return (
                "must not hold the password: give it in [ledger] password_env or "
                f"password_file, and the URL as {redact(value)!r} without it"
            )
        try:
            postgres_target(value)
        except ValueError as exc:
            return f"{exc}, got {value!r}"
        return None
    return (
        f"must be sqlite:///PATH (e.g. {example!r}) or postgresql://USER@HOST:PORT/DB, "
        f"got {redact(value)!r}"
    )


@functools.lru_cache(maxsize=512)
def postgresql_sql(sql: str) -> str:
    """``sql`` with SQLite's ``?`` placeholders as psycopg's ``%s`` (the one place the two
    parameter styles meet: every statement is written once, with ``?``, and none has a
    ``?`` of its own in a literal).

    >>> postgresql_sql("SELECT '100%' WHERE a = ? AND b = ?")
    "SELECT '100%%' WHERE a = %s AND b = %s"
    """
    return sql.replace("%", "%%").replace("?", "%s")
