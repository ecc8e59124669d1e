"""ingest: a watch-folder ingest daemon for Telestream DIVA archives.

The data flows watch → settle → rules → ledger → DIVA client → tracking; each step is a
module named for it, and the engine package (``ingest.engine``) runs them, one ledger
transaction per turn. The public surface is listed in ``__all__``.
"""

from __future__ import annotations

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

__version__ = "0.1.0"

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
