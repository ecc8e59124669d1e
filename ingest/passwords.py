"""Passwords from the service config: an environment variable or an owner-only file.

``[diva]`` and ``[ledger]`` both take ``password_env`` (a variable's name) or
``password_file`` (a file readable only by its owner). The password is read when needed,
never stored in the config object, and no message here ever holds it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ConfigError

__all__ = ["password_file_problem", "read_password"]


def password_file_problem(path: Path, *, must_exist: bool) -> str | None:
    """What makes ``path`` unfit to hold a password (group or world access), or None."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{path} does not exist" if must_exist else None
    except OSError as exc:
        return f"cannot read {path}: {type(exc).__name__}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a file"
    if st.st_mode & 0o077:
        return (
            f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"it must be readable only by its owner: chmod 600 {path}"
        )
    return None


def read_password(section: str, env: str | None, file: Path | None) -> str | None:
    """The password of ``[section]``, read now from the env var ``env`` or from ``file``
    (None when neither is set). Raises :class:`ConfigError` naming the variable or file,
    never the password, when it cannot be had."""
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(
                f"[{section}] password_env: the environment variable {env} is not set"
            )
        return value
    if file is None:
        return None
    problem = password_file_problem(file, must_exist=True)
    if problem:
        raise ConfigError(f"[{section}] password_file: {problem}")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"[{section}] password_file: cannot read {file}: {type(exc).__name__}"
        ) from None
    # An editor's trailing newline is not part of the password.
    return text.rstrip("\r\n")
