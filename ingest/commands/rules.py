"""``ingest rules check|explain|history|show``: validate rule files, dry-run a path, and
the rules versions the daemon ran (read from the ledger)."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from .. import queries
from ..config import ServiceConfig, find_config, load_config
from ..errors import LedgerError, NotFoundError, RulesError, UsageError
from ..report import dumps, iso_utc, local_time
from ..rollout import NewMatch, new_matches, ruleset_from
from ..rulefiles import CheckResult, check_rules, load_rules
from ..rules import Explanation, RuleSet
from ..ruleversions import SHORT, normalize, version_of

__all__ = ["rules"]

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Service config (default: env INGEST_CONFIG, then ./ingest.toml). "
    "Names the rules and the folder relative watch paths start from.",
)
_rules_option = click.option(
    "--rules",
    "rules_dirs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Rule file or folder to use instead of the config's [rules] paths (repeatable).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")


def _targets(
    config_path: Path | None, rules_dirs: Sequence[Path], paths: Sequence[Path] = ()
) -> tuple[list[Path], Path]:
    """The rule paths to read and the folder relative ``watch`` paths start from."""
    config = load_config(find_config(config_path))
    targets = list(paths) or list(rules_dirs) or list(config.rules.paths)
    return targets, config.base_dir


@click.group()
def rules() -> None:
    """Check rule files and explain what they would do with a path.

    \b
    Example:
      ingest rules check --config /etc/ingest/ingest.toml
      ingest rules explain /mnt/nas/news/clip.mxf
      ingest rules history
      ingest rules show 3f9a0c1b
    """


@rules.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@_config_option
@_rules_option
@_json_option
def check(
    paths: tuple[Path, ...],
    config_path: Path | None,
    rules_dirs: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Validate rule files: TOML syntax, keys, types, ranges, templates, watch folders.

    PATHS are rule files or folders of *.toml files (default: the rules named by the
    service config). Relative watch folders are resolved against the service config's
    folder (the current folder when there is no config). Every problem is listed at
    once, as file:line: rule: key: message. When the service config names a ledger the
    daemon has written, also says whether these rules are the ones the running daemon
    uses, and if not, which version it runs and the files already present in the watch
    folders that the edit would newly archive ("this edit would archive N files now
    present"). Exit 0 when valid (warnings allowed), 3 when not.

    \b
    Example:
      ingest rules check rules/
      ingest rules check --config /etc/ingest/ingest.toml --json
    """
    targets, base_dir = _targets(config_path, rules_dirs, paths)
    result = check_rules(targets, base_dir)
    daemon = _against_daemon(load_config(find_config(config_path), warn=False), result)
    if as_json:
        doc = {
            "ok": result.ok,
            "files": [str(f) for f in result.files],
            "rules": result.rule_count,
            "errors": [p.as_dict() for p in result.errors],
            "warnings": [p.as_dict() for p in result.warnings],
            "version": daemon["disk_version"] if daemon else _disk_version(result),
            "daemon": daemon,
        }
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        if not result.ok:
            # SystemExit, not ctx.exit: cli.main runs click with standalone_mode=False,
            # where a non-zero ctx.exit is returned, not raised.
            raise SystemExit(RulesError.exit_code)
        return
    for warning in result.warnings:
        click.echo(f"warning: {warning}")
    if daemon is not None:
        click.echo(daemon["summary"])
    if not result.ok:
        raise RulesError([str(p) for p in result.errors])
    count = len(result.warnings)
    click.echo(
        f"OK: {result.rule_count} rule{'s' if result.rule_count != 1 else ''} in "
        f"{len(result.files)} file{'s' if len(result.files) != 1 else ''}"
        + (f", {count} warning{'s' if count != 1 else ''}" if count else "")
    )


def _disk_version(result: CheckResult) -> str | None:
    return None if result.ruleset is None else version_of(normalize(result.ruleset))


