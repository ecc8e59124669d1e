"""Checks that need an unprivileged user, in a suite that CI runs as root; and the rule for
tests that cannot run somewhere: skip on a developer's machine, fail in CI.

Root reads every file whatever its mode, so "this user cannot read that folder" can only be
tested as someone else. As root, ``Unprivileged`` runs ``python -m ingest ...`` as
``nobody`` (uid and gid 65534, no supplementary groups) in a folder of its own that
``nobody`` owns; as any other user, it runs it as that user, who is unprivileged already.

Loaded as a plugin by ``tests/conftest.py`` (the ``unprivileged`` fixture).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

import pytest

NOBODY = 65534
ROOT = Path(__file__).resolve().parent.parent


def in_ci() -> bool:
    """Whether this run is CI's (``CI`` set, as CI services and ``.ci/run`` do)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def cannot_run_here(reason: str) -> NoReturn:
    """A test that cannot run on this machine: skipped (``-ra`` lists it), but failed in
    CI, where every test that guards a promise must run."""
    if in_ci():
        pytest.fail(f"cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _drop() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _preexec() -> Callable[[], None] | None:
    return _drop if os.geteuid() == 0 else None


@functools.cache
def _python() -> tuple[str, dict[str, str]] | str:
    """An interpreter the unprivileged user can run, with the env that lets it import this
    checkout and its dependencies; or why there is none.

    The venv's own interpreter comes first. A venv made from an interpreter in a private
    home folder (pyenv under /root, say) cannot be run by ``nobody``: then the same
    Python version installed system-wide is tried, with the venv's packages on its path
    (compiled ones are built for that version's ABI, shared by its patch releases)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    paths = sysconfig.get_paths()
    path = os.pathsep.join(dict.fromkeys([str(ROOT), paths["purelib"], paths["platlib"]]))
    candidates: list[tuple[str, dict[str, str]]] = [(sys.executable, {})]
    for folder in ("/usr/bin", "/usr/local/bin"):
        candidates.append((f"{folder}/{version}", {"PYTHONPATH": path}))
    tried = []
    for python, env in candidates:
        try:
            done = subprocess.run(
                [python, "-c", "import ingest.cli, httpx, sqlmodel, watchdog"],
                env={**os.environ, **env}, preexec_fn=_preexec(), capture_output=True,
                text=True, timeout=60, check=False,
            )  # fmt: skip
        except OSError as exc:
            tried.append(f"{python}: {exc}")
            continue
        if done.returncode == 0:
            return python, env
        tried.append(f"{python}: {done.stderr.strip().splitlines()[-1:]}")
        if python != sys.executable and len(candidates) == 3:
            # The checkout itself may sit where that user cannot go (a CI clone under a
            # private folder): give it a readable copy of the package and its dependencies.
            copy = _readable_copy(paths["purelib"], paths["platlib"])
            candidates.append((python, {"PYTHONPATH": copy}))
    return "no Python the unprivileged user can run with this checkout: " + "; ".join(tried)


def _readable_copy(*site: str) -> str:
    """The ``ingest`` package and the venv's packages copied where anyone may read them;
    the PYTHONPATH that finds them."""
    base = Path(tempfile.mkdtemp(prefix="ingest-unprivileged-"))
    base.chmod(0o755)
    shutil.copytree(ROOT / "ingest", base / "ingest")
    folders = list(dict.fromkeys(site))
    for i, folder in enumerate(folders):
        shutil.copytree(folder, base / f"site{i}", symlinks=True)
    for folder, dirs, files in os.walk(base):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755)  # noqa: S103 - for nobody to read
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o644)
    return os.pathsep.join([str(base), *(str(base / f"site{i}") for i in range(len(folders)))])


class Unprivileged:
    """A folder the unprivileged user owns (``root``), and ``ingest`` run as that user."""

    def __init__(self, root: Path, python: str, env: dict[str, str]) -> None:
        self.root = root
        self.python = python
        self.env = env

    def give(self, path: Path) -> None:
        """Hand ``path`` and everything under it to the unprivileged user (as root: chown;
        as anyone else it is theirs already)."""
        if os.geteuid() != 0:
            return
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        if path.is_dir() and not path.is_symlink():
            for folder, dirs, files in os.walk(path):
                for name in dirs + files:
                    os.chown(os.path.join(folder, name), NOBODY, NOBODY, follow_symlinks=False)

    def command(self, *args: str) -> list[str]:
        return [self.python, "-m", "ingest", *args]

    def run(self, *args: str, env: dict[str, str], timeout: float = 120) -> Any:
        """``ingest ARGS`` as the unprivileged user: the CompletedProcess (text)."""
        return subprocess.run(
            self.command(*args), env={**os.environ, **self.env, **env}, cwd=self.root,
            preexec_fn=_preexec(), capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def popen(self, *args: str, env: dict[str, str], log: IO[bytes]) -> Any:
        """``ingest ARGS`` as the unprivileged user, in the background, output to ``log``."""
        return subprocess.Popen(
            self.command(*args), env={**os.environ, **self.env, **env}, cwd=self.root,
            preexec_fn=_preexec(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


@pytest.fixture
def unprivileged() -> Iterator[Unprivileged]:
    """Runs ``ingest`` as an unprivileged user; its folder is not under pytest's own
    temporary folder, which is private to root."""
    found = _python()
    if isinstance(found, str):
        cannot_run_here(found)
    python, env = found
    root = Path(tempfile.mkdtemp(prefix="ingest-unprivileged-"))
    root.chmod(0o755)
    made = Unprivileged(root, python, env)
    made.give(root)
    try:
        yield made
    finally:
        # Whatever modes the test left, root (or the owner) can remove it all.
        for folder, dirs, _files in os.walk(root):
            for name in dirs:
                os.chmod(os.path.join(folder, name), 0o700)
        shutil.rmtree(root, ignore_errors=True)
