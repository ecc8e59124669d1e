"""``ingest emulator``: placeholder until the emulator lands."""

from __future__ import annotations

import click


@click.command()
def emulator() -> None:
    """Run the DIVA emulator (not yet built)."""
    raise click.ClickException("the emulator is not built yet")
