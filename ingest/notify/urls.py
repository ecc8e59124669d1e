"""Apprise URLs as secrets: checked without being echoed, shown without their credentials.

A notification URL often carries a credential: a mail password (``mailto://bob:PW@host``),
a webhook's token in its path (``slack://T.../B.../TOKEN``), a key in its query. Like the
DIVA password, none may reach a log line or a message. So:

- :func:`shown` is how a URL appears anywhere: Apprise's own privacy form (passwords as
  ``****``, tokens cut to their first and last character), without its query;
- Apprise's logger, which names URLs when it cannot parse one, is kept quiet while a URL
  is checked, and while sending passes through :class:`Scrub`, which replaces every
  credential-like part of the configured URLs with ``***``.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import apprise

__all__ = ["Scrub", "secrets_of", "shown", "url_problem"]

#: a path segment or query value this long may be a token (shorter ones are names: "hook")
_TOKEN_MIN_CHARS = 8

_APPRISE_LOG = logging.getLogger("apprise")


@contextmanager
def _apprise_silent() -> Iterator[None]:
    # Apprise logs an unparseable URL whole, at ERROR: it must not reach the log.
    was = _APPRISE_LOG.disabled
    _APPRISE_LOG.disabled = True
    try:
        yield
    finally:
        _APPRISE_LOG.disabled = was


def url_problem(url: str) -> str | None:
    """Why Apprise cannot send to ``url`` (never quoting it), or None when it can.

    >>> url_problem("json://127.0.0.1:9000/hook") is None
    True
    >>> url_problem("foo://user:secret@host")
    "Apprise knows no service 'foo://' (see Apprise's list of services)"
    """
    scheme = url.partition("://")[0] if "://" in url else ""
    if not scheme:
        return "is not a URL (SERVICE://...), e.g. mailto://user:password@example.com"
    with _apprise_silent():
        plugin = apprise.Apprise.instantiate(url)
    if plugin is not None:
        return None
    if not _known(scheme):
        return f"Apprise knows no service {scheme + '://'!r} (see Apprise's list of services)"
    return f"Apprise cannot read this {scheme}:// URL (a part is missing or malformed)"


def _known(scheme: str) -> bool:
    with _apprise_silent():
        services = apprise.Apprise().details()["schemas"]
    names: set[str] = set()
    for service in services:
        for key in ("protocols", "secure_protocols"):
            value = service.get(key) or ()
            names.update(n.lower() for n in ((value,) if isinstance(value, str) else value))
    return scheme.lower() in names


def shown(url: str) -> str:
    """``url`` as it may be shown: credentials masked (Apprise's privacy form), no query.

    >>> shown("json://user:s3cret@127.0.0.1:9000/hook?x=1")
    'json://user:****@127.0.0.1:9000/hook'
    """
    with _apprise_silent():
        plugin = apprise.Apprise.instantiate(url)
    if plugin is None:
        return url.partition("://")[0] + "://(unreadable URL)"
    return str(plugin.url(privacy=True)).partition("?")[0]  # type: ignore[no-untyped-call]


def secrets_of(urls: Iterable[str]) -> set[str]:
    """The parts of ``urls`` that may be credentials: user info, long path segments and
    query values (tokens), and the host of a service whose "host" is a token (Slack's).

    >>> sorted(secrets_of(["mailto://bob:pa55word@example.com"]))
    ['pa55word']
    """
    found: set[str] = set()
    for url in urls:
        try:
            parts = urllib.parse.urlsplit(url)
            password = parts.password
        except ValueError:
            continue
        if password:
            found.add(urllib.parse.unquote(password))
        candidates = [*parts.path.split("/"), *(v for _, v in urllib.parse.parse_qsl(parts.query))]
        host = parts.hostname or ""
        if host and "." not in host and ":" not in host and host != "localhost":
            candidates.append(host)  # not an address: a token where the host would be
        found.update(c for c in candidates if len(c) >= _TOKEN_MIN_CHARS)
    return found


class Scrub(logging.Filter):
    """Replaces the given secrets with ``***`` in every record of the logger it guards."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # longest first: a secret containing another is replaced whole
        self.secrets = sorted(set(secrets), key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for secret in self.secrets:
            message = message.replace(secret, "***")
        record.msg, record.args = message, None
        return True
