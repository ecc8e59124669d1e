"""Output helpers shared by the operator commands: tables, colour, times, formats, streams.

Tables fit the terminal (80 columns when the output is not a terminal), colour is used
only on a terminal and never when ``NO_COLOR`` is set (https://no-color.org). Tables show
local time; JSON, JSON lines and CSV show ISO 8601 UTC with a ``Z``. Row writers take
iterators and write as rows come, so a million-row export never sits in memory.

Only the standard library and click: the read-side commands must start fast.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO

import click

from .errors import UsageError

__all__ = [
    "Column",
    "ago",
    "ago_span",
    "config_option",
    "iso_utc",
    "local_time",
    "output_format",
    "parse_when",
    "render_table",
    "style",
    "table_width",
    "use_colour",
    "write_csv",
    "write_json_array",
    "write_nl",
]

Format = Literal["table", "json", "nl", "csv"]

#: The ``--config`` option every operator command takes after its name.
config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Service config (default: env INGEST_CONFIG, then ./ingest.toml).",
)


# ---------------------------------------------------------------------------------------
# colour


def use_colour(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stdout) is a terminal and ``NO_COLOR`` is not set."""
    if os.environ.get("NO_COLOR", ""):
        return False
    stream = sys.stdout if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


_STATE_COLOURS = {
    "COMPLETED": "green",
    "OK": "green",
    "ok": "green",
    "FAILED": "red",
    "REJECTED": "red",
    "FAIL": "red",
    "down": "red",
    "RETRY_WAIT": "yellow",
    "WARN": "yellow",
    "paused": "yellow",
    "SUBMITTED": "cyan",
    "RUNNING": "cyan",
    "SUBMITTING": "cyan",
}


def style(text: str, colour: bool, key: str | None = None, *, bold: bool = False) -> str:
    """``text`` coloured for ``key`` (a state, health or check outcome) when ``colour``."""
    if not colour:
        return text
    fg = _STATE_COLOURS.get(key if key is not None else text.strip())
    if fg is None and not bold:
        return text
    return click.style(text, fg=fg, bold=bold or None)


# ---------------------------------------------------------------------------------------
# times


def local_time(epoch: float | None, *, seconds: bool = False) -> str:
    """``2024-05-01 14:03`` in the local time zone (empty for None), for tables."""
    if epoch is None:
        return ""
    fmt = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    return time.strftime(fmt, time.localtime(epoch))


def iso_utc(epoch: float | None) -> str | None:
    """``2024-05-01T12:03:22.123Z`` (ISO 8601, UTC, milliseconds), or None.

    >>> iso_utc(0.5)
    '1970-01-01T00:00:00.500Z'
    """
    if epoch is None:
        return None
    millis = round(epoch * 1000)
    secs, ms = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


def ago(epoch: float | None, now: float | None = None) -> str:
    """``3h 12m ago`` / ``in 40s``: how far ``epoch`` is from now, for people."""
    if epoch is None:
        return ""
    delta = (time.time() if now is None else now) - epoch
    text = _span(abs(delta))
    return f"{text} ago" if delta >= 0 else f"in {text}"


def ago_span(seconds: float) -> str:
    """A duration for people: ``45s``, ``12m 05s``, ``4h 00m``, ``2d 03h``."""
    return _span(seconds)


def _span(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, now: float | None = None) -> float:
    """Epoch seconds of ``text``: ``24h``/``7d``/``30m``/``2w`` ago, or an ISO date or time.

    A date or time without a zone is local time; ``Z`` or ``+02:00`` say otherwise.
    Raises :class:`UsageError` for anything else.

    >>> parse_when("2h", now=10_000.0)
    2800.0
    >>> parse_when("1970-01-01T00:00:10Z")
    10.0
    """
    relative = _RELATIVE.match(text)
    if relative:
        amount, unit = float(relative.group(1)), relative.group(2).lower()
        return (time.time() if now is None else now) - amount * _UNIT_SECONDS[unit]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"cannot read the time {text!r}: give e.g. 24h, 7d, 2024-05-01 or 2024-05-01T14:00"
        ) from None
    # A naive datetime is local time, as the operator reads it in the tables.
    return when.timestamp()


# ---------------------------------------------------------------------------------------
# tables


@dataclass(frozen=True)
class Column:
    """A table column: ``min``/``max`` bound its width; ``cut`` says which end to drop."""

    title: str
    min: int = 4
    max: int = 60
    align: Literal["left", "right"] = "left"
    cut: Literal["right", "left"] = "right"
    colour: bool = False  # colour the cell by its value (states, health, outcomes)


def table_width() -> int:
    """The width to fit: the terminal's on a terminal, else 80 columns."""
    try:
        tty = sys.stdout.isatty()
    except (AttributeError, ValueError):
        tty = False
    return max(40, shutil.get_terminal_size((80, 24)).columns) if tty else 80


def _fit(text: str, width: int, cut: str) -> str:
    text = " ".join(text.split()) if ("\n" in text or "\t" in text) else text
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    return "…" + text[-(width - 1) :] if cut == "left" else text[: width - 1] + "…"


