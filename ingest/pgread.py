"""The operator commands' read side on a PostgreSQL ledger: psycopg 3, no SQLAlchemy.

:mod:`ingest.queries` and :mod:`ingest.overview` write each query once, for SQLite
(``?`` placeholders, rows read by name or position). :class:`PgConnection` lets the same
text and the same callers run on PostgreSQL: it turns the placeholders into psycopg's
(:func:`ingest.ledgerurl.postgresql_sql`, as the engine's writes do) and gives rows that
read like :class:`sqlite3.Row`. Every session is read-only, as SQLite's
``mode=ro`` is: only ``ingest retry`` writes, through the engine's own ledger code.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, LedgerError
from .ledgerurl import OLDER_LEDGER, PostgresTarget, postgresql_sql

__all__ = ["PgConnection", "PgRow", "PostgresLedger", "connect", "errors", "glob_to_regex"]


@dataclass(frozen=True)
class PostgresLedger:
    """A PostgreSQL ledger as the CLI reaches it: where, and the password (never shown)."""

    target: PostgresTarget
    password: str | None

    def __str__(self) -> str:
        return str(self.target)

    def __repr__(self) -> str:
        return f"PostgresLedger({str(self.target)!r})"

    @property
    def url(self) -> str:
        """The ``[ledger] url``, without the password."""
        return str(self.target)


class PgRow(tuple[Any, ...]):
    """A row read by position or by column name, like :class:`sqlite3.Row`."""

    _names: tuple[str, ...]
    _index: dict[str, int]

    def __new__(cls, names: tuple[str, ...], index: dict[str, int], values: Sequence[Any]) -> PgRow:
        row = super().__new__(cls, values)
        row._names, row._index = names, index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._index[key])
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Any:
    names = tuple(c.name for c in cursor.description or ())
    index = {name: i for i, name in enumerate(names)}
    return lambda values: PgRow(names, index, values)


class PgConnection:
    """A read-only psycopg connection that runs :mod:`ingest.queries`' SQLite-worded SQL."""

    dialect = "postgresql"

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self._names = itertools.count(1)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.raw.execute(postgresql_sql(sql), params)

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[PgRow]:
        """The rows of ``sql``, fetched from a server-side cursor a batch at a time: a
        whole ledger's export without holding it in memory (as sqlite3's cursor streams)."""
        with self.raw.cursor(name=f"stream{next(self._names)}", withhold=True) as cursor:
            cursor.itersize = 2000
            cursor.execute(postgresql_sql(sql), params)
            yield from cursor

    def begin_snapshot(self) -> None:
        # One snapshot for every query inside, as SQLite's read transaction gives.
        self.raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def end_snapshot(self) -> None:
        self.raw.execute("COMMIT")

    def close(self) -> None:
        self.raw.close()


def connect(ledger: PostgresLedger) -> PgConnection:
    """A read-only connection (autocommit: each statement its own snapshot unless a
    :meth:`PgConnection.begin_snapshot`); an unreachable server is a :class:`ConfigError`
    naming host and port, never the password."""
    import psycopg

    kwargs = ledger.target.connect_kwargs(ledger.password)
    try:
        raw = psycopg.connect(
            **kwargs,  # type: ignore[arg-type]
            autocommit=True,
            row_factory=_row_factory,
            options="-c default_transaction_read_only=on",
        )
    except psycopg.Error as exc:
        target = ledger.target
        raise ConfigError(
            f"[ledger] url: cannot reach PostgreSQL at {target.host}:{target.port} "
            f"(database {target.dbname}, user {target.user}): {_reason(exc, ledger.password)}"
        ) from None
    return PgConnection(raw)


def _reason(exc: BaseException, password: str | None) -> str:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return reason.replace(password, "***") if password else reason


@contextmanager
def errors(ledger: PostgresLedger) -> Iterator[None]:
    """Turn psycopg's errors into one :class:`LedgerError` line naming the ledger."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        reason = _reason(exc, ledger.password)
        if isinstance(exc, psycopg.errors.UndefinedTable):
            reason += " (not an ingest ledger, or `ingest run` has not initialised it yet)"
        elif isinstance(exc, psycopg.errors.UndefinedColumn):
            reason += f" ({OLDER_LEDGER})"
        raise LedgerError(f"ledger {ledger}: {reason}") from exc


def glob_to_regex(pattern: str) -> str:
    """An fnmatch-style pattern as a PostgreSQL regular expression that reads it as SQLite's
    ``GLOB`` does (``*`` crosses ``/``; case matters).

    >>> print(glob_to_regex("news/[!x]*.mxf"))
    ^news/[^x].*\\.mxf$
    """
    out, i = ["^"], 0
    while i < len(pattern):
        c = pattern[i]
        close = pattern.find("]", i + 2) if c == "[" else -1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif close != -1:
            body = pattern[i + 1 : close]
            body = "^" + body[1:] if body.startswith(("!", "^")) else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = close
        else:
            out.append(c if c.isalnum() or c in "/_- " else "\\" + c)
        i += 1
    return "".join(out) + "$"
