"""The ``ingest`` command: one click group, commands loaded lazily, errors turned into exits here.

Each command lives in ``ingest.commands.<name>`` and is imported only when it runs, so
``ingest status`` does not pay for FastAPI. Every :class:`~ingest.errors.IngestError` becomes
one line on stderr and its exit code in :func:`main`, and nowhere else.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from .errors import IngestError, exit_codes

__all__ = ["LAZY_COMMANDS", "cli", "configure_logging", "main"]

#: command name -> "module:attribute"; modules are imported on first use.
LAZY_COMMANDS: dict[str, str] = {
    "doctor": "ingest.commands.doctor:doctor",
    "demo": "ingest.commands.demo:demo",
    "emulator": "ingest.commands.emulator:emulator",
    "ledger": "ingest.commands.ledger:ledger",
    "retry": "ingest.commands.retry:retry",
    "rules": "ingest.commands.rules:rules",
    "run": "ingest.commands.run:run",
    "status": "ingest.commands.status:status",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module_name, attr = LAZY_COMMANDS[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            doc.update(extra)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send the ``ingest`` loggers to stderr, unless a handler is already there.

    The library only logs; this is the one place that decides where logs go.
    """
    root = logging.getLogger("ingest")
    root.setLevel(level.upper())
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root.addHandler(handler)


def _exit_code_epilog() -> str:
    return "Exit codes:\n\n" + "\n\n".join(f"  {k}  {v}" for k, v in exit_codes().items())


@click.group(cls=LazyGroup, epilog=_exit_code_epilog())
@click.version_option(package_name="ingest")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    envvar="INGEST_LOG_LEVEL",
    help="How much to log (env INGEST_LOG_LEVEL).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="INGEST_LOG_FORMAT",
    help="Log lines as text or as JSON lines (env INGEST_LOG_FORMAT).",
)
def cli(log_level: str, log_format: str) -> None:
    """Watch-folder ingest for Telestream DIVA archives.

    Start with `ingest demo`; in production, `ingest run` is the daemon and `ingest status`
    and `ingest ledger` answer "did my file make it?".

    \b
    Example:
      ingest demo
      ingest run --config /etc/ingest/ingest.toml
      ingest ledger list --state FAILED --config /etc/ingest/ingest.toml
    """
    configure_logging(log_level, log_format)


def main(argv: list[str] | None = None, prog_name: str | None = None) -> None:
    """Run the CLI and turn every :class:`IngestError` into one stderr line and its exit code."""
    run: Callable[..., Any] = cli.main
    try:
        # Outside standalone mode click returns ctx.exit(n)'s code instead of exiting.
        result = run(args=argv, prog_name=prog_name or "ingest", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except IngestError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)