def _against_daemon(config: ServiceConfig, result: CheckResult) -> dict[str, object] | None:
    """Whether the rules checked are the ones the running daemon uses, as its ledger
    says; None when no config names a ledger the daemon has written."""
    path = config.ledger.path
    if config.path is None or path is None or not path.exists():
        return None
    disk = _disk_version(result)
    try:
        with queries.open_ledger(path) as conn, queries.errors(path):
            row = queries.rules_state(conn)
            fresh: list[NewMatch] = []
            if row is not None and result.ruleset is not None and disk != row["version"]:
                fresh = _new_matches(conn, row["version"], result.ruleset)
    except LedgerError:
        return None
    if row is None:
        summary = f"the daemon has not recorded the rules it runs in {path} yet"
        return {"ledger": str(path), "disk_version": disk, "version": None, "same": None,
                "refused_since": None, "summary": summary}  # fmt: skip
    running, loaded = row["version"], local_time(row["loaded_at"], seconds=True)
    same = disk == running
    if same:
        summary = f"the daemon runs these rules (version {running[:SHORT]}, loaded {loaded})"
    elif disk is None:
        summary = (
            f"the daemon does not run these rules: it keeps version {running[:SHORT]} "
            f"(loaded {loaded}) until the files are valid"
        )
    else:
        summary = (
            f"the daemon does not run these rules (version {disk[:SHORT]}): it runs version "
            f"{running[:SHORT]} (loaded {loaded}); a valid edit takes effect within "
            "[engine] reload_seconds while it runs (see `ingest rules show "
            f"{running[:SHORT]}`)"
        )
    if fresh:
        shown = [f"  {m.watch}/{m.path} (rule {m.rule!r})" for m in fresh[:_SHOWN_MATCHES]]
        if len(fresh) > _SHOWN_MATCHES:
            shown.append(f"  ... and {len(fresh) - _SHOWN_MATCHES} more (--json lists all)")
        summary += (
            f"\nthis edit would archive {len(fresh)} file{'s' if len(fresh) != 1 else ''} "
            "now present, which the rules in force do not take:\n" + "\n".join(shown)
        )
        if config.rules.confirm_new_matches:
            summary += (
                "\n([rules] confirm_new_matches: the daemon holds them until `ingest rules accept`)"
            )
    return {
        "ledger": str(path),
        "disk_version": disk,
        "version": running,
        "loaded_at": iso_utc(row["loaded_at"]),
        "same": same,
        "refused_since": iso_utc(row["refused_since"]),
        "new_matches": [m.as_dict() for m in fresh],
        "summary": summary,
    }


#: drops ``rules check`` names that an edit would newly archive (``--json`` gives all)
_SHOWN_MATCHES = 10


def _new_matches(conn: sqlite3.Connection, running: str, disk: RuleSet) -> list[NewMatch]:
    """What the rules on disk would newly archive of what sits in the watch folders now,
    against the daemon's rules in force (the ledger's record of them)."""
    rows = queries.resolve_rules_versions(conn, running)
    if len(rows) != 1:
        return []
    in_force = ruleset_from(json.loads(rows[0]["rules"]))
    return new_matches(in_force, disk, lambda watch, path: queries.drop_known(conn, watch, path))


