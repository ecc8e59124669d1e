"""Rule files: loading, checking as a whole, and hot reload.

Every problem in the rule files is reported at once, each naming file, line, rule and key
(:func:`check_rules`; a rule's keys are checked as :mod:`ingest.rulekeys` says);
:func:`load_rules` raises :class:`~ingest.errors.RulesError` with them; :class:`RuleBook`
keeps the last valid rules in force while admins edit.

>>> book = RuleBook(["rules"], base_dir=Path("/etc/ingest"))  # doctest: +SKIP
>>> book.maybe_reload()  # every few seconds: cheap when nothing changed  # doctest: +SKIP
False
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import defaults
from .errors import RulesError
from .globs import Glob
from .protocol import QOS_NAMES
from .rulekeys import RULE_FIELDS, beside_problems, fileset_problems, sidecar_problems
from .rules import Rule, RuleSet, _norm
from .ruleversions import Refusal, RulesVersion, diff_rules
from .templates import (
    FILE_FIELDS,
    FOLDER_FIELDS,
    Drop,
    Template,
    TemplateError,
    check_name,
)
from .tomlcheck import Problem, Severity, TableLines, check_table, did_you_mean, parse_toml

__all__ = ["RULE_FIELDS", "CheckResult", "RuleBook", "check_rules", "load_rules", "rule_files"]

log = logging.getLogger("ingest.rules")


@dataclass(frozen=True)
class CheckResult:
    """What checking rule files found: the rules (when valid) and every problem."""

    ruleset: RuleSet | None
    problems: tuple[Problem, ...]
    files: tuple[Path, ...]
    rule_count: int

    @property
    def ok(self) -> bool:
        return self.ruleset is not None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


def rule_files(paths: Iterable[Path | str]) -> tuple[list[Path], list[Problem]]:
    """The rule files named by ``paths`` (files, or folders of ``*.toml`` sorted by name)."""
    files: list[Path] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            found = sorted(
                (p for p in path.iterdir() if p.suffix == ".toml" and not p.name.startswith(".")),
                key=lambda p: p.name,
            )
        elif path.is_file():
            found = [path]
        else:
            what = "does not exist" if not path.exists() else "is not a file or folder"
            problems.append(Problem(f"rules path {what}", file=path))
            continue
        for file in found:
            key = os.path.realpath(file)
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files, problems


_RULE_HEADER = r"^\s*\[\[\s*rule\s*\]\]"


def _check_rule(
    table: Any,
    index: int,
    file: Path,
    lines: TableLines,
    header: int | None,
    base_dir: Path,
    problems: list[Problem],
) -> Rule | None:
    label = table.get("name") if isinstance(table, dict) else None
    label = label if isinstance(label, str) and label else f"#{index + 1} in file"
    start_line = None if header is None else header + 1
    before = len(problems)

    def report(key: str | None, message: str, severity: Severity = "error") -> None:
        line = lines.key_line(header, key) if key and header is not None else start_line
        problems.append(Problem(message, file, line, label, None, key, severity))

    if not isinstance(table, dict):
        report(None, "each rule must be a table: write [[rule]] above its keys")
        return None
    values = check_table(table, RULE_FIELDS, report)
    mode = values.get("mode", defaults.RULE_MODE)
    fileset_problems(table, values, report)
    fields = FOLDER_FIELDS if mode == "folder" else FILE_FIELDS
    fields = fields | sidecar_problems(values, mode, report)
    samples = [Drop("sample", "/", "sample.mxf", "folder" if mode == "folder" else "file")]
    for key, limit in (
        ("object_name", defaults.OBJECT_NAME_MAX_CHARS),
        ("collection", None),
        ("comments", None),
    ):
        if key not in values:
            continue
        try:
            template = Template.compile(values[key], fields)
        except TemplateError as exc:
            report(key, f"bad template: {exc}")
            continue
        if key != "comments":
            sample = samples[0].fields(now=0.0)
            sample.update((f, "x") for f in template.fields if f.startswith("meta."))
            rendered = template.render(sample)
            problem = check_name(rendered, limit or defaults.COLLECTION_MAX_CHARS)
            if problem and "characters long" not in problem:
                report(key, f"renders an unsafe name even for a plain file: {rendered!r} {problem}")
        if key == "object_name" and template.fields & {"relpath", "parent"}:
            report(
                key,
                "uses {relpath} or {parent}: files in sub-folders will be refused "
                "(object names cannot contain '/')",
                "warning",
            )
        if key == "object_name" and "now" in template.fields:
            report(
                key,
                "uses {now}: the name changes with time, so a resubmitted drop "
                "gets a new object name",
                "warning",
            )
    marker = values.get("ready_marker")
    if marker:
        beside_problems("ready_marker", marker, mode, "{name}.ready", report)
    watch: Path | None = None
    if "watch" in values:
        watch = Path(values["watch"]).expanduser()
        watch = Path(_norm(watch if watch.is_absolute() else base_dir / watch))
        if values.get("enabled", True):
            if not watch.exists():
                report("watch", f"the folder {str(watch)!r} does not exist")
            elif not watch.is_dir():
                report("watch", f"{str(watch)!r} is not a folder")
    if any(p.severity == "error" for p in problems[before:]) or watch is None:
        return None
    qos = values["qos"]
    values.update(
        watch=watch,
        qos=QOS_NAMES[qos] if isinstance(qos, str) else qos,
        source=file,
        line=start_line,
    )
    return Rule(**values)


def _samples(pattern: str) -> list[str]:
    """A few paths a glob matches, to guess whether two globs overlap."""
    variants = [""]
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            variants = [v + add for v in variants for add in ("", "x/")]
            i += 3
        elif pattern.startswith("**", i):
            variants = [v + add for v in variants for add in ("x", "x/x")]
            i += 2
        elif pattern[i] in "*?":
            variants = [v + "x" for v in variants]
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 2)
            pick = pattern[i + 1] if end > 0 and pattern[i + 1] not in "!^" else "x"
            variants = [v + pick for v in variants]
            i = end + 1 if end > 0 else i + 1
        else:
            variants = [v + pattern[i] for v in variants]
            i += 1
        variants = variants[:16]
    return variants


def _file_globs(rule: Rule, prefix: str) -> list[str]:
    globs = [g + "/**" if rule.mode == "folder" else g for g in rule.match]
    return [f"{prefix}/{g}" if prefix else g for g in globs]


def _overlaps(rules: Sequence[Rule]) -> list[Problem]:
    warnings: list[Problem] = []
    enabled = [r for r in rules if r.enabled]
    for i, first in enumerate(enabled):
        for second in enabled[i + 1 :]:
            a, b = str(first.watch), str(second.watch)
            if a == b:
                pa, pb = "", ""
            elif b.startswith(a.rstrip("/") + "/"):
                pa, pb = "", b[len(a.rstrip("/")) + 1 :]
            elif a.startswith(b.rstrip("/") + "/"):
                pa, pb = a[len(b.rstrip("/")) + 1 :], ""
            else:
                continue
            ga = [Glob.compile(g, True) for g in _file_globs(first, pa)]
            gb = [Glob.compile(g, True) for g in _file_globs(second, pb)]
            clash = any(x.hit(s) for x in ga for y in gb for s in _samples(y.pattern)) or any(
                y.hit(s) for x in ga for y in gb for s in _samples(x.pattern)
            )
            if clash:
                message = (
                    f"watches {str(second.watch)!r} with patterns that may overlap rule "
                    f"{first.name!r} ({first.where}); {first.name!r} comes first and wins"
                )
                warnings.append(
                    Problem(
                        message,
                        second.source,
                        second.line,
                        second.name,
                        key="match",
                        severity="warning",
                    )
                )
    return warnings


def check_rules(paths: Iterable[Path | str], base_dir: Path | None = None) -> CheckResult:
    """Load and check every rule file named by ``paths``; never raises for bad content.

    Relative ``watch`` folders are resolved against ``base_dir`` (the service config's
    folder; the current folder when None).
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    files, problems = rule_files(paths)
    rules: list[Rule] = []
    count = 0
    first_seen: dict[str, Problem] = {}
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(f"cannot read: {exc}", file=file))
            continue
        doc, syntax = parse_toml(file, text)
        if doc is None:
            assert syntax is not None
            problems.append(syntax)
            continue
        lines = TableLines(text)
        headers = lines.headers(_RULE_HEADER)
        for key in doc:
            if key != "rule":
                line = lines.key_line(None, key) or next(
                    (i + 1 for i, t in enumerate(lines.lines) if key in t), None
                )
                hint = did_you_mean(key, ["rule"]) or " (rules are [[rule]] tables)"
                problems.append(Problem(f"unknown key{hint}", file, line, key=key))
        tables = doc.get("rule", [])
        if isinstance(tables, dict):
            line = next((i + 1 for i, t in enumerate(lines.lines) if t.strip() == "[rule]"), None)
            problems.append(Problem("write [[rule]] (double brackets) for each rule", file, line))
            continue
        if not isinstance(tables, list):
            problems.append(Problem("'rule' must be [[rule]] tables", file, key="rule"))
            continue
        for index, table in enumerate(tables):
            count += 1
            header = headers[index] if index < len(headers) else None
            rule = _check_rule(table, index, file, lines, header, base, problems)
            name = table.get("name") if isinstance(table, dict) else None
            if isinstance(name, str) and name:
                where = Problem("", file, None if header is None else header + 1)
                if name in first_seen:
                    other = first_seen[name]
                    at = f"{other.file}:{other.line}" if other.line else str(other.file)
                    message = f"duplicate rule name; first defined at {at}"
                    problems.append(Problem(message, where.file, where.line, name, key="name"))
                    continue
                first_seen[name] = where
            if rule is not None:
                rules.append(rule)
    if not files and not problems:
        problems.append(Problem("no rule files found", severity="warning"))
    problems.extend(_overlaps(rules))
    ok = not any(p.severity == "error" for p in problems)
    warnings = [p for p in problems if p.severity == "warning"]
    ruleset = RuleSet(rules, files, warnings) if ok else None
    return CheckResult(ruleset, tuple(problems), tuple(files), count)


