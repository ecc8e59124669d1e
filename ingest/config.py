"""The service config, ``ingest.toml``: how to reach DIVA, where the ledger and rules are.

Found by :func:`find_config` (``--config`` flag, then env ``INGEST_CONFIG``, then
``./ingest.toml``), loaded and checked by :func:`load_config`: every problem at once,
each naming file, line, section and key, raised as one :class:`~ingest.errors.ConfigError`.
Relative paths in the file (ledger, rules, CA bundle) are relative to the file's folder.
Each section's keys, defaults and checks are in :mod:`ingest.configspec`.

The DIVA password is never stored: :meth:`DivaConfig.password` reads it from the
environment or the password file each time it is asked for, so it cannot leak through a
repr, a log line or an exception.

>>> config = load_config(find_config(None))  # doctest: +SKIP
>>> config.diva.manager_url  # doctest: +SKIP
'https://diva.example:8765/manager'
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import defaults
from .configspec import SECTIONS, is_loopback, split_listen
from .errors import ConfigError
from .ledgerurl import is_postgresql
from .passwords import password_file_problem, read_password
from .tomlcheck import Problem, TableLines, check_table, did_you_mean, parse_toml

__all__ = [
    "ClusterConfig",
    "DivaConfig",
    "EngineConfig",
    "HttpConfig",
    "LedgerConfig",
    "NotifyConfig",
    "RulesConfig",
    "ServiceConfig",
    "find_config",
    "load_config",
    "split_listen",
]

log = logging.getLogger("ingest.config")


@dataclass(frozen=True)
class DivaConfig:
    """``[diva]``: the gateway, the credentials (by reference), TLS and pacing."""

    url: str
    username: str
    data_url: str
    manager_url: str
    password_env: str | None = None
    password_file: Path | None = None
    auth_scheme: Literal["raw", "bearer"] = "raw"
    #: True / False, or the CA bundle to verify DIVA's certificate with
    verify: bool | Path = True
    timeout_seconds: float = defaults.DIVA_TIMEOUT_SECONDS
    poll_seconds: float = defaults.DIVA_POLL_SECONDS
    max_in_flight: int = defaults.DIVA_MAX_IN_FLIGHT
    max_attempts: int = defaults.DIVA_MAX_ATTEMPTS
    #: pin the object-info route (``/object/info`` or ``/objects/info``); None: find out
    object_info_path: str | None = None
    #: the DIVA user's session timeout, minutes: an older token is expired
    session_minutes: float = defaults.DIVA_SESSION_MINUTES
    #: a request DIVA keeps waiting longer than this is "stuck" in ``ingest status``
    stuck_after_seconds: float = defaults.DIVA_STUCK_AFTER_SECONDS

    def password(self) -> str:
        """The DIVA password, read now from the env var or the owner-only password file.

        Raises :class:`ConfigError` (naming the variable or file, never the password)
        when it cannot be had.
        """
        password = read_password("diva", self.password_env, self.password_file)
        if password is None:  # pragma: no cover - the loader requires one of them
            raise ConfigError("[diva]: no password_env or password_file")
        return password


@dataclass(frozen=True)
class LedgerConfig:
    """``[ledger]``: an SQLite file (``url`` with its path made absolute) or a PostgreSQL
    server (see :mod:`ingest.ledgerurl`), whose password comes from the env or a file."""

    url: str = defaults.LEDGER_URL
    password_env: str | None = None
    password_file: Path | None = None
    #: ``keep_days``: the daemon prunes final drops older than this (ingest.prune); off
    #: when None. Each prune's export goes to a new file in ``keep_export_dir``.
    keep_days: float | None = None
    keep_export_dir: Path | None = None

    @property
    def path(self) -> Path | None:
        """The ledger file, or None for an in-memory or a PostgreSQL ledger."""
        if is_postgresql(self.url):
            return None
        rest = self.url.removeprefix("sqlite:///")
        return None if rest == ":memory:" else Path(rest)

    def password(self) -> str | None:
        """The PostgreSQL password, read now (None: none configured, e.g. a trusted peer);
        :class:`ConfigError` names the variable or file, never the password."""
        return read_password("ledger", self.password_env, self.password_file)


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: this node's name and how long its folder leases last (PostgreSQL)."""

    node: str | None = None
    lease_seconds: float = defaults.CLUSTER_LEASE_SECONDS

    def node_name(self) -> str:
        """This node's name: env ``INGEST_NODE``, else ``node``, else the host name."""
        import socket

        return os.environ.get("INGEST_NODE") or self.node or socket.gethostname()