@rules.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@_config_option
@_rules_option
@_json_option
def explain(
    path: Path,
    config_path: Path | None,
    rules_dirs: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Tell which rule takes PATH and print the archive request it would make.

    PATH is a file or folder on disk (absolute, or relative to the current folder).
    When no rule takes it, says why for each rule: outside its watch folder, which
    patterns were tried, which ignore hid it. Nothing is submitted to DIVA. Exit 0
    when a rule takes PATH and its request can be built, 1 otherwise.

    \b
    Example:
      ingest rules explain /mnt/nas/news/clip.mxf
      ingest rules explain --rules rules/ drops/dpx/SHOW_01 --json
    """
    targets, base_dir = _targets(config_path, rules_dirs)
    ruleset = load_rules(targets, base_dir)
    explanation = ruleset.explain(Path(os.path.abspath(path)))
    if as_json:
        click.echo(json.dumps(explanation.as_dict(), indent=2, ensure_ascii=False))
    else:
        _print_explanation(explanation, ruleset)
    if explanation.body is None:
        raise SystemExit(1)


def _print_explanation(ex: Explanation, ruleset: RuleSet) -> None:
    click.echo(f"path: {ex.path}")
    for trial in ex.trials:
        rule = ruleset.get(trial.rule)
        detail = trial.detail
        if trial.outcome == "no-pattern":
            detail += f" (tried {', '.join(repr(p) for p in trial.patterns)})"
        where = f" [{rule.where}]" if rule is not None else ""
        click.echo(f"  rule {trial.rule!r}{where}: {trial.outcome}: {detail}")
    if ex.match is None:
        click.echo("no rule takes this path: it is ignored" if ex.trials else "no rules loaded")
        return
    rule, drop = ex.match.rule, ex.drop
    click.echo(f"rule {rule.name!r} takes it ({rule.where})")
    if drop is not None:
        when = datetime.fromtimestamp(drop.mtime).isoformat(sep=" ", timespec="seconds")
        what = f"{drop.kind} drop {drop.relpath!r} in {drop.watch}"
        click.echo(f"drop: {what}, {drop.size} bytes, last modified {when}")
        if drop.kind == "folder":
            click.echo(f"  {len(drop.members)} file(s) count; the rest is ignored")
        elif drop.kind == "fileset":
            click.echo(f"  the manifest lists {len(drop.members)} file(s) found:")
            for member in drop.members:
                click.echo(f"    {member}")
        click.echo(f"complete once unchanged for {rule.settle_seconds:g} s")
    if ex.marker is not None:
        present = "present" if os.path.lexists(ex.marker) else "missing: the drop waits for it"
        click.echo(f"ready marker: {ex.marker} ({present})")
    if ex.sidecar is not None:
        _print_sidecar(ex.sidecar)
    if ex.body is None:
        click.echo(f"refused: {ex.refused}")
        return
    click.echo("archive request that would be sent (POST /requests/archive; nothing is submitted):")
    click.echo(json.dumps(ex.body, indent=2, ensure_ascii=False))


def _print_sidecar(sidecar: dict[str, Any]) -> None:
    if sidecar["error"]:
        state = f"unreadable: {sidecar['error']}"
    elif sidecar["present"]:
        state = "present" + (", archived with the drop" if sidecar["archived"] else "")
    else:
        after = "fails" if sidecar["required"] else "goes ahead without it"
        state = f"missing: the drop waits for it, then {after}"
    click.echo(f"sidecar: {sidecar['path']} ({state})")
    for name, field in sidecar["fields"].items():
        value = "(not found)" if field["value"] is None else repr(field["value"])
        click.echo(f"  {{meta.{name}}} <- {field['source']}: {value}")


@rules.command()
@_config_option
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, metavar="N", help="At most N versions."
)
@_json_option
def history(config_path: Path | None, limit: int | None, as_json: bool) -> None:
    """List the rules versions the daemon has run, the one last put in force first.

    A version is the hash of the rules' content (every rule's values, in match order):
    the daemon records one each time it loads rules (at start, on every accepted edit),
    once per content. `*` marks the version the daemon runs. Drops record the version
    that built their archive request (`ingest ledger list --rules-version VERSION`).

    \b
    Example:
      ingest rules history
      ingest rules history --json --limit 5
    """
    path = queries.ledger_path(config_path)
    with queries.open_ledger(path) as conn, queries.errors(path), queries.snapshot(conn):
        rows = queries.rules_versions(conn, limit)
        state = queries.rules_state(conn)
    running = state["version"] if state is not None else None
    if as_json:
        records = [
            {
                **queries.rules_version_record(r, with_rules=False),
                "in_force": r["version"] == running,
            }
            for r in rows
        ]
        click.echo(json.dumps(records, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo("no rules versions recorded yet (has `ingest run` started?)")
        return
    for r in rows:
        mark = "*" if r["version"] == running else " "
        files = len(json.loads(r["files"]))
        click.echo(
            f"{mark} {r['version'][:SHORT]}  loaded {local_time(r['loaded_at'], seconds=True)}"
            f"  last {local_time(r['last_loaded_at'], seconds=True)}  "
            f"{r['rule_count']} rule{'s' if r['rule_count'] != 1 else ''} in {files} "
            f"file{'s' if files != 1 else ''}"
        )


@rules.command()
@click.argument("version")
@_config_option
@_json_option
def show(version: str, config_path: Path | None, as_json: bool) -> None:
    """Print one rules version: when it was loaded, its files, and every rule's values.

    VERSION is a version as `ingest rules history` or `ingest ledger show` print it
    (its first hex digits are enough). The rules print as [[rule]] tables with every
    value, defaults included: what built the archive requests of the drops that
    record this version. Exit 9 when no version matches.

    \b
    Example:
      ingest rules show 3f9a0c1b
      ingest rules show 3f9a0c1b --json | jq '.rules[0].collection'
    """
    path = queries.ledger_path(config_path)
    with queries.open_ledger(path) as conn, queries.errors(path), queries.snapshot(conn):
        rows = queries.resolve_rules_versions(conn, version)
        state = queries.rules_state(conn)
    if not rows:
        raise NotFoundError(
            f"no rules version {version!r} in the ledger {path}: see `ingest rules history`"
        )
    if len(rows) > 1:
        names = ", ".join(r["version"][:SHORT] for r in rows)
        raise UsageError(
            f"{version!r} names {len(rows)} rules versions ({names}): give more digits"
        )
    row = rows[0]
    record = queries.rules_version_record(row)
    record["in_force"] = state is not None and state["version"] == row["version"]
    if as_json:
        click.echo(dumps(record, indent=2))
        return
    click.echo(f"# rules version {row['version']}" + (" (in force)" if record["in_force"] else ""))
    click.echo(
        f"# first loaded {local_time(row['loaded_at'], seconds=True)} ({record['loaded_at']})"
    )
    last = local_time(row["last_loaded_at"], seconds=True)
    click.echo(f"# last loaded  {last} ({record['last_loaded_at']})")
    for f in record["files"]:
        click.echo(f"# file {f['path']} (modified {f['mtime']})")
    for rule in record["rules"]:
        click.echo("")
        click.echo("[[rule]]")
        for key, value in rule.items():
            if isinstance(value, dict):  # [rule.fields]: a TOML inline table
                pairs = (
                    f"{json.dumps(k)} = {json.dumps(v, ensure_ascii=False)}"
                    for k, v in value.items()
                )
                click.echo(f"{key} = {{{', '.join(pairs)}}}")
                continue
            click.echo(f"{key} = {json.dumps(value, ensure_ascii=False)}")


@rules.command()
@_config_option
def accept(config_path: Path | None) -> None:
    """Let the daemon archive the files a rule edit newly matched ([rules] confirm_new_matches).

    With confirm_new_matches = true, files already sitting in a watch folder that an
    edit newly matches (a widened glob, a new rule on a full folder) are held, and
    `ingest status` lists them: `ingest rules check` shows the same list before the edit
    is saved. This releases every file held; the daemon takes them on its next turn.
    Files arriving after a reload are never held.

    \b
    Example:
      ingest status
      ingest rules accept --config /etc/ingest/ingest.toml
    """
    from ..ledger import Ledger  # a write: SQLAlchemy only for this command

    config = load_config(find_config(config_path), warn=False)
    ledger = Ledger.open(config.ledger.url, migrate=False, password=config.ledger.password())
    try:
        held = ledger.accept_rules()
    finally:
        ledger.close()
    if held is None:
        click.echo("the daemon has not recorded its rules yet: nothing is held")
    elif not held:
        click.echo("nothing is held: no rules edit is waiting for acceptance")
    else:
        click.echo(f"accepted: the daemon releases {held} held file{'s' if held != 1 else ''}")
