"""Shared fixtures; the machinery behind them is in ``tests/support/``.

Emulator: one ``ingest emulator`` subprocess per test process (so one per pytest-xdist
worker) on a free loopback port (``emulator_session``), wiped through
``POST /_emulator/reset`` before each test that asks for ``emulator``. Its servers are
folders under the session's temporary directory, emptied before each test too.
``emulator_guide_session`` / ``emulator_guide`` are the same with ``--profile guide`` (and
a fixed ``--seed``), started only if a test asks for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .support.deployment import DIVA_PASSWORD_ENV, Deployment, deployed
from .support.emulator import Login, RunningEmulator, logins, suite_emulator
from .support.ledgers import Setup, build
from .support.postgres import pg_url, postgres  # noqa: F401 - fixtures

#: leakcheck fails any test whose captured output or log holds a test secret;
#: unprivileged runs checks as a user that file modes stop (the suite runs as root).
pytest_plugins = ("tests.leakcheck", "tests.unprivileged")

#: not a module of the suite: Python runs it at a test daemon's start-up (and
#: --doctest-modules would import it under the name of the interpreter's own sitecustomize)
collect_ignore_glob = ["support/daemon_site/*"]


@pytest.fixture(scope="session")
def emulator_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    with suite_emulator(tmp_path_factory.mktemp("emulator")) as running:
        yield running


@pytest.fixture
def emulator(emulator_session: RunningEmulator) -> RunningEmulator:
    """The session's emulator, wiped: no objects, no requests, default knobs and users."""
    emulator_session.reset()
    return emulator_session


@pytest.fixture(scope="session")
def emulator_guide_session(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningEmulator]:
    """An emulator that does only what the vendor guide documents (``--profile guide``)."""
    with suite_emulator(tmp_path_factory.mktemp("emulator-guide"), "guide") as running:
        yield running


@pytest.fixture
def emulator_guide(emulator_guide_session: RunningEmulator) -> RunningEmulator:
    """The session's guide-profile emulator, wiped as ``emulator`` is."""
    emulator_guide_session.reset()
    return emulator_guide_session


@pytest.fixture
def diva(emulator: RunningEmulator) -> Iterator[Login]:
    """``diva("operator")`` logs in as that test user of the (freshly reset) emulator."""
    with logins(emulator.url) as login:
        yield login


@pytest.fixture
def deployment(
    emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    """ingest deployed against the session emulator (``tests/support/deployment.py``)."""
    monkeypatch.setenv(DIVA_PASSWORD_ENV, "operator")
    with deployed(emulator, tmp_path) as dep:
        yield dep


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    """A realistic ledger for the operator CLI tests (``tests/support/ledgers.py``)."""
    return build(tmp_path)