def load_rules(paths: Iterable[Path | str], base_dir: Path | None = None) -> RuleSet:
    """The valid rules named by ``paths``, or :class:`RulesError` listing every problem."""
    result = check_rules(paths, base_dir)
    if result.ruleset is None:
        raise RulesError([str(p) for p in result.errors])
    return result.ruleset


# ---------------------------------------------------------------------------------------
# hot reload


class RuleBook:
    """The rules in force, reloaded when rule files change; an invalid edit is refused.

    >>> book = RuleBook(config.rules.paths, base_dir=config.base_dir)  # doctest: +SKIP
    >>> book.maybe_reload()  # every few seconds: cheap when nothing changed  # doctest: +SKIP
    False
    """

    def __init__(
        self,
        paths: Iterable[Path | str],
        base_dir: Path | None = None,
        *,
        vanish_grace: float = 0.0,
    ) -> None:
        self.paths = tuple(Path(p) for p in paths)
        self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        #: how long (seconds) a rule file in force may be missing before that counts as
        #: an edit: an editor's save (rename away, write anew) or a delete and re-create
        #: must not drop its rules, nor their watch folders, for a moment
        self.vanish_grace = vanish_grace
        self._vanished_at: float | None = None
        stamp = self._fingerprint()
        self._rules = load_rules(self.paths, self.base_dir)
        self._stamp = stamp
        self._refused: tuple[Any, ...] | None = None
        #: the rules in force as the ledger records them (content hash, files, values)
        self.version = RulesVersion.of(self._rules, time.time())
        #: set while the files on disk are refused (invalid), cleared by a good reload
        self.refusal: Refusal | None = None

    def __repr__(self) -> str:
        return f"RuleBook({[str(p) for p in self.paths]!r}, {self._rules!r})"

    @property
    def rules(self) -> RuleSet:
        """The rule set in force."""
        return self._rules

    def _fingerprint(self) -> tuple[Any, ...]:
        stamp: list[Any] = []
        for path in self.paths:
            try:
                if path.is_dir():
                    with os.scandir(path) as entries:
                        for entry in sorted(entries, key=lambda e: e.name):
                            if entry.name.endswith(".toml") and not entry.name.startswith("."):
                                st = entry.stat()
                                stamp.append(
                                    (
                                        entry.path,
                                        st.st_mtime_ns,
                                        st.st_ctime_ns,
                                        st.st_size,
                                        st.st_ino,
                                    )
                                )
                else:
                    st = path.stat()
                    stamp.append((str(path), st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
            except OSError:
                stamp.append((str(path), None))
        return tuple(stamp)

    def _vanishing(self) -> bool:
        """Whether a rule file in force has just gone missing (within ``vanish_grace``)."""
        if self.vanish_grace <= 0 or all(os.path.lexists(f) for f in self._rules.files):
            self._vanished_at = None
            return False
        now = time.monotonic()
        if self._vanished_at is None:
            self._vanished_at = now
        return now - self._vanished_at < self.vanish_grace

    def maybe_reload(self) -> bool:
        """Reload when a rule file was added, edited or removed; True when new rules took effect.

        An invalid edit is logged once (one error listing every problem) and the rules in
        force stay in force.
        """
        stamp = self._fingerprint()
        if stamp == self._stamp:
            # The files are back as they were when loaded (a refused edit undone).
            self._refused = self.refusal = None
            return False
        if stamp == self._refused or self._vanishing():
            return False
        result = check_rules(self.paths, self.base_dir)
        if result.ruleset is None:
            self._refused = stamp
            since = self.refusal.since if self.refusal is not None else time.time()
            self.refusal = Refusal(tuple(p.as_dict() for p in result.errors), since)
            log.error(
                "rule files changed but are invalid; keeping the %d rules in force "
                "(version %s):\n  %s",
                len(self._rules),
                self.version.short,
                "\n  ".join(str(p) for p in result.errors),
            )
            return False
        version = RulesVersion.of(result.ruleset, time.time())
        diff = diff_rules(self.version.rules, version.rules)
        previous = self.version
        self._rules, self._stamp, self._refused = result.ruleset, stamp, None
        self.version, self.refusal = version, None
        log.info(
            "rules reloaded: %d rules from %d files, version %s (was %s): %s",
            len(result.ruleset),
            len(result.files),
            version.short,
            previous.short,
            diff,
        )
        for warning in result.warnings:
            log.warning("%s", warning)
        return True
