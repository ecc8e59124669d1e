"""``ingest doctor``: is everything wired right? One line per check, with what to do."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import sqlite3
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeGuard

import click

from ..config import DivaConfig, ServiceConfig, find_config, load_config
from ..errors import (
    ConfigError,
    DivaAuthError,
    DivaError,
    DivaNoRoute,
    DivaProtocolError,
    DivaUnavailable,
    DivaUnconfirmed,
)
from ..report import config_option, dumps, output_format, style, use_colour

if TYPE_CHECKING:
    from ..client import DivaClient

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


def _check_rules(report: Report, config: ServiceConfig) -> Any:
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
    from ..ledger import Ledger

    try:
        ledger = Ledger.open(config.ledger.url, migrate=False)
        try:
            pending = ledger.pending_migrations()
            unknown = _unknown_migrations(path)
        finally:
            ledger.close()
    except Exception as exc:  # a doctor reports what it finds; it does not crash on it
        reason = str(getattr(exc, "orig", exc))
        report.add(
            "ledger",
            "FAIL",
            f"{path}: {reason}",
            "is it an ingest ledger? `ingest run` creates and migrates it",
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


def _unknown_migrations(path: Path) -> list[str]:
    from ..ledger import MIGRATIONS

    known = {name for name, _ in MIGRATIONS}
    conn = sqlite3.connect(path, timeout=5)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations")]
    finally:
        conn.close()
    return sorted(n for n in names if n not in known)


def _check_diva(report: Report, config: ServiceConfig, ruleset: Any, *, probe: bool) -> None:
    diva = config.diva
    if diva is None:
        report.add(
            "diva",
            "FAIL",
            f"no [diva] section in {config.path}",
            "add [diva] with url, username and password_env or password_file",
        )
        return
    try:
        password = diva.password()
    except ConfigError as exc:
        report.add("diva password", "FAIL", str(exc), "set the variable or fix the password file")
        return
    from ..client import DivaClient

    verify: bool | str = str(diva.verify) if isinstance(diva.verify, Path) else diva.verify
    client = DivaClient(
        diva.url,
        diva.username,
        password,
        data_url=diva.data_url,
        manager_url=diva.manager_url,
        auth_scheme=diva.auth_scheme,
        verify=verify,
        timeout=min(diva.timeout_seconds, DIVA_TIMEOUT_SECONDS),
        object_info_path=diva.object_info_path,
        session_minutes=diva.session_minutes,
    )
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
            report.probe = _probe(report, client, diva)
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
    # The client's private call: it carries the login and turns failures into DivaError.
    data = client._call("GET", f"{client.manager_url}/{name}")
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
        return Listing(set(), f"DIVA's answer holds no list of {name}: {_brief(json.dumps(data))}")
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


def _check_resources(report: Report, client: DivaClient, ruleset: Any) -> None:
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

#: The object-info routes: the guide's, then the one production code was seen calling.
GUIDE_INFO_PATH, SEEN_INFO_PATH = "/object/info", "/objects/info"

#: Errors after which the probe stops: DIVA is gone, or refuses even a fresh token.
_STOP = (DivaUnavailable, DivaAuthError)


def _probe(report: Report, client: DivaClient, diva: DivaConfig) -> dict[str, Any]:
    # A name nobody archives, so DIVA's only right answer about it is "no such object".
    tag = secrets.token_hex(4)
    name = collection = f"ingest-doctor-probe-{tag}"
    facts: dict[str, Any] = {"object_name": name, "collection": collection}
    try:
        facts["object_info"] = _probe_object_info(
            report, client, name, collection, diva.object_info_path
        )
        facts["requests"] = _probe_requests(report, client, name, collection)
        facts["versions"] = _probe_versions(report, client)
    except _STOP as exc:
        report.add(
            "diva probe", "FAIL", f"stopped: {exc}", "check that DIVA is up, then probe again"
        )
    facts["logins"] = client.logins
    if client.logins == 1:
        report.add("diva session", "OK", "one login for the whole probe, as the guide asks")
    else:
        report.add(
            "diva session",
            "WARN",
            f"{client.logins} logins: DIVA refused a token it had issued moments before",
            "check DIVA's session timeout for this user ([diva] session_minutes)",
        )
    return facts


def _ask_object_info(
    client: DivaClient, path: str, name: str, collection: str
) -> tuple[Literal["1009", "no route", "unexpected"], str]:
    """How one route answers for an object that does not exist, read as the daemon reads it."""
    saved = client.object_info_path
    # A client with a route set asks that route only, and says DivaNoRoute when it is missing.
    client.object_info_path = path
    try:
        found = client.object_info(name, collection)
    except _STOP:
        raise
    except DivaNoRoute:
        return "no route", "HTTP 404 without a DIVA status"
    except DivaError as exc:
        return "unexpected", _brief(str(exc))
    finally:
        client.object_info_path = saved
    if found is None:
        return "1009", "DIVA's 1009 (object does not exist)"
    return "unexpected", f"an object {found.name!r} for a name made up just now"


def _probe_object_info(
    report: Report, client: DivaClient, name: str, collection: str, pinned: str | None
) -> dict[str, Any]:
    check = "diva object info"
    answers = {
        p: _ask_object_info(client, p, name, collection) for p in (GUIDE_INFO_PATH, SEEN_INFO_PATH)
    }
    for path, (answer, detail) in answers.items():
        if answer == "1009":
            report.add(check, "OK", f"GET {path} works: a made-up object gets {detail}")
        elif answer == "no route":
            report.add(check, "INFO", f"GET {path}: no such route ({detail})")
        else:
            report.add(check, "WARN", f"GET {path} answered a made-up object with {detail}")
    working = [p for p, (answer, _) in answers.items() if answer == "1009"]
    route = (pinned if pinned in working else None) if pinned else next(iter(working), None)
    if pinned and pinned not in working:
        others = [p for p in working if p != pinned]
        fix = (
            f'set [diva] object_info_path = "{others[0]}", or remove it'
            if others
            else "ask the DIVA administrator which route serves object info"
        )
        report.add(
            check,
            "FAIL",
            f"[diva] object_info_path pins {pinned}, which does not answer here",
            fix,
        )
    elif not working:
        report.add(
            check,
            "FAIL",
            "no object-info route gives DIVA's 1009 for an object that does not exist",
            "without it the daemon cannot confirm an object is absent: check [diva] "
            "manager_url and the DIVA version",
        )
    elif pinned:
        report.add(check, "OK", f"[diva] object_info_path pins {pinned}, which answers")
    elif working == [SEEN_INFO_PATH]:
        report.add(
            check,
            "WARN",
            f"only {SEEN_INFO_PATH} answers, not the guide's {GUIDE_INFO_PATH}",
            f'pin [diva] object_info_path = "{SEEN_INFO_PATH}" (the client finds it '
            "anyway, after one 404 at each start)",
        )
    return {
        "routes": {p: {"answer": a, "detail": d} for p, (a, d) in answers.items()},
        "route": route,
        "pinned": pinned,
    }


class Page(NamedTuple):
    """One page of ``GET /requests``: the request ids in the order sent."""

    ids: list[int]
    shape: str


def _page(client: DivaClient, page: int, size: int, **filters: str) -> Page:
    """One page of DIVA's request list, asked for exactly as given.

    Uses the client's private call: the client's own walk hides single pages and sizes on
    purpose, and the probe needs to see them.
    """
    from ..client import RequestInfo

    params = [("page", str(page)), ("size", str(size)), *filters.items()]
    data = client._call("GET", f"{client.manager_url}/requests", params=params)
    items: Any = data
    shape = "a bare JSON list"
    if isinstance(data, Mapping):
        key = next((k for k in ("requests", "content") if isinstance(data.get(k), list)), None)
        if key is None:
            raise DivaProtocolError(
                f"a request list without `requests`: {_brief(json.dumps(data))}"
            )
        items, shape = data[key], f'{{"{key}": [...]}}'
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise DivaProtocolError(
            f"a request list that is not a list of requests: {_brief(json.dumps(data))}"
        )
    return Page([RequestInfo.from_wire(i).request_id for i in items], shape)


def _probe_requests(
    report: Report, client: DivaClient, name: str, collection: str
) -> dict[str, Any]:
    check = "diva request list"
    size = client.page_size
    facts: dict[str, Any] = {"route": None}
    uncertain_fix = (
        "the daemon then cannot look up a request it may have sent: such a drop is retried "
        "with backoff, then FAILED with its files in place, never resubmitted blind"
    )
    try:
        one = _page(client, 1, size)
    except _STOP:
        raise
    except DivaNoRoute:
        report.add(
            check, "WARN", "no GET /requests route (HTTP 404 without a DIVA status)", uncertain_fix
        )
        facts["route"] = False
        return facts
    except DivaError as exc:
        facts["error"] = _brief(str(exc))
        report.add(check, "WARN", f"GET /requests answered {facts['error']}", uncertain_fix)
        return facts
    facts.update(route=True, shape=one.shape)
    # The client's test: a server numbering from 1 refuses page 0, sends nothing for it,
    # or sends page 1 again; a server numbering from 0 sends the first page, unlike page 1.
    try:
        zero = _page(client, 0, size).ids
    except _STOP:
        raise
    except DivaError:
        zero = []
    base = 0 if zero and zero != one.ids else 1
    first = zero if base == 0 else one.ids
    detected = bool(zero or one.ids)
    facts.update(page_base=base, page_base_detected=detected, first_page=len(first))
    order = _order(first)
    facts["order"] = order
    numbered = f"numbered from {base}" + ("" if detected else " (assumed: the queue is empty)")
    ordered = {
        "oldest-first": "oldest first",
        "newest-first": "newest first",
        "mixed": "in no id order",
        "unknown": "order unknown (fewer than 2 requests in the queue)",
    }[order]
    summary = f"GET /requests answers {one.shape}, pages {numbered}, {ordered}"
    if base == 0:
        report.add(
            check,
            "WARN",
            summary + " (the guide's sample numbers pages from 1)",
            "nothing to set: the client detects it at each start, from page 0, "
            "which is only conclusive while the queue is not empty",
        )
    else:
        report.add(check, "OK", summary)
    try:
        facts.update(_probe_paging(report, client, base, size, first))
    except _STOP:
        raise
    except DivaError as exc:
        report.add(check, "WARN", f"paging could not be probed: {_brief(str(exc))}")
    facts["filters"] = _probe_filters(report, client, base, size, first, name, collection)
    if detected:
        client.page_base = base  # the unfiltered test above is the surer one
    try:
        client.requests(object_name=name, collection=collection)
    except _STOP:
        raise
    except DivaUnconfirmed as exc:
        facts["complete"] = False
        report.add(check, "WARN", f"the client cannot read it to its end: {exc}", uncertain_fix)
    except DivaError as exc:
        facts["complete"] = False
        report.add(check, "WARN", f"the client cannot read it: {_brief(str(exc))}", uncertain_fix)
    else:
        facts["complete"] = True
        report.add(check, "OK", "the client reads it to its end")
    return facts


def _order(ids: list[int]) -> Literal["oldest-first", "newest-first", "mixed", "unknown"]:
    if len(ids) < 2:
        return "unknown"
    if all(a < b for a, b in itertools.pairwise(ids)):
        return "oldest-first"
    if all(a > b for a, b in itertools.pairwise(ids)):
        return "newest-first"
    return "mixed"


def _probe_paging(
    report: Report, client: DivaClient, base: int, size: int, first: list[int]
) -> dict[str, Any]:
    """Whether ``size`` is honoured and ``page`` moves on, as the client's walk needs."""
    check = "diva request list"
    sizes = _probe_sizes(client, base, first)
    advance = _pages_advance(client, base, first)
    cap = _page_cap(client, base, size, first)
    if cap is not None:
        report.add(
            check,
            "WARN",
            f"serves at most {cap} requests a page when asked for {size}",
            "the client takes a short page for the last one, so it would read only the "
            "first page: report this DIVA's behaviour to the ingest maintainers",
        )
    if "ignored" in sizes.values() or advance is False:
        bad = "ignores `size`" if "ignored" in sizes.values() else "repeats page 1 as page 2"
        report.add(
            check,
            "WARN",
            f"pages oddly: it {bad}",
            "the client then reads one answer as the whole list, or stops unconfirmed",
        )
    elif advance:
        report.add(check, "OK", "honours size=1 and size=2, and page 2 follows page 1")
    else:
        report.add(
            check, "INFO", f"page size: cannot tell with {len(first)} request(s) in the queue"
        )
    return {"size": sizes, "pages_advance": advance, "page_cap": cap}