@dataclass(frozen=True)
class RulesConfig:
    """``[rules]``: rule files or folders, absolute."""

    paths: tuple[Path, ...] = ()
    #: hold the drops already present that an edit newly matches until ``ingest rules accept``
    confirm_new_matches: bool = defaults.RULES_CONFIRM_NEW_MATCHES


@dataclass(frozen=True)
class EngineConfig:
    """``[engine]``: the engine's pacing."""

    rescan_seconds: float = defaults.ENGINE_RESCAN_SECONDS
    reload_seconds: float = defaults.ENGINE_RELOAD_SECONDS
    watch_poll_seconds: float = defaults.ENGINE_WATCH_POLL_SECONDS
    #: the rate rules' checksums read files at, MB/s (0: as fast as the disk goes)
    hash_mb_per_second: float = defaults.ENGINE_HASH_MB_PER_SECOND


@dataclass(frozen=True)
class HttpConfig:
    """``[http]``: the status page, API and metrics endpoint (off unless ``listen`` is set).

    The token is kept out of the repr (a log line of the config cannot carry it);
    with ``token_env`` it is read from the environment only when the server starts.
    """

    host: str
    port: int
    token_env: str | None = None
    _token: str | None = field(default=None, repr=False, compare=False)

    @property
    def listen(self) -> str:
        """``host:port`` as given (IPv6 hosts in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def has_token(self) -> bool:
        return self._token is not None or self.token_env is not None

    def token(self) -> str | None:
        """The access token (from ``token``, or the ``token_env`` variable read now), or None."""
        if self._token is not None:
            return self._token
        if self.token_env is None:
            return None
        value = os.environ.get(self.token_env)
        if not value or len(value) < defaults.HTTP_TOKEN_MIN_CHARS:
            raise ConfigError(
                f"[http] token_env: the environment variable {self.token_env} is "
                + ("not set" if not value else f"shorter than {defaults.HTTP_TOKEN_MIN_CHARS}")
            )
        return value


@dataclass(frozen=True)
class NotifyConfig:
    """``[notify]``: where notifications go (Apprise URLs) and what for.

    The URLs may hold credentials (a mail password, a webhook token): they are kept out of
    the repr, and shown only through :func:`ingest.notify.urls.shown`.
    """

    urls: tuple[str, ...] = field(repr=False)
    events: frozenset[str] = frozenset(defaults.NOTIFY_EVENTS)
    digest_seconds: float = defaults.NOTIFY_DIGEST_SECONDS
    outage_after_seconds: float = defaults.NOTIFY_OUTAGE_AFTER_SECONDS


@dataclass(frozen=True)
class ServiceConfig:
    """The whole service config. ``path`` is None when no file was found (all defaults)."""

    path: Path | None
    base_dir: Path
    diva: DivaConfig | None
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    #: ``[http]``, or None when the endpoint is off
    http: HttpConfig | None = None
    #: ``[notify]``, or None when no notification is sent
    notify: NotifyConfig | None = None
    warnings: tuple[Problem, ...] = ()

    def require_diva(self) -> DivaConfig:
        """``[diva]``, or :class:`ConfigError` saying it is missing (for talking to DIVA)."""
        if self.diva is None:
            where = self.path if self.path is not None else "the service config"
            raise ConfigError(f"{where}: no [diva] section: DIVA's url and username are needed")
        return self.diva


def find_config(flag: str | Path | None, *, required: bool = False) -> Path | None:
    """The config file: the ``--config`` flag, else env ``INGEST_CONFIG``, else ``./ingest.toml``.

    A file named by the flag or the env var must exist (:class:`ConfigError`); the
    implicit ``./ingest.toml`` may be absent (None), unless ``required``.
    """
    env = os.environ.get(defaults.CONFIG_ENV)
    for given, origin in ((flag, "--config"), (env, defaults.CONFIG_ENV)):
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                what = "does not exist" if not path.exists() else "is not a file"
                raise ConfigError(f"config file {what} (from {origin})", path=str(path))
            return path
    path = Path(defaults.CONFIG_FILE_NAME)
    if path.is_file():
        return path
    if required:
        raise ConfigError(
            f"no service config: give --config PATH, set {defaults.CONFIG_ENV}, "
            f"or create ./{defaults.CONFIG_FILE_NAME}"
        )
    return None


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def load_config(path: Path | str | None, *, warn: bool = True) -> ServiceConfig:
    """Load and check the service config at ``path`` (None: every default, no ``[diva]``).

    Raises :class:`ConfigError` naming the file and listing every problem. Warnings (a
    poll interval below the guide's 10 s, TLS verification off) are logged and kept in
    ``warnings``.
    """
    if path is None:
        base = Path.cwd()
        paths = tuple(_resolve(base, p) for p in defaults.RULES_PATHS)
        return ServiceConfig(None, base, None, rules=RulesConfig(paths))
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=str(path)) from None
    base = Path(os.path.abspath(path)).parent
    doc, syntax = parse_toml(path, text)
    if doc is None:
        assert syntax is not None
        raise ConfigError(str(syntax))
    lines = TableLines(text)
    headers = {name: next(iter(lines.headers(rf"^\s*\[\s*{name}\s*\]")), None) for name in doc}

    def line_of(section: str, key: str | None) -> int | None:
        header = headers.get(section)
        if header is None:
            return None
        return lines.key_line(header, key) if key else header + 1

    problems: list[Problem] = []
    values: dict[str, dict[str, Any]] = {}
    for name, table in doc.items():
        if name not in SECTIONS or not isinstance(table, dict):
            line = line_of(name, None) or lines.key_line(None, name)
            message = (
                f"unknown section{did_you_mean(name, list(SECTIONS))}"
                if name not in SECTIONS
                else f"must be a section: write [{name}] above its keys"
            )
            problems.append(Problem(message, path, line, section=name))
            continue

        def report(key: str | None, message: str, section: str = name) -> None:
            problems.append(Problem(message, path, line_of(section, key), section=section, key=key))

        values[name] = check_table(table, SECTIONS[name], report)
    for name in SECTIONS:
        if name not in doc:
            values[name] = check_table({}, SECTIONS[name], lambda key, message: None)
    warnings: list[Problem] = []
    diva = _diva(values.get("diva", {}), "diva" in doc, base, path, line_of, problems, warnings)
    ledger = _ledger(values.get("ledger", {}), base, path, line_of, problems)
    given_paths = values.get("rules", {}).get("paths", defaults.RULES_PATHS)
    rule_paths = tuple(_resolve(base, p) for p in given_paths)
    engine = values.get("engine", {})
    http = _http(values.get("http", {}), path, line_of, problems, warnings)
    # The read-only commands (warn=False) need only the ledger: they do not pay for
    # Apprise's plugins (most of a second) to check URLs they never send to.
    notify = _notify(
        values.get("notify", {}), "notify" in doc, path, line_of, problems, check_urls=warn
    )
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        count = len(errors)
        head = f"{count} problem{'s' if count != 1 else ''} in the service config"
        raise ConfigError(head + ":\n  " + "\n  ".join(str(p) for p in errors))
    if warn:  # read-only commands need only the ledger's path, not advice on polling
        for warning in warnings:
            log.warning("%s", warning)
    return ServiceConfig(
        path=path,
        base_dir=base,
        diva=diva,
        ledger=ledger,
        rules=RulesConfig(
            rule_paths,
            values.get("rules", {}).get("confirm_new_matches", defaults.RULES_CONFIRM_NEW_MATCHES),
        ),
        engine=EngineConfig(
            rescan_seconds=engine.get("rescan_seconds", defaults.ENGINE_RESCAN_SECONDS),
            reload_seconds=engine.get("reload_seconds", defaults.ENGINE_RELOAD_SECONDS),
            watch_poll_seconds=engine.get("watch_poll_seconds", defaults.ENGINE_WATCH_POLL_SECONDS),
            hash_mb_per_second=engine.get("hash_mb_per_second", defaults.ENGINE_HASH_MB_PER_SECOND),
        ),
        cluster=ClusterConfig(
            values.get("cluster", {}).get("node"),
            values.get("cluster", {}).get("lease_seconds", defaults.CLUSTER_LEASE_SECONDS),
        ),
        http=http,
        notify=notify,
        warnings=tuple(warnings),
    )


def _http(
    values: Mapping[str, Any],
    path: Path,
    line_of: Callable[[str, str | None], int | None],
    problems: list[Problem],
    warnings: list[Problem],
) -> HttpConfig | None:
    """``[http]``: None unless ``listen`` is set. A non-loopback address without a token is
    an error: the page would show every folder and drop to anyone on the network."""

    def problem(key: str, message: str, severity: Literal["error", "warning"] = "error") -> None:
        target = problems if severity == "error" else warnings
        line = line_of("http", key)
        target.append(Problem(message, path, line, section="http", key=key, severity=severity))

    token, token_env = values.get("token"), values.get("token_env")
    if token is not None and token_env is not None:
        problem("token_env", "give token or token_env, not both")
        return None
    listen = values.get("listen")
    if listen is None:
        if token is not None or token_env is not None:
            problem("listen", "missing: a token is set but the endpoint is off (set listen)")
        return None
    try:
        host, port = split_listen(listen)
    except ValueError:
        return None  # reported by the field's check
    if not is_loopback(host) and token is None and token_env is None:
        problem(
            "listen",
            f"{listen} is not a loopback address: anyone who can reach it would see every "
            "folder and drop, so a token is required; set [http] token (or token_env), or "
            f"listen on {defaults.HTTP_LISTEN_EXAMPLE}",
        )
        return None
    if token is not None:
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = 0
        if mode & 0o077:
            problem(
                "token",
                f"the config file holds the token and others can read it (mode "
                f"{stat.S_IMODE(mode):04o}): chmod 600 {path}, or use token_env",
                "warning",
            )
    return HttpConfig(host, port, token_env=token_env, _token=token)


def _notify(
    values: Mapping[str, Any],
    present: bool,
    path: Path,
    line_of: Callable[[str, str | None], int | None],
    problems: list[Problem],
    *,
    check_urls: bool = True,
) -> NotifyConfig | None:
    """``[notify]``: None unless the section is there. Each URL must be one Apprise can
    send to; a problem names it by its place in the list, never by its text (it may hold
    a password or a token)."""
    if not present:
        return None
    from .notify.urls import url_problem  # Apprise loads only when notifications are asked for

    def problem(key: str, message: str) -> None:
        problems.append(Problem(message, path, line_of("notify", key), section="notify", key=key))

    urls: tuple[str, ...] = values.get("urls", ())  # absent: reported as missing already
    if "urls" in values and not urls:
        problem("urls", "is empty: give at least one Apprise URL, or remove [notify]")
    bad = False
    for index, url in enumerate(urls if check_urls else ()):
        message = url_problem(url)
        if message:
            problem("urls", f"urls[{index}]: {message}")
            bad = True
    if bad or not urls:
        return None
    return NotifyConfig(
        urls=urls,
        events=frozenset(e.lower() for e in values.get("events", defaults.NOTIFY_EVENTS)),
        digest_seconds=values.get("digest_seconds", defaults.NOTIFY_DIGEST_SECONDS),
        outage_after_seconds=values.get(
            "outage_after_seconds", defaults.NOTIFY_OUTAGE_AFTER_SECONDS
        ),
    )


def _ledger(
    values: Mapping[str, Any],
    base: Path,
    path: Path,
    line_of: Callable[[str, str | None], int | None],
    problems: list[Problem],
) -> LedgerConfig:
    url = values.get("url", defaults.LEDGER_URL)
    env, file = values.get("password_env"), values.get("password_file")
    keep_days, keep_dir = values.get("keep_days"), values.get("keep_export_dir")
    days = None if keep_days is None else float(keep_days)
    export_dir = None if keep_dir is None else _resolve(base, keep_dir)
    if keep_days is not None and keep_dir is None:
        why = "needs keep_export_dir: what is pruned is exported there first"
        problems.append(
            Problem(why, path, line_of("ledger", "keep_days"), section="ledger", key="keep_days")
        )
    if not is_postgresql(url):
        rest = url.removeprefix("sqlite:///")
        if rest != ":memory:":
            url = "sqlite:///" + str(_resolve(base, rest))
        if env is not None or file is not None:
            key = "password_env" if env is not None else "password_file"
            why = "is for a PostgreSQL ledger: an SQLite ledger has no password"
            problems.append(Problem(why, path, line_of("ledger", key), section="ledger", key=key))
        return LedgerConfig(url, keep_days=days, keep_export_dir=export_dir)
    password_file = None if file is None else _resolve(base, file)
    message: str | None = None
    if env is not None and file is not None:
        message = "give password_env or password_file, not both"
    elif password_file is not None:
        message = password_file_problem(password_file, must_exist=False)
    if message:
        line = line_of("ledger", "password_file")
        problems.append(Problem(message, path, line, section="ledger", key="password_file"))
    return LedgerConfig(url, env, password_file, days, export_dir)


def _diva(
    values: Mapping[str, Any],
    present: bool,
    base: Path,
    path: Path,
    line_of: Callable[[str, str | None], int | None],
    problems: list[Problem],
    warnings: list[Problem],
) -> DivaConfig | None:
    if not present:
        return None

    def problem(key: str, message: str, severity: Literal["error", "warning"] = "error") -> None:
        target = problems if severity == "error" else warnings
        line = line_of("diva", key)
        target.append(Problem(message, path, line, section="diva", key=key, severity=severity))

    env, file = values.get("password_env"), values.get("password_file")
    password_file: Path | None = None
    if env is not None and file is not None:
        problem("password_file", "give password_env or password_file, not both")
    elif env is None and file is None and "username" in values:
        problem("password_env", "missing: give password_env (a variable name) or password_file")
    elif file is not None:
        password_file = _resolve(base, file)
        message = password_file_problem(password_file, must_exist=False)
        if message:
            problem("password_file", message)
    verify: bool | Path = values.get("verify", True)
    if isinstance(verify, str):
        verify = _resolve(base, verify)
        if not verify.is_file():
            problem("verify", f"the CA bundle {str(verify)!r} does not exist")
    elif verify is False:
        problem("verify", "TLS verification is off: DIVA's identity is not checked", "warning")
    poll = values.get("poll_seconds", defaults.DIVA_POLL_SECONDS)
    if poll < defaults.DIVA_POLL_SECONDS_ADVISED_MIN:
        problem(
            "poll_seconds",
            f"{poll:g} s is below the API guide's advice of polling no more often than "
            f"every {defaults.DIVA_POLL_SECONDS_ADVISED_MIN:g} s",
            "warning",
        )
    if any(p.section == "diva" and p.severity == "error" for p in problems):
        return None
    if "url" not in values or "username" not in values:
        return None
    url = values["url"].rstrip("/")
    return DivaConfig(
        url=url,
        username=values["username"],
        data_url=(values.get("data_url") or url + defaults.DIVA_DATA_PATH).rstrip("/"),
        manager_url=(values.get("manager_url") or url + defaults.DIVA_MANAGER_PATH).rstrip("/"),
        password_env=env,
        password_file=password_file,
        auth_scheme=values["auth_scheme"],
        verify=verify,
        timeout_seconds=values["timeout_seconds"],
        poll_seconds=poll,
        max_in_flight=values["max_in_flight"],
        max_attempts=values["max_attempts"],
        object_info_path=values.get("object_info_path"),
        session_minutes=values["session_minutes"],
        stuck_after_seconds=values["stuck_after_seconds"],
    )
