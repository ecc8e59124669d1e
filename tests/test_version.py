"""``__version__`` is the package metadata's, written once (in pyproject.toml)."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import ingest
from ingest.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_the_package_metadata() -> None:
    assert ingest.__version__ == importlib.metadata.version("ingest")
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.split()[-1] == ingest.__version__
    with pytest.raises(AttributeError):
        ingest.no_such_thing  # noqa: B018 - the module's __getattr__ says no


def test_the_version_is_written_only_in_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    written = f'"{project["project"]["version"]}"'
    copies = [p for p in (ROOT / "ingest").rglob("*.py") if written in p.read_text("utf-8")]
    assert copies == []
