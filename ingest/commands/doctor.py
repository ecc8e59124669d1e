"""``ingest doctor``: is everything wired right? One line per check, with what to do."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeGuard

import click

from ..config import ServiceConfig, find_config, load_config
from ..errors import (
    ConfigError,
    DivaAuthError,
    DivaError,
    DivaUnavailable,
)
from ..ledgerurl import is_postgresql, postgres_target
from ..report import config_option, dumps, output_format, style, use_colour

if TYPE_CHECKING:
    from ..client import DivaClient
    from ..rules import Rule, RuleSet

__all__ = ["doctor"]

#: INFO says how this DIVA differs from the guide where the client copes on its own.
Level = Literal["OK", "INFO", "WARN", "FAIL"]

#: Where Linux says how many inotify watches one user may hold.
INOTIFY_LIMIT_FILE = "/proc/sys/fs/inotify/max_user_watches"
#: Above this share of the inotify limit, doctor warns.
INOTIFY_WARN_SHARE = 0.8
#: DIVA calls of the doctor give up after this long, seconds.
DIVA_TIMEOUT_SECONDS = 10.0


@dataclass
class Check:
    """One line of the report."""

    name: str
    level: Level
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "level": self.level, "message": self.message, "fix": self.fix}


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    #: what ``--probe`` found out about DIVA's API, for ``--json``
    probe: dict[str, Any] | None = None

    def add(self, name: str, level: Level, message: str, fix: str = "") -> Check:
        check = Check(name, level, message, fix)
        self.checks.append(check)
        return check

    @property
    def failed(self) -> bool:
        return any(c.level == "FAIL" for c in self.checks)


@click.command()
@config_option
@click.option("--no-diva", is_flag=True, help="Skip the checks that talk to DIVA.")
@click.option(
    "--probe",
    is_flag=True,
    help="Also ask DIVA how its API differs from the vendor's guide (read-only).",
)
@output_format("json")
def doctor(config_path: Path | None, no_diva: bool, probe: bool, fmt: str) -> None:
    """Check the setup before going live: config, rules, ledger, DIVA, watch folders.

    \b
    One line per check, OK, WARN or FAIL, with what to do:
      config and rules valid; the ledger writable and its schema current;
      DIVA reachable, the login accepted (then logged out); each rule's
      media an array or tape group DIVA knows, its source server known;
      each watch folder there, readable and writable (delete-on-source
      needs DIVA to delete there); its filesystem type and the observer
      that implies; the inotify watch limit against the folders to watch.

    \b
    --probe also asks DIVA, with the same single login and only GET calls
    (nothing is archived, restored, deleted or cancelled), how its API
    compares with the vendor's guide: which object-info route answers
    (/object/info, /objects/info), how GET /requests pages (numbered from
    0 or 1, page size, order, filters), its versions. INFO lines are
    differences the client copes with on its own.

    Exit 0 when nothing FAILs (warnings allowed), 1 when something does, 3 when the
    config itself cannot be read.

    \b
    Example:
      ingest doctor --config /etc/ingest/ingest.toml
      ingest doctor --json | jq '.checks[] | select(.level != "OK")'
      ingest doctor --probe --config /etc/ingest/ingest.toml
      ingest doctor --probe --json | jq .probe
    """
    if probe and no_diva:
        raise click.UsageError("--probe talks to DIVA: it cannot go with --no-diva")
    report = Report()
    exit_code = 0
    try:
        config = _check_config(report, config_path)
    except ConfigError as exc:
        report.add("config", "FAIL", str(exc), "fix the service config, then run doctor again")
        config = None
        exit_code = exc.exit_code
    if config is not None:
        ruleset = _check_rules(report, config)
        _check_ledger(report, config)
        if not no_diva:
            _check_diva(report, config, ruleset, probe=probe)
        if ruleset is not None:
            _check_folders(report, ruleset)
    _print(report, fmt)
    if exit_code or report.failed:
        raise SystemExit(exit_code or 1)


# ---------------------------------------------------------------------------------------
# checks


def _check_config(report: Report, config_path: Path | None) -> ServiceConfig:
    path = find_config(config_path, required=True)
    config = load_config(path)
    report.add("config", "OK", f"{path} is valid")
    for warning in config.warnings:
        report.add("config", "WARN", str(warning), "see the config's [diva] section")
    return config


def _check_rules(report: Report, config: ServiceConfig) -> RuleSet | None:
    from ..rulefiles import check_rules

    paths = config.rules.paths
    result = check_rules(paths, config.base_dir)
    for problem in result.errors:
        report.add("rules", "FAIL", str(problem), "fix the rule; `ingest rules check` lists all")
    for problem in result.warnings:
        report.add("rules", "WARN", str(problem))
    if result.ruleset is None:
        report.add(
            "rules",
            "WARN",
            "per-rule checks (media, server, folders) skipped: the rules are invalid",
            "fix the rules above",
        )
        return None
    count = len(result.ruleset)
    if count == 0:
        where = ", ".join(str(p) for p in paths) or "(none)"
        report.add(
            "rules",
            "WARN",
            f"no rules in {where}: nothing will be watched",
            "add rule files to a folder named in [rules] paths",
        )
    else:
        report.add(
            "rules", "OK", f"{count} rule{'s' if count != 1 else ''} in {len(result.files)} file(s)"
        )
    return result.ruleset


def _check_ledger(report: Report, config: ServiceConfig) -> None:
    path = config.ledger.path
    if is_postgresql(config.ledger.url):
        _check_schema(report, config, postgres_target(config.ledger.url))
        return
    if path is None:
        report.add(
            "ledger",
            "WARN",
            "in memory: lost at every restart, unreadable by the CLI",
            'set [ledger] url = "sqlite:////var/lib/ingest/ingest.db"',
        )
        return
    if not path.exists():
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if _can(parent, os.W_OK | os.X_OK):
            report.add("ledger", "OK", f"{path} does not exist yet; `ingest run` will create it")
        else:
            report.add(
                "ledger",
                "FAIL",
                f"{path} does not exist and {parent} is not writable",
                f"create {path.parent} writable by the daemon's user",
            )
        return
    try:
        _try_write(path)
    except sqlite3.Error as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            report.add(
                "ledger",
                "WARN",
                f"{path}: another process held the write lock for 5 s",
                "run doctor again; if it persists, look for a stuck process",
            )
            return
        report.add(
            "ledger",
            "FAIL",
            f"{path} is not writable: {exc}",
            "check the owner and mode of the ledger and its folder, and free disk space",
        )
        return
    _check_schema(report, config, path)


def _check_schema(report: Report, config: ServiceConfig, path: object) -> None:
    """The ledger's migrations against this version's (and, on PostgreSQL, that this
    user may write it: a row-exclusive lock on the drops, taken and let go)."""
    from ..ledger import Ledger

    try:
        ledger = Ledger.open(config.ledger.url, migrate=False, password=config.ledger.password())
        try:
            pending = ledger.pending_migrations()
            unknown = ledger.unknown_migrations()
            if ledger.postgresql and not pending:
                with ledger.connect() as conn:
                    conn.execute("LOCK TABLE drops IN ROW EXCLUSIVE MODE NOWAIT")
                    conn.rollback()
        finally:
            ledger.close()
    except Exception as exc:  # a doctor reports what it finds; it does not crash on it
        reason = " ".join(str(getattr(exc, "orig", exc)).split())
        report.add(
            "ledger",
            "FAIL",
            f"{path}: {reason}",
            "is it an ingest ledger this user may write? `ingest run` creates and migrates it",
        )
        return
    if unknown:
        report.add(
            "ledger schema",
            "FAIL",
            f"written by a newer ingest (migrations {', '.join(unknown)})",
            "upgrade ingest on this machine",
        )
    elif pending:
        report.add(
            "ledger schema",
            "WARN",
            f"{len(pending)} migration(s) pending: {', '.join(pending)}",
            "restart `ingest run`: it applies them at start",
        )
    else:
        report.add("ledger", "OK", f"{path} writable, schema current")


def _try_write(path: Path) -> None:
    """Take the write lock and let it go: proves the ledger can be written, changes nothing."""
    conn = sqlite3.connect(path, timeout=5)
    try:
        conn.isolation_level = None
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def _check_diva(
    report: Report, config: ServiceConfig, ruleset: RuleSet | None, *, probe: bool
) -> None:
    diva = config.diva
    if diva is None:
        report.add(
            "diva",
            "FAIL",
            f"no [diva] section in {config.path}",
            "add [diva] with url, username and password_env or password_file",
        )
        return
    from ..client import DivaClient

    try:
        client = DivaClient.from_config(
            diva, timeout=min(diva.timeout_seconds, DIVA_TIMEOUT_SECONDS)
        )
    except ConfigError as exc:  # the password: its variable unset, or its file unreadable
        report.add("diva password", "FAIL", str(exc), "set the variable or fix the password file")
        return
    try:
        try:
            client.login()
        except DivaUnavailable as exc:
            report.add(
                "diva",
                "FAIL",
                f"DIVA unreachable at {diva.url}: {exc}",
                "check [diva] url, the network and firewall, and that DIVA is running",
            )
            return
        except DivaAuthError:
            report.add("diva", "OK", f"DIVA reachable at {diva.url}")
            source = (
                f"environment variable {diva.password_env}"
                if diva.password_env
                else f"file {diva.password_file}"
            )
            report.add(
                "diva login",
                "FAIL",
                f"login refused for user {diva.username!r}",
                f"check [diva] username and the password in the {source}",
            )
            return
        except DivaError as exc:
            report.add(
                "diva",
                "FAIL",
                f"DIVA at {diva.url} answered the login oddly: {exc}",
                "check [diva] url (and data_url): is it DIVA's gateway?",
            )
            return
        report.add("diva", "OK", f"DIVA reachable at {diva.url}")
        report.add("diva login", "OK", f"logged in as {diva.username!r}")
        if ruleset is not None:
            _check_resources(report, client, ruleset)
        if probe:
            from .probe import probe as run_probe

            report.probe = run_probe(report, client, diva)
        try:
            client.logout()
            report.add("diva logout", "OK", "logged out")
        except DivaError as exc:
            report.add(
                "diva logout",
                "WARN",
                f"logout failed: {exc}",
                "harmless for the doctor; the token expires on its own",
            )
    finally:
        client.close()


class Listing(NamedTuple):
    """A DIVA resource list as the doctor read it."""

    names: set[str]
    #: why the list cannot stand for all DIVA has (paged, unreadable entries); None: it can
    incomplete: str | None


def _listing(client: DivaClient, name: str) -> Listing:
    """DIVA's list of ``name`` (arrays, groups, servers), and whether it is complete.

    Read here rather than through the client's helpers because those turn an answer
    without the list into an empty one: the doctor must not call a media or server
    unknown on the strength of a list it did not read in full.
    """
    data = client.get(f"/{name}")
    items: Any = data
    total: int | None = None
    more = False
    if isinstance(data, Mapping):
        items = next((data[k] for k in (name, "items", "content") if k in data), None)
        totals = [v for k in ("totalElements", "total", "totalCount") if _is_int(v := data.get(k))]
        total = totals[0] if totals else None
        pages = data.get("totalPages")
        more = data.get("last") is False or (_is_int(pages) and pages > 1)
    if not isinstance(items, list):
        return Listing(set(), f"DIVA's answer holds no list of {name}: {brief(json.dumps(data))}")
    names = _names(i for i in items if isinstance(i, Mapping))
    if more or (total is not None and total > len(items)):
        of = f" of its {total}" if total is not None else ""
        return Listing(names, f"DIVA sent {len(items)}{of} {name}: a paged list")
    if len(names) < len(items):
        unnamed = len(items) - len(names)
        return Listing(names, f"{unnamed} of DIVA's {name} have no name this doctor can read")
    return Listing(names, None)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _names(items: Iterable[Mapping[str, Any]]) -> set[str]:
    names = set()
    for item in items:
        for key in ("name", "arrayName", "groupName", "serverName"):
            value = item.get(key)
            if isinstance(value, str) and value:
                names.add(value)
                break
    return names


def _check_resources(report: Report, client: DivaClient, ruleset: Iterable[Rule]) -> None:
    from ..tomlcheck import did_you_mean

    try:
        arrays, groups = _listing(client, "arrays"), _listing(client, "groups")
        servers = _listing(client, "servers")
    except DivaError as exc:
        report.add(
            "diva resources",
            "FAIL",
            f"cannot list DIVA's arrays, groups and servers: {exc}",
            "check the DIVA user's role: it must see the manager's lists",
        )
        return
    media_unsure = arrays.incomplete or groups.incomplete
    for rule in ruleset:
        if not rule.enabled:
            continue
        name = f"rule {rule.name}"
        if rule.media in arrays.names:
            report.add(name, "OK", f"media {rule.media!r} is a DIVA disk array")
        elif rule.media in groups.names:
            report.add(name, "OK", f"media {rule.media!r} is a DIVA tape group")
        elif media_unsure:
            report.add(
                name,
                "WARN",
                f"cannot confirm media {rule.media!r}: {media_unsure}",
                "check the name in DIVA; it refuses an unknown media (1017) at the first drop",
            )
        else:
            # Two complete lists say it is neither an array nor a tape group; it may still be
            # a storage plan (the guide allows one as media), which no listed call names.
            known = sorted(arrays.names | groups.names)
            report.add(
                name,
                "WARN",
                f"media {rule.media!r} is neither a disk array nor a tape group DIVA lists"
                f"{did_you_mean(rule.media, known)}",
                f"set media to one of: {', '.join(known) or '(DIVA lists none)'}, "
                "unless it is a storage plan",
            )
        if rule.source_server in servers.names:
            report.add(name, "OK", f"source server {rule.source_server!r} is known to DIVA")
        elif servers.incomplete:
            report.add(
                name,
                "WARN",
                f"cannot confirm source server {rule.source_server!r}: {servers.incomplete}",
                "check the name in DIVA's configuration",
            )
        else:
            known = sorted(servers.names)
            report.add(
                name,
                "FAIL",
                f"source server {rule.source_server!r} is unknown to DIVA"
                f"{did_you_mean(rule.source_server, known)}",
                f"set source_server to one of: {', '.join(known) or '(DIVA lists none)'}",
            )


# ---------------------------------------------------------------------------------------
# --probe: how this DIVA's API compares with the guide. GET calls only, on the one login.


def brief(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _can(path: Path, mode: int) -> bool:
    """``os.access``: a seam for tests, which run as root (root may read anything)."""
    return os.access(path, mode)


def _check_folders(report: Report, ruleset: RuleSet) -> None:
    from ..watch import resolve_observer

    native_folders = 0
    native_roots: list[Path] = []
    for folder, rules in ruleset.watch_folders().items():
        name = f"folder {folder}"
        if not folder.exists():
            report.add(name, "FAIL", "does not exist", "create it, or mount the share")
            continue
        if not folder.is_dir():
            report.add(name, "FAIL", "is not a folder", "point the rule's watch at a folder")
            continue
        if not _can(folder, os.R_OK | os.X_OK):
            report.add(
                name,
                "FAIL",
                "not readable by this user",
                f"give the daemon's user read access: chmod u+rx {folder}",
            )
            continue
        deleting = [r.name for r in rules if r.delete_on_source]
        if not _can(folder, os.W_OK):
            if deleting:
                report.add(
                    name,
                    "FAIL",
                    f"not writable, but {', '.join(deleting)} delete(s) on source",
                    "make it writable (DIVA deletes the sources there), "
                    "or set delete_on_source = false",
                )
            else:
                report.add(name, "WARN", "not writable (no rule deletes on source here)")
        else:
            report.add(name, "OK", "exists, readable and writable")
        # The engine's own decision (resolve_observer), so the two cannot disagree.
        observer = resolve_observer(folder, rules)
        if observer.blind:
            report.add(
                name,
                "WARN",
                f"{observer.fstype}: native events forced, but {observer.blind}",
                'set observer = "polling" (or "auto") in its rules',
            )
        else:
            report.add(
                name, "OK", f"filesystem {observer.fstype}: {observer.kind} ({observer.why})"
            )
        if observer.kind == "native":
            native_roots.append(folder)
    if native_roots:
        native_folders = sum(_count_dirs(root) for root in native_roots)
        _check_inotify(report, native_folders)


def _count_dirs(root: Path) -> int:
    """Folders under ``root`` (itself included): each takes one inotify watch."""
    count = 0
    stack = [str(root)]
    while stack:
        top = stack.pop()
        count += 1
        try:
            with os.scandir(top) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return count


def _check_inotify(report: Report, folders: int) -> None:
    try:
        with open(INOTIFY_LIMIT_FILE, encoding="ascii") as fh:
            limit = int(fh.read().strip())
    except (OSError, ValueError):
        report.add(
            "inotify",
            "WARN",
            f"cannot read {INOTIFY_LIMIT_FILE}; {folders} folder(s) need a watch each",
        )
        return
    message = f"{folders:,} folder(s) to watch natively; the limit is {limit:,} per user"
    fix = (
        f"raise it: sysctl fs.inotify.max_user_watches={max(folders * 2, 524288)} "
        "(and in /etc/sysctl.d/), or use polling"
    )
    if folders > limit:
        report.add("inotify", "FAIL", message, fix)
    elif folders > limit * INOTIFY_WARN_SHARE:
        report.add("inotify", "WARN", message + " (other programs use watches too)", fix)
    else:
        report.add("inotify", "OK", message)


# ---------------------------------------------------------------------------------------
# output


def _print(report: Report, fmt: str) -> None:
    if fmt == "json":
        doc: dict[str, Any] = {
            "ok": not report.failed,
            "checks": [c.as_dict() for c in report.checks],
        }
        if report.probe is not None:
            doc["probe"] = report.probe
        click.echo(dumps(doc, indent=2))
        return
    colour = use_colour(sys.stdout)
    for check in report.checks:
        level = style(f"{check.level:<4}", colour, check.level)
        line = f"{level} {check.name}: {check.message}"
        if check.fix and check.level != "OK":
            line += f" -> {check.fix}"
        click.echo(line)
    fails = sum(c.level == "FAIL" for c in report.checks)
    warns = sum(c.level == "WARN" for c in report.checks)
    click.echo(f"{fails} failure(s), {warns} warning(s)" if fails or warns else "all checks OK")
