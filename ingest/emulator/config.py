"""The emulator's configuration, and parsing of its ``--server``, ``--media``, ``--user`` flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .auth import DEFAULT_USERS, ROLES
from .faults import Knobs

__all__ = ["MEDIA_KINDS", "EmulatorConfig", "parse_media", "parse_server", "parse_user"]

#: ``--media NAME:KIND`` kinds: disk arrays are listed by ``GET /arrays``, tapes by ``/groups``.
MEDIA_KINDS = {"disk": "disk", "array": "disk", "tape": "tape", "group": "tape"}


@dataclass
class EmulatorConfig:
    """Everything ``ingest emulator`` is told on its command line."""

    state: Path
    host: str = "127.0.0.1"
    port: int = 8765
    servers: dict[str, Path] = field(default_factory=dict)
    #: media name -> "disk" or "tape"
    media: dict[str, str] = field(default_factory=lambda: {"default": "disk"})
    users: list[tuple[str, str, str]] = field(default_factory=lambda: list(DEFAULT_USERS))
    certfile: Path | None = None
    keyfile: Path | None = None
    knobs: Knobs = field(default_factory=Knobs)
    seed: int | None = None
    workers: int = 4
    ready_file: Path | None = None
    #: "lenient" or "guide", see :mod:`.profiles`
    profile: str = "lenient"
    #: a loopback URL told of each archive call before it is taken, see :mod:`.hooks`
    archive_hook: str | None = None

    @property
    def db_path(self) -> Path:
        return self.state / "emulator.db"

    def media_dir(self, media: str) -> Path:
        return self.state / "media" / media

    @property
    def scheme(self) -> str:
        return "https" if self.certfile else "http"


def parse_server(spec: str) -> tuple[str, Path]:
    """``NAME=DIR`` -> (name, absolute dir); ValueError when malformed or not a folder."""
    name, sep, folder = spec.partition("=")
    if not sep or not name or not folder:
        raise ValueError(f"{spec!r}: expected NAME=DIR")
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise ValueError(f"{spec!r}: {path} is not a folder")
    return name, path


def parse_media(spec: str) -> tuple[str, str]:
    """``NAME`` (a disk array) or ``NAME:disk|array|tape|group`` -> (name, "disk"|"tape")."""
    name, kind = spec, "disk"
    head, sep, tail = spec.rpartition(":")
    if sep and tail.lower() in MEDIA_KINDS:
        name, kind = head, MEDIA_KINDS[tail.lower()]
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"{spec!r}: a media name must be non-empty and contain no slashes")
    return name, kind


def parse_user(spec: str) -> tuple[str, str, str]:
    """``NAME:PASSWORD:ROLE`` (the password may contain colons)."""
    name, sep1, rest = spec.partition(":")
    password, sep2, role = rest.rpartition(":")
    if not (sep1 and sep2 and name):
        raise ValueError("expected NAME:PASSWORD:ROLE")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    return name, password, role
