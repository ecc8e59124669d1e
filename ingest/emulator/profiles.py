"""The emulator's profiles: how closely it sticks to what the vendor's guide documents.

- ``lenient`` (the default) also accepts what production clients were seen doing: the
  ``/manager/objects/info`` route, filters and sorting on ``GET /requests``, an archive
  without ``sourceServer`` (the first server), priority 0.
- ``guide`` does only what DIVA's REST API programmer's guide (release 9.0) documents, so a
  client can be proven fail-safe against a DIVA that offers no more: the routes of its
  "Main DIVA API Calls", "Roles" and "Data Service API" sections, priority 1-100 or -1, a
  required ``sourceServer``, a request list that only pages, and "PARTIALLY_COMPLETED"
  for a partially aborted request ("DIVA API Workflows").

Where the guide is silent the guide profile guesses what a Spring Boot server, which DIVA's
REST gateway is, plausibly answers:

- A route it does not serve gets Spring's default error body and no DIVA status code:
  ``{"timestamp", "status": 404, "error": "Not Found", "path"}`` (405 "Method Not Allowed"
  for a served path with another method).
- An invalid, expired, logged-out or missing token is refused by the security filter
  before any DIVA code runs: HTTP 403 with the same Spring body (``"error": "Forbidden"``).
  A role refusal passes that filter and is DIVA's own: HTTP 403 with the DIVA body and
  status 1035. So the two 403s are told apart by the body (a DIVA ``statusCode`` or none),
  as the guide's "Authentication Token Workflow" and "Roles" sections suggest but do not
  spell out.

This module imports nothing heavy: the command line reads :data:`PROFILES` for its choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

__all__ = ["GUIDE", "GUIDE_ROUTES", "LENIENT", "PROFILES", "Profile", "profile", "spring_error"]

#: (method, path template) of every DIVA route the guide names; templates are FastAPI's.
GUIDE_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "/dataservice/users/login"),
        ("POST", "/dataservice/users/logout"),
        ("GET", "/dataservice/profile"),
        ("GET", "/dataservice/users"),
        ("POST", "/dataservice/users"),
        ("DELETE", "/dataservice/users"),
        ("GET", "/dataservice/roles"),
        ("GET", "/manager/groups"),
        ("GET", "/manager/arrays"),
        ("GET", "/manager/servers"),
        ("GET", "/manager/actors"),
        ("GET", "/manager/object/info"),
        ("GET", "/manager/objects/list"),
        ("GET", "/manager/requests"),
        ("GET", "/manager/requests/{requestId}"),
        ("POST", "/manager/requests/archive"),
        ("POST", "/manager/requests/cancel"),
        ("POST", "/manager/requests/delete"),
        ("POST", "/manager/requests/partialRestore"),
        ("POST", "/manager/requests/restore"),
        ("GET", "/manager/versions"),
    }
)

#: ``GET /requests`` page size when none is asked for, and the largest served (guide profile).
PAGE_SIZE = 20
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class Profile:
    """One profile's answers to the questions where lenient and guide differ."""

    name: str
    #: DIVA routes served (under /dataservice and /manager); None: every one the emulator has
    routes: frozenset[tuple[str, str]] | None
    #: an archive with no ``sourceServer`` uses the first ``--server`` (else 1018)
    default_source_server: bool
    #: lowest ``priority`` accepted besides -1 (the default)
    min_priority: int
    #: unknown routes and bad tokens answer Spring's error body (else a DIVA body)
    spring_errors: bool
    #: ``GET /requests`` honours filters and sorting (else it only pages, oldest first)
    list_filters: bool
    #: ``stateName`` and ``stateDescription`` of a partially aborted request (code 11)
    partial_state: tuple[str, str]


LENIENT = Profile(
    name="lenient",
    routes=None,
    default_source_server=True,
    min_priority=0,
    spring_errors=False,
    list_filters=True,
    partial_state=("DIVA_PARTIALLY_ABORTED", "Partially aborted"),
)

GUIDE = Profile(
    name="guide",
    routes=GUIDE_ROUTES,
    default_source_server=False,
    min_priority=1,
    spring_errors=True,
    list_filters=False,
    partial_state=("DIVA_PARTIALLY_COMPLETED", "Partially completed"),
)

PROFILES: dict[str, Profile] = {p.name: p for p in (LENIENT, GUIDE)}


def profile(name: str) -> Profile:
    """The profile called ``name``; ValueError if there is none."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, not {name!r}") from None


def spring_error(status: int, path: str) -> dict[str, Any]:
    """Spring Boot's default error body (no ``message``, as Spring Boot 2.3+ leaves it out)."""
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "status": status,
        "error": HTTPStatus(status).phrase,
        "path": path,
    }
