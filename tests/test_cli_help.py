"""Every command of ``ingest`` has help with an example and is documented.

Documented means named (``ingest ledger list``) in README.md, where the users look.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ingest.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def _commands(
    group: click.Group, ctx: click.Context, path: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        found.append((*path, name))
        if isinstance(command, click.Group):
            found += _commands(command, click.Context(command, parent=ctx), (*path, name))
    return found


COMMANDS = _commands(cli, click.Context(cli))


def _docs() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_operator_commands_are_there() -> None:
    for command in [("status",), ("ledger", "list"), ("ledger", "show"), ("ledger", "export"),
                    ("retry",), ("doctor",)]:  # fmt: skip
        assert command in COMMANDS


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "ingest")
def test_help_has_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    after = result.output[result.output.index("Example") :]
    assert "ingest " in after  # the example is a command line


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_command_is_documented(path: tuple[str, ...]) -> None:
    assert f"ingest {' '.join(path)}" in _docs()