def _probe_filters(
    report: Report,
    client: DivaClient,
    base: int,
    size: int,
    first: list[int],
    name: str,
    collection: str,
) -> dict[str, str]:
    check = "diva request list"
    filters = {
        key: _filter(client, base, size, first, key, value)
        for key, value in (("objectName", name), ("collectionName", collection))
    }
    values = set(filters.values())
    refused = [k for k, v in filters.items() if v == "refused"]
    ignored = [k for k, v in filters.items() if v == "ignored"]
    if refused:
        report.add(
            check,
            "WARN",
            f"refuses the {' and '.join(refused)} filter{'s' if len(refused) > 1 else ''}",
            "the client sends them as hints on every walk of the list: report this DIVA's "
            "behaviour to the ingest maintainers",
        )
    elif values == {"honoured"}:
        report.add(check, "OK", "honours the objectName and collectionName filters")
    elif ignored:
        report.add(
            check,
            "INFO",
            f"ignores the {' and '.join(ignored)} filter{'s' if len(ignored) > 1 else ''}: "
            "fine, the client checks every entry itself",
        )
    else:
        report.add(check, "INFO", "filters: cannot tell with an empty queue")
    return filters


def _probe_sizes(client: DivaClient, base: int, first: list[int]) -> dict[str, str]:
    """For ``size`` 1 and 2: "honoured", "ignored" (more came), or "unknown" (too few to tell)."""
    sizes: dict[str, str] = {}
    for size in (1, 2):
        got = _page(client, base, size).ids
        if len(got) > size:
            sizes[str(size)] = "ignored"
        elif len(first) > size:
            sizes[str(size)] = "honoured" if got == first[:size] else "ignored"
        else:
            sizes[str(size)] = "unknown"
    return sizes


