"""``ingest rules check`` and ``ingest rules explain``: validate rule files, dry-run a path."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import click

from ..config import find_config, load_config
from ..errors import RulesError
from ..rulefiles import check_rules, load_rules
from ..rules import Explanation, RuleSet

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
    once, as file:line: rule: key: message. Exit 0 when valid (warnings allowed), 3 when not.

    \b
    Example:
      ingest rules check rules/
      ingest rules check --config /etc/ingest/ingest.toml --json
    """
    targets, base_dir = _targets(config_path, rules_dirs, paths)
    result = check_rules(targets, base_dir)
    if as_json:
        doc = {
            "ok": result.ok,
            "files": [str(f) for f in result.files],
            "rules": result.rule_count,
            "errors": [p.as_dict() for p in result.errors],
            "warnings": [p.as_dict() for p in result.warnings],
        }
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        if not result.ok:
            # SystemExit, not ctx.exit: cli.main runs click with standalone_mode=False,
            # where a non-zero ctx.exit is returned, not raised.
            raise SystemExit(RulesError.exit_code)
        return
    for warning in result.warnings:
        click.echo(f"warning: {warning}")
    if not result.ok:
        raise RulesError([str(p) for p in result.errors])
    count = len(result.warnings)
    click.echo(
        f"OK: {result.rule_count} rule{'s' if result.rule_count != 1 else ''} in "
        f"{len(result.files)} file{'s' if len(result.files) != 1 else ''}"
        + (f", {count} warning{'s' if count != 1 else ''}" if count else "")
    )


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
        click.echo(f"complete once unchanged for {rule.settle_seconds:g} s")
    if ex.marker is not None:
        present = "present" if os.path.lexists(ex.marker) else "missing: the drop waits for it"
        click.echo(f"ready marker: {ex.marker} ({present})")
    if ex.body is None:
        click.echo(f"refused: {ex.refused}")
        return
    click.echo("archive request that would be sent (POST /requests/archive; nothing is submitted):")
    click.echo(json.dumps(ex.body, indent=2, ensure_ascii=False))
