"""ingest: a watch-folder ingest daemon for Telestream DIVA archives.

The data flows watch → settle → rules → ledger → DIVA client → tracking; each step is a
module named for it, and the engine package (``ingest.engine``) runs them, one ledger
transaction per turn. The public surface is listed in ``__all__``.
"""

from __future__ import annotations

import functools

from .errors import (
    ConfigError,
    DivaAccessDenied,
    DivaAuthError,
    DivaBusy,
    DivaError,
    DivaNotFound,
    DivaObjectExists,
    DivaProtocolError,
    DivaRefused,
    DivaServerError,
    DivaTransientError,
    DivaUnavailable,
    IngestError,
    LedgerError,
    NotFoundError,
    RulesError,
    UsageError,
)
from .protocol import RequestState

__all__ = [
    "ConfigError",
    "DivaAccessDenied",
    "DivaAuthError",
    "DivaBusy",
    "DivaError",
    "DivaNotFound",
    "DivaObjectExists",
    "DivaProtocolError",
    "DivaRefused",
    "DivaServerError",
    "DivaTransientError",
    "DivaUnavailable",
    "IngestError",
    "LedgerError",
    "NotFoundError",
    "RequestState",
    "RulesError",
    "UsageError",
    "__version__",
]


def __getattr__(name: str) -> str:
    # The version is written once, in pyproject.toml, and read from the package's
    # metadata on first use: importing importlib.metadata costs every command a few
    # hundredths of a second, and only --version and the emulator ask.
    if name == "__version__":
        return _version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("ingest")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"  # a source tree that was never installed has no metadata