def _pages_advance(client: DivaClient, base: int, first: list[int]) -> bool | None:
    """Whether the second page of one is the second request (None: too few to tell)."""
    if len(first) < 2:
        return None
    return _page(client, base + 1, 1).ids == first[1:2]


def _page_cap(client: DivaClient, base: int, size: int, first: list[int]) -> int | None:
    """The page size the server keeps to when it sends fewer than asked though more follow:
    the client would stop at that short page. None when it sends what it is asked."""
    if not first or len(first) >= size:
        return None
    after = _page(client, base + 1, size).ids
    return len(first) if set(after) - set(first) else None


def _filter(
    client: DivaClient, base: int, size: int, first: list[int], key: str, value: str
) -> str:
    """Whether the list honours a filter: asked for a made-up value, any entry means not."""
    try:
        got = _page(client, base, size, **{key: value}).ids
    except _STOP:
        raise
    except DivaError:
        return "refused"
    if got:
        return "ignored"
    return "honoured" if first else "unknown"


def _probe_versions(report: Report, client: DivaClient) -> Any:
    try:
        versions = client.versions()
    except _STOP:
        raise
    except DivaNoRoute:
        report.add(
            "diva versions",
            "WARN",
            "no GET /versions route, though the guide lists it",
            "none needed by the daemon; check [diva] manager_url",
        )
        return None
    except DivaError as exc:
        report.add("diva versions", "WARN", f"GET /versions answered {_brief(str(exc))}")
        return None
    report.add("diva versions", "OK", _describe_versions(versions))
    return versions


def _describe_versions(versions: Mapping[str, Any]) -> str:
    """``9.0.0 (Manager 9.0.0, ...)`` when the answer reads so, else a snippet of it."""
    version = versions.get("version")
    parts = versions.get("components")
    named = []
    if isinstance(parts, list):
        named = [
            f"{p['name']} {p.get('version', '?')}"
            for p in parts
            if isinstance(p, Mapping) and isinstance(p.get("name"), str)
        ]
    if isinstance(version, str) and version:
        return version + (f" ({', '.join(named)})" if named else "")
    return _brief(json.dumps(versions))


def _brief(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _can(path: Path, mode: int) -> bool:
    """``os.access``: a seam for tests, which run as root (root may read anything)."""
    return os.access(path, mode)


def _check_folders(report: Report, ruleset: Any) -> None:
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