def _widths(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> list[int]:
    natural = [
        max([len(c.title), *(len(r[i]) for r in rows)]) if rows else len(c.title)
        for i, c in enumerate(columns)
    ]
    widths = [max(min(n, c.max), min(c.min, n)) for n, c in zip(natural, columns, strict=True)]
    budget = width - 2 * (len(columns) - 1)
    # Shrink the widest shrinkable column one step at a time: fair and simple.
    while sum(widths) > budget:
        candidates = [i for i, c in enumerate(columns) if widths[i] > max(c.min, len(c.title))]
        if not candidates:
            candidates = [i for i, c in enumerate(columns) if widths[i] > c.min]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def render_table(
    columns: Sequence[Column],
    rows: Iterable[Sequence[Any]],
    *,
    width: int | None = None,
    colour: bool = False,
    sample: int = 500,
) -> Iterator[str]:
    """Lines of a table that fits ``width``; widths are sized on the first ``sample`` rows.

    Cells longer than their column are cut with ``…``; rows after the sample stream
    through with the same widths.
    """
    width = table_width() if width is None else width
    it = iter(rows)
    head: list[list[str]] = []
    for row in it:
        head.append(["" if v is None else str(v) for v in row])
        if len(head) >= sample:
            break
    widths = _widths(columns, head, width)

    def line(cells: Sequence[str], is_title: bool = False) -> str:
        out = []
        for cell, col, w in zip(cells, columns, widths, strict=True):
            text = _fit(cell, w, col.cut)
            padded = text.rjust(w) if col.align == "right" else text.ljust(w)
            if colour and is_title:
                padded = click.style(padded, bold=True)
            elif colour and col.colour:
                padded = style(padded, True, text)
            out.append(padded)
        return "  ".join(out).rstrip()

    yield line([c.title for c in columns], is_title=True)
    for cells in head:
        yield line(cells)
    for row in it:
        yield line(["" if v is None else str(v) for v in row])


# ---------------------------------------------------------------------------------------
# output formats


def output_format(
    *formats: Format, default: Format = "table"
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add ``--json``/``--nl``/``--csv`` flags (those in ``formats``); the command gets ``fmt``.

    Giving two of them is a usage error.
    """
    helps = {
        "json": "Print JSON, for scripts.",
        "nl": "Print JSON lines: one object per line.",
        "csv": "Print CSV with a header line.",
    }
    flags = [f for f in formats if f != "table"]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            chosen = [f for f in flags if kwargs.pop(f"as_{f}", False)]
            if len(chosen) > 1:
                raise click.UsageError("give only one of " + ", ".join(f"--{f}" for f in chosen))
            kwargs["fmt"] = chosen[0] if chosen else default
            return func(*args, **kwargs)

        for flag in reversed(flags):
            text = helps[flag] + (" (the default)" if flag == default else "")
            wrapper = click.option(f"--{flag}", f"as_{flag}", is_flag=True, help=text)(wrapper)
        return wrapper

    return decorate


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def dumps(record: Mapping[str, Any], *, indent: int | None = None) -> str:
    """A record as JSON (unicode kept as is)."""
    return json.dumps(record, ensure_ascii=False, default=_json_default, indent=indent)


def write_json_array(records: Iterable[Mapping[str, Any]], out: TextIO) -> int:
    """Stream ``records`` as one JSON array, one object per line; returns the count."""
    count = 0
    out.write("[")
    for record in records:
        out.write(",\n" if count else "\n")
        out.write(dumps(record))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def write_nl(records: Iterable[Mapping[str, Any]], out: TextIO) -> int:
    """Stream ``records`` as JSON lines; returns the count."""
    count = 0
    for record in records:
        out.write(dumps(record))
        out.write("\n")
        count += 1
    return count


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def write_csv(records: Iterable[Mapping[str, Any]], out: TextIO, fields: Sequence[str]) -> int:
    """Stream ``records`` as CSV with a header line of ``fields``; returns the count."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    count = 0
    for record in records:
        writer.writerow([_csv_cell(record.get(f)) for f in fields])
        count += 1
    return count


def write_records(
    records: Iterable[Mapping[str, Any]], fmt: str, fields: Sequence[str], out: TextIO
) -> int:
    """Stream ``records`` in ``fmt`` (json, nl or csv); returns the count."""
    if fmt == "json":
        return write_json_array(records, out)
    if fmt == "nl":
        return write_nl(records, out)
    if fmt == "csv":
        return write_csv(records, out, fields)
    raise ValueError(f"not a record format: {fmt}")


def quiet_broken_pipe(func: Callable[..., Any]) -> Callable[..., Any]:
    """End quietly when the reader goes away (``ingest ledger export | head``)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = func(*args, **kwargs)
            sys.stdout.flush()
            return result
        except BrokenPipeError:
            # Python would complain again when flushing stdout at exit.
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            raise SystemExit(0) from None

    return wrapper
