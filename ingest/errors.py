"""Every error ingest raises, in one tree under :class:`IngestError`.

Each class carries the process exit code the CLI turns it into (in one place,
``ingest.cli``), and the context an operator needs to act: the path, the rule,
the DIVA status code. Messages never contain passwords or tokens.

::

    IngestError (1)
    ├── UsageError (2)                 a command line that makes no sense
    ├── ConfigError (3)                service config unreadable or invalid
    │   └── RulesError (3)             rule files invalid (carries every problem)
    ├── DivaError (1)                  anything DIVA-related
    │   ├── DivaTransientError (4)     worth retrying later
    │   │   ├── DivaUnavailable (4)    connection refused, DNS, TLS, timeout
    │   │   ├── DivaServerError (4)    HTTP 5xx
    │   │   └── DivaStatusTransient (4) a status naming a passing condition (1002, 1031...)
    │   │       └── DivaBusy (4)       1032: the manager's queue is full
    │   ├── DivaAuthError (5)          login refused, or token refused after re-login
    │   ├── DivaRefused (6)            a permanent refusal with a DIVA status code
    │   │   ├── DivaAccessDenied (6)   1035: the user's role may not do this
    │   │   ├── DivaObjectExists (6)   1016 / 1040: the object exists or is being archived
    │   │   └── DivaNotFound (6)       1009 / 1011: DIVA's own word that it has none
    │   └── DivaProtocolError (7)      an answer that is not what DIVA sends (HTML, bad JSON)
    │       ├── DivaNoRoute (7)        HTTP 404 without a DIVA status: no such route
    │       └── DivaUnconfirmed (7)    a list that could not be read to its end
    ├── LedgerError (8)                the ledger cannot be opened or written
    └── NotFoundError (9)              a ledger row or path the operator named does not exist
"""

from __future__ import annotations

__all__ = [
    "CANNOT_CONFIRM",
    "ConfigError",
    "DivaAccessDenied",
    "DivaAuthError",
    "DivaBusy",
    "DivaError",
    "DivaNoRoute",
    "DivaNotFound",
    "DivaObjectExists",
    "DivaProtocolError",
    "DivaRefused",
    "DivaServerError",
    "DivaStatusTransient",
    "DivaTransientError",
    "DivaUnavailable",
    "DivaUnconfirmed",
    "IngestError",
    "LedgerError",
    "NotFoundError",
    "RulesError",
    "UsageError",
    "exit_codes",
]


class IngestError(Exception):
    """Base of every error ingest raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(IngestError):
    """The command line asks for something that cannot be done."""

    exit_code = 2


class ConfigError(IngestError):
    """The service config is missing, unreadable or invalid."""

    exit_code = 3

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class RulesError(ConfigError):
    """One or more rule files are invalid; ``problems`` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in the rules"
        super().__init__(head + ":\n  " + "\n  ".join(self.problems))


class DivaError(IngestError):
    """Something went wrong talking to DIVA.

    ``status_code``/``status_name`` are DIVA's (e.g. 1016, ``DIVA_ERR_OBJECT_ALREADY_EXISTS``)
    when DIVA gave them; ``http_status`` is the HTTP status when there was an answer.
    """

    exit_code = 1
    transient = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        status_name: str | None = None,
        http_status: int | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.status_name = status_name
        self.http_status = http_status
        self.url = url


class DivaTransientError(DivaError):
    """A failure that may pass: try again later, with backoff."""

    exit_code = 4
    transient = True


class DivaUnavailable(DivaTransientError):
    """DIVA could not be reached: connection refused, DNS, TLS, timeout."""


class DivaServerError(DivaTransientError):
    """DIVA answered with an HTTP 5xx."""


class DivaStatusTransient(DivaTransientError):
    """DIVA refused with a status code that names a condition that passes (1002 internal
    error, 1003 no archive system, 1031 object in use...): try again later."""


class DivaBusy(DivaStatusTransient):
    """DIVA's queue is full (1032, CANNOT_ACCEPT_MORE_REQUESTS): back off."""


class DivaAuthError(DivaError):
    """DIVA refused the credentials, or refused a fresh token."""

    exit_code = 5


class DivaRefused(DivaError):
    """DIVA refused the call for good; retrying the same call will not help."""

    exit_code = 6


class DivaAccessDenied(DivaRefused):
    """1035: the DIVA user's role does not allow this call."""


class DivaObjectExists(DivaRefused):
    """1016 or 1040: the object already exists, or is being archived right now."""


class DivaNotFound(DivaRefused):
    """DIVA's own word that the object or request does not exist (1009, 1011).

    Only a DIVA status says so: a bare HTTP 404 is :class:`DivaNoRoute`, which proves
    nothing about the object."""


class DivaProtocolError(DivaError):
    """DIVA's answer was not what DIVA sends: HTML, truncated JSON, a missing field."""

    exit_code = 7


class DivaNoRoute(DivaProtocolError):
    """HTTP 404 with no DIVA status code: the server has no such route (a DIVA version or
    gateway that names the call differently), which says nothing about the object."""


#: How a drop FAILED for want of DIVA's word begins its error (``ingest retry`` looks for it).
CANNOT_CONFIRM = "cannot confirm with DIVA"


class DivaUnconfirmed(DivaProtocolError):
    """A question DIVA's answers could not settle: a request list that did not end within
    the page limit, or entries that do not say which object they are for."""


class LedgerError(IngestError):
    """The ledger cannot be opened, migrated or written."""

    exit_code = 8


class NotFoundError(IngestError):
    """A ledger row or path the operator named does not exist."""

    exit_code = 9


def exit_codes() -> dict[int, str]:
    """The exit codes of the ``ingest`` command, for the README and ``--help``.

    >>> exit_codes()[3]
    'configuration or rules invalid'
    """
    return {
        0: "success (for `status`: healthy)",
        1: "failure (for `status`: something failed or a watcher is down)",
        2: "usage: bad command line",
        3: "configuration or rules invalid",
        4: "DIVA unreachable, busy or failing (transient)",
        5: "DIVA refused the credentials",
        6: "DIVA refused the request (permanent, with its status code)",
        7: "DIVA answered something that is not DIVA's protocol",
        8: "ledger cannot be opened or written",
        9: "not found (ledger row or path)",
    }
