"""The service config's shape: each ``ingest.toml`` section's keys, types, defaults and checks.

:data:`SECTIONS` is the table :func:`ingest.config.load_config` checks a config file
against (every problem at once, with a did-you-mean for a misspelt key); the checks here
say what a value must be, never echoing a secret. Building the config's dataclasses from
the checked values is :mod:`ingest.config`'s.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Any

from . import defaults
from .ledgerurl import check_url
from .tomlcheck import Field, did_you_mean

__all__ = ["SECTIONS", "is_loopback", "split_listen"]


def _fields(*fields: Field) -> dict[str, Field]:
    """A section's fields by name."""
    return {f.name: f for f in fields}


def _positive(value: float) -> str | None:
    return None if math.isfinite(value) and value > 0 else f"must be > 0, got {value}"


def _at_least(minimum: int) -> Any:
    def check(value: int) -> str | None:
        return None if value >= minimum else f"must be >= {minimum}, got {value}"

    return check


def _poll(value: float) -> str | None:
    if math.isfinite(value) and value >= defaults.DIVA_POLL_SECONDS_MIN:
        return None
    return f"must be >= {defaults.DIVA_POLL_SECONDS_MIN:g}, got {value}"


def _url(value: str) -> str | None:
    if value.startswith(("http://", "https://")) and len(value) > len("https://"):
        return None
    return f"must be an http:// or https:// URL, got {value!r}"


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _scheme(value: str) -> str | None:
    if value in ("raw", "bearer"):
        return None
    return f"must be 'raw' or 'bearer', got {value!r}" + did_you_mean(value, ["raw", "bearer"])


def _info_path(value: str) -> str | None:
    if value in ("/object/info", "/objects/info"):
        return None
    return (
        "must be '/object/info' (the guide's) or '/objects/info' (seen in production), "
        f"got {value!r}" + did_you_mean(value, ["/object/info", "/objects/info"])
    )


def _session(value: float) -> str | None:
    low, high = defaults.DIVA_SESSION_MINUTES_MIN, defaults.DIVA_SESSION_MINUTES_MAX
    if low <= value <= high:
        return None
    return f"must be {low}..{high} minutes (DIVA's range), got {value!r}"


def _ledger_url(value: str) -> str | None:
    return check_url(value, defaults.LEDGER_URL)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or ``localhost``) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9180"`` or ``"[::1]:9180"`` as (host, port); ValueError saying why not.

    >>> split_listen("[::1]:0")
    ('::1', 0)
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"must be HOST:PORT with a port 0..65535 (e.g. {defaults.HTTP_LISTEN_EXAMPLE!r}), "
            f"got {value!r}"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets ('[::1]:9180'), got {value!r}")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"the host must be an IP address or 'localhost' (a name could resolve to "
                f"anything), got {host!r}"
            ) from None
    return host, int(port)


def _listen(value: str) -> str | None:
    try:
        split_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


def _token(value: str) -> str | None:
    # Never echo the value: it is a secret.
    if len(value) >= defaults.HTTP_TOKEN_MIN_CHARS and value.strip() == value:
        return None
    return (
        f"must be at least {defaults.HTTP_TOKEN_MIN_CHARS} characters, without leading or "
        "trailing spaces (e.g. the output of `openssl rand -hex 24`)"
    )


def _not_negative(value: float) -> str | None:
    return None if value >= 0 and math.isfinite(value) else "must be 0 or more"


def _events(value: tuple[str, ...]) -> str | None:
    unknown = [v for v in value if v.lower() not in defaults.NOTIFY_EVENTS]
    if unknown:
        near = did_you_mean(unknown[0].lower(), defaults.NOTIFY_EVENTS)
        return f"unknown event {unknown[0]!r}{near}: the events are " + ", ".join(
            defaults.NOTIFY_EVENTS
        )
    return None


SECTIONS: dict[str, dict[str, Field]] = {
    "diva": _fields(
        Field("url", "str", check=_url),
        Field("data_url", "str", None, check=_url),
        Field("manager_url", "str", None, check=_url),
        Field("username", "str", check=_non_empty),
        Field("password_env", "str", None, check=_non_empty),
        Field("password_file", "str", None, check=_non_empty),
        Field("auth_scheme", "str", defaults.DIVA_AUTH_SCHEME, check=_scheme),
        Field("verify", "bool_or_str", defaults.DIVA_VERIFY),
        Field("timeout_seconds", "number", defaults.DIVA_TIMEOUT_SECONDS, check=_positive),
        Field("poll_seconds", "number", defaults.DIVA_POLL_SECONDS, check=_poll),
        Field("max_in_flight", "int", defaults.DIVA_MAX_IN_FLIGHT, check=_at_least(1)),
        Field("max_attempts", "int", defaults.DIVA_MAX_ATTEMPTS, check=_at_least(1)),
        Field("object_info_path", "str", None, check=_info_path),
        Field("session_minutes", "number", defaults.DIVA_SESSION_MINUTES, check=_session),
        Field(
            "stuck_after_seconds",
            "number",
            defaults.DIVA_STUCK_AFTER_SECONDS,
            check=_positive,
        ),
    ),
    "ledger": _fields(
        Field("url", "str", defaults.LEDGER_URL, check=_ledger_url),
        Field("password_env", "str", None, check=_non_empty),
        Field("password_file", "str", None, check=_non_empty),
        Field("keep_days", "number", None, check=_positive),
        Field("keep_export_dir", "str", None, check=_non_empty),
    ),
    "cluster": _fields(
        Field("node", "str", None, check=_non_empty),
        Field("lease_seconds", "number", defaults.CLUSTER_LEASE_SECONDS, check=_positive),
    ),
    "rules": _fields(
        Field("paths", "str_list", defaults.RULES_PATHS),
        Field("confirm_new_matches", "bool", defaults.RULES_CONFIRM_NEW_MATCHES),
    ),
    "engine": _fields(
        Field("rescan_seconds", "number", defaults.ENGINE_RESCAN_SECONDS, check=_positive),
        Field("reload_seconds", "number", defaults.ENGINE_RELOAD_SECONDS, check=_positive),
        Field("watch_poll_seconds", "number", defaults.ENGINE_WATCH_POLL_SECONDS, check=_positive),
        Field(
            "hash_mb_per_second",
            "number",
            defaults.ENGINE_HASH_MB_PER_SECOND,
            check=lambda v: None if v >= 0 else f"must be >= 0 (0: no limit), got {v}",
        ),
    ),
    "http": _fields(
        Field("listen", "str", None, check=_listen),
        Field("token", "str", None, check=_token),
        Field("token_env", "str", None, check=_non_empty),
    ),
    "notify": _fields(
        Field("urls", "str_list"),
        Field("events", "str_list", defaults.NOTIFY_EVENTS, check=_events),
        Field("digest_seconds", "number", defaults.NOTIFY_DIGEST_SECONDS, check=_not_negative),
        Field(
            "outage_after_seconds",
            "number",
            defaults.NOTIFY_OUTAGE_AFTER_SECONDS,
            check=_not_negative,
        ),
    ),
}
