"""Rules: which folders to watch, which files count, and what archive request each drop makes.

Rule files are TOML files of ``[[rule]]`` tables, edited by admins on live systems. They
are loaded from files or folders (a folder's ``*.toml`` files, sorted by file name) and
checked as a whole: every problem is reported at once, each naming file, line, rule and
key. Rules are tried in a stable order (the paths in the order given, file name, order in
the file) and the first rule that matches a path wins.

>>> # doctest: +SKIP
>>> book = RuleBook(["rules"], base_dir=Path("/etc/ingest"))
>>> m = book.rules.match(Path("/mnt/nas/news/clip.mxf"))
>>> body = build_archive_body(m.rule, m.rule.drop_for(m))
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import defaults
from .errors import RulesError
from .protocol import DELETE_ON_SOURCE, QOS_NAMES
from .templates import (
    FILE_FIELDS,
    FOLDER_FIELDS,
    Drop,
    DropRefused,
    Kind,
    Template,
    TemplateError,
    UnsafeNameError,
    check_component,
    check_name,
    clean_comment,
)
from .tomlcheck import Field, Problem, Severity, TableLines, check_table, did_you_mean, parse_toml

__all__ = [
    "CheckResult",
    "Drop",
    "DropRefused",
    "Explanation",
    "Match",
    "Problem",
    "Rule",
    "RuleBook",
    "RuleSet",
    "Trial",
    "UnsafeNameError",
    "build_archive_body",
    "check_rules",
    "glob_regex",
    "load_rules",
    "rule_files",
]

log = logging.getLogger("ingest.rules")

# ---------------------------------------------------------------------------------------
# globs


def glob_regex(pattern: str) -> str:
    """The regex (for ``fullmatch``) of a glob: ``**`` spans folders, ``*`` and ``?`` do not.

    ``**/`` also matches no folder at all, so ``**/*.mov`` matches ``a.mov`` and ``x/y/a.mov``.

    >>> bool(re.fullmatch(glob_regex("**/*.mov"), "a/b/c.mov")), bool(re.fullmatch(glob_regex("*.mov"), "a/c.mov"))
    (True, False)
    """  # noqa: E501
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            else:
                out.append(".*")
                i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : j]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            body = body.replace("\\", "\\\\").replace("^", "\\^")
            out.append(f"[^/{body}]" if negate else f"(?!/)[{body}]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _pattern_problem(pattern: str) -> str | None:
    if not pattern.strip():
        return "an empty pattern matches nothing"
    if "\\" in pattern:
        return f"{pattern!r}: use '/' to separate folders (backslash is not allowed)"
    if ".." in pattern.split("/"):
        return f"{pattern!r}: '..' would reach outside the watch folder"
    if pattern.startswith("/"):
        return f"{pattern!r}: patterns are relative to the watch folder; drop the leading '/'"
    return None


@dataclass(frozen=True)
class _Glob:
    pattern: str
    regex: re.Pattern[str]

    @classmethod
    def compile(cls, pattern: str, ignore_case: bool) -> _Glob:
        flags = re.IGNORECASE if ignore_case else 0
        return cls(pattern, re.compile(glob_regex(pattern), flags | re.DOTALL))

    def hit(self, text: str) -> bool:
        return self.regex.fullmatch(text) is not None


class _Ignores:
    """Built-in ignores and a rule's own, and why a path is hidden.

    Built-ins and slash-free user globs match any single path component's name (so
    ``.DS_Store`` or ``proxy`` hide themselves and all below them at any depth, like
    ``.gitignore``); user globs with a ``/`` match the path from the watch folder, or one
    of its parent folders' paths.
    """

    def __init__(self, user: Sequence[str], ignore_case: bool) -> None:
        self.builtin = [_Glob.compile(p, False) for p in defaults.BUILTIN_IGNORES]
        self.names = [_Glob.compile(p, ignore_case) for p in user if "/" not in p]
        self.paths = [_Glob.compile(p.rstrip("/"), ignore_case) for p in user if "/" in p]

    def hit(self, relpath: str) -> str | None:
        parts = relpath.split("/")
        for index, part in enumerate(parts):
            for glob in self.builtin:
                if glob.hit(part):
                    return f"built-in ignore {glob.pattern!r} (matches {part!r})"
            for glob in self.names:
                if glob.hit(part):
                    return f"ignore {glob.pattern!r} (matches {part!r})"
            if self.paths:
                prefix = "/".join(parts[: index + 1])
                for glob in self.paths:
                    if glob.hit(prefix):
                        return f"ignore {glob.pattern!r} (matches {prefix!r})"
        return None


# ---------------------------------------------------------------------------------------
# the rule


Mode = Literal["file", "folder"]
_MARKER_FILE_FIELDS = frozenset({"name", "stem", "ext"})
_MARKER_FOLDER_FIELDS = frozenset({"folder", "name"})


def _norm(path: Path) -> str:
    return os.path.normpath(os.path.abspath(path))


@dataclass(frozen=True, repr=False)
class Rule:
    """One ``[[rule]]``: where to watch, what counts, and the archive request to make.

    Build it from a rule file with :func:`load_rules`; build one directly in tests:

    >>> Rule(name="news", watch=Path("/w"), match=("*.mxf",), collection="NEWS",
    ...      media="TAPE", source_server="NAS")
    Rule('news', watch='/w', mode='file', match=['*.mxf'])
    """

    name: str
    watch: Path
    match: tuple[str, ...]
    collection: str
    media: str
    source_server: str
    ignore: tuple[str, ...] = ()
    mode: Mode = "file"
    settle_seconds: float = defaults.RULE_SETTLE_SECONDS
    ready_marker: str = defaults.RULE_READY_MARKER
    object_name: str = defaults.RULE_OBJECT_NAME
    qos: int = QOS_NAMES[defaults.RULE_QOS]
    delete_on_source: bool = defaults.RULE_DELETE_ON_SOURCE
    priority: int = defaults.RULE_PRIORITY
    file_path_root: str = defaults.RULE_FILE_PATH_ROOT
    comments: str = defaults.RULE_COMMENTS
    options: str = defaults.RULE_OPTIONS
    on_conflict: Literal["fail", "skip", "suffix"] = "fail"
    observer: Literal["auto", "native", "polling"] = "auto"
    enabled: bool = defaults.RULE_ENABLED
    ignore_case: bool = defaults.RULE_IGNORE_CASE
    description: str = ""
    #: where the rule was defined (for messages); None when built in code
    source: Path | None = field(default=None, compare=False)
    line: int | None = field(default=None, compare=False)

    # compiled once, at construction (templates were checked by the loader)
    _globs: tuple[_Glob, ...] = field(init=False, compare=False)
    _ignores: _Ignores = field(init=False, compare=False)
    _templates: dict[str, Template] = field(init=False, compare=False)
    _marker_rx: re.Pattern[str] | None = field(init=False, compare=False)
    _watch: str = field(init=False, compare=False)
    _watch_real: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        fields = FOLDER_FIELDS if self.mode == "folder" else FILE_FIELDS
        marker_fields = _MARKER_FOLDER_FIELDS if self.mode == "folder" else _MARKER_FILE_FIELDS
        templates = {
            "object_name": Template.compile(self.object_name, fields),
            "collection": Template.compile(self.collection, fields),
            "comments": Template.compile(self.comments, fields),
        }
        marker_rx = None
        if self.ready_marker:
            marker = Template.compile(self.ready_marker, marker_fields)
            templates["ready_marker"] = marker
            if self.mode == "file":
                # Any file whose name fits the marker's shape is a marker, never a drop.
                rx = "".join(re.escape(lit) + ("(.+)" if f else "") for lit, f, _ in marker.pieces)
                marker_rx = re.compile(rx, re.DOTALL)
        setter = object.__setattr__
        setter(self, "watch", Path(_norm(self.watch)))
        setter(self, "_globs", tuple(_Glob.compile(p, self.ignore_case) for p in self.match))
        setter(self, "_ignores", _Ignores(self.ignore, self.ignore_case))
        setter(self, "_templates", templates)
        setter(self, "_marker_rx", marker_rx)
        setter(self, "_watch", str(self.watch))
        setter(self, "_watch_real", os.path.realpath(self.watch))

    def __repr__(self) -> str:
        where = f", from {self.source.name}:{self.line}" if self.source is not None else ""
        off = ", disabled" if not self.enabled else ""
        return (
            f"Rule({self.name!r}, watch={self._watch!r}, mode={self.mode!r}, "
            f"match={list(self.match)!r}{off}{where})"
        )

    @property
    def where(self) -> str:
        """``file:line`` of the rule, for messages."""
        if self.source is None:
            return "(built in code)"
        return f"{self.source}:{self.line}" if self.line else str(self.source)

    @property
    def wire_qos(self) -> int:
        """``qos`` as sent to DIVA: with 0x100 OR-ed in when ``delete_on_source``."""
        return self.qos | DELETE_ON_SOURCE if self.delete_on_source else self.qos

    # --- paths ------------------------------------------------------------------------

    def relpath(self, path: Path) -> str | None:
        """``path`` relative to ``watch`` (``/``-separated), or None when it is not below it.

        Lexical only: a path with ``..`` is never below; symlinks are checked by :meth:`try_path`.
        """
        if not path.is_absolute() or ".." in path.parts:
            return None
        text = str(path)
        for root in (self._watch, self._watch_real):
            if text == root:
                return ""
            prefix = root if root.endswith("/") else root + "/"
            if text.startswith(prefix):
                return text[len(prefix) :]
        return None

    def ignored(self, relpath: str) -> str | None:
        """Why ``relpath`` (relative to ``watch``) is ignored, or None when it counts."""
        return self._ignores.hit(relpath)

    def _through_symlink(self, relpath: str) -> bool:
        expected = os.path.join(self._watch_real, *relpath.split("/"))
        return os.path.realpath(expected) != expected

    def marker_name(self, drop: Drop) -> str | None:
        """The ready marker's file name for ``drop``, or None when the rule has none."""
        template = self._templates.get("ready_marker")
        return None if template is None else template.render(drop.fields())

    def marker_path(self, drop: Drop) -> Path | None:
        """Where ``drop``'s ready marker must appear: beside a file, inside a folder."""
        name = self.marker_name(drop)
        if name is None:
            return None
        return (drop.path if self.mode == "folder" else drop.path.parent) / name

    def try_path(self, path: Path) -> Trial:
        """Whether this rule takes ``path`` (absolute), and why or why not."""
        if not self.enabled:
            return Trial(self.name, "disabled", "the rule is disabled (enabled = false)")
        rel = self.relpath(path)
        if rel is None:
            return Trial(self.name, "outside", f"not inside the watch folder {self._watch}")
        if rel == "":
            return Trial(self.name, "not-a-drop", "this is the watch folder itself", rel)
        if self.mode == "folder":
            return self._try_folder(path, rel)
        return self._try_file(path, rel)

    def _try_file(self, path: Path, rel: str) -> Trial:
        base = rel.rsplit("/", 1)[-1]
        if self._marker_rx is not None and self._marker_rx.fullmatch(base):
            return Trial(self.name, "marker", f"a ready marker ({self.ready_marker!r})", rel)
        hidden = self.ignored(rel)
        if hidden:
            return Trial(self.name, "ignored", f"hidden by the {hidden}", rel, ignored_by=hidden)
        if not any(glob.hit(rel) for glob in self._globs):
            return Trial(self.name, "no-pattern", "no match pattern fits", rel, self.match)
        if self._through_symlink(rel):
            return Trial(self.name, "symlink", "a symlink (or below one): never archived", rel)
        found = Match(self, path, rel, "file")
        return Trial(self.name, "match", "matches (file drop)", rel, self.match, match=found)

    def _try_folder(self, path: Path, rel: str) -> Trial:
        top, _, rest = rel.partition("/")
        if rest and self.ready_marker:
            marker = self._templates["ready_marker"].render({"folder": top, "name": top})
            if rest == marker:
                found = Match(self, path, top, "folder", member=rel, marker=True)
                detail = f"the ready marker of folder drop {top!r}"
                return Trial(self.name, "match", detail, rel, self.match, match=found)
        hidden = self.ignored(rel)
        if hidden:
            return Trial(self.name, "ignored", f"hidden by the {hidden}", rel, ignored_by=hidden)
        if not rest and os.path.lexists(path) and not os.path.isdir(path):
            detail = "folder mode: files directly in the watch folder are not drops"
            return Trial(self.name, "not-a-drop", detail, rel)
        if not any(glob.hit(top) for glob in self._globs):
            detail = f"the folder name {top!r} fits no match pattern"
            return Trial(self.name, "no-pattern", detail, rel, self.match)
        if self._through_symlink(rel):
            return Trial(self.name, "symlink", "a symlink (or below one): never archived", rel)
        found = Match(self, path, top, "folder", member=rel if rest else None)
        detail = f"matches (folder drop {top!r})"
        return Trial(self.name, "match", detail, rel, self.match, match=found)

    # --- drops ------------------------------------------------------------------------

    def folder_members(self, folder: str) -> tuple[tuple[str, ...], int, float]:
        """The files of folder drop ``folder`` (relpaths to ``watch``, sorted), their total
        size and newest mtime. Ignored files, the ready marker, symlinks and anything
        that is not a regular file do not count.
        """
        marker = self.marker_name(Drop(self.name, self.watch, folder, "folder"))
        members: list[str] = []
        size, newest = 0, 0.0
        stack = [folder]
        while stack:
            current = stack.pop()
            try:
                entries = list(os.scandir(os.path.join(self._watch, *current.split("/"))))
            except OSError as exc:
                log.debug("cannot list %s: %s", current, exc)
                continue
            for entry in entries:
                rel = f"{current}/{entry.name}"
                if self.ignored(rel) or (marker is not None and rel == f"{folder}/{marker}"):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(rel)
                elif stat.S_ISREG(st.st_mode):
                    members.append(rel)
                    size += st.st_size
                    newest = max(newest, st.st_mtime)
        return tuple(sorted(members)), size, newest

    def drop_for(self, match: Match) -> Drop:
        """The drop ``match`` belongs to, read from disk now (sizes, mtimes, members)."""
        if match.kind == "folder":
            members, size, mtime = self.folder_members(match.drop)
            return Drop(self.name, self.watch, match.drop, "folder", size, mtime, members)
        st = os.stat(match.drop_path, follow_symlinks=False)
        return Drop(self.name, self.watch, match.drop, "file", st.st_size, st.st_mtime)

    def render(self, key: str, drop: Drop, now: float | None = None) -> str:
        """Template ``key`` (``object_name``, ``collection``, ``comments``) filled for ``drop``."""
        return self._templates[key].render(drop.fields(now))


@dataclass(frozen=True)
class Match:
    """``path`` belongs to a drop of ``rule``: the file, or the top-level folder ``drop``.

    ``member`` (folder mode) is the path of the file inside the folder, relative to
    ``watch``; None when ``path`` is the folder itself. ``marker`` is True when ``path``
    is the folder's ready marker.
    """

    rule: Rule
    path: Path
    drop: str
    kind: Kind
    member: str | None = None
    marker: bool = False

    @property
    def drop_path(self) -> Path:
        return self.rule.watch.joinpath(*self.drop.split("/"))


Outcome = Literal[
    "match", "outside", "disabled", "ignored", "no-pattern", "marker", "symlink", "not-a-drop"
]


@dataclass(frozen=True)
class Trial:
    """One rule tried on one path: the outcome and a sentence saying why."""

    rule: str
    outcome: Outcome
    detail: str
    relpath: str | None = None
    patterns: tuple[str, ...] = ()
    ignored_by: str | None = None
    match: Match | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "outcome": self.outcome,
            "detail": self.detail,
            "relpath": self.relpath,
            "patterns": list(self.patterns),
            "ignored_by": self.ignored_by,
        }


# ---------------------------------------------------------------------------------------
# the archive request


def build_archive_body(rule: Rule, drop: Drop, now: float | None = None) -> dict[str, Any]:
    """The exact JSON body of ``POST /requests/archive`` for ``drop``.

    Raises :class:`DropRefused` (or its :class:`UnsafeNameError`) with a reason when the
    drop cannot be archived safely: an unsafe rendered name, an undecodable or control
    character in a file path, a folder with nothing to archive.
    """
    fields = drop.fields(now)
    object_name = rule._templates["object_name"].render(fields)
    problem = check_name(object_name, defaults.OBJECT_NAME_MAX_CHARS)
    if problem:
        raise UnsafeNameError("object name", object_name, problem)
    collection = rule._templates["collection"].render(fields)
    problem = check_name(collection, defaults.COLLECTION_MAX_CHARS)
    if problem:
        raise UnsafeNameError("collection", collection, problem)
    components = list(drop.members) if drop.kind == "folder" else [drop.relpath]
    if not components:
        raise DropRefused(f"folder {drop.relpath!r} holds no file to archive")
    for component in components:
        problem = check_component(component)
        if problem:
            raise UnsafeNameError("file", component, problem)
    return {
        "objectName": object_name,
        "collectionName": collection,
        "components": components,
        "media": rule.media,
        "sourceServer": rule.source_server,
        "filePathRoot": rule.file_path_root,
        "qos": rule.wire_qos,
        "priority": rule.priority,
        "comments": clean_comment(rule._templates["comments"].render(fields)),
        "options": rule.options,
    }


# ---------------------------------------------------------------------------------------
# the rule set


@dataclass(frozen=True)
class Explanation:
    """Why ``path`` is (or is not) a drop: every rule tried, the match, and the request body."""

    path: Path
    trials: tuple[Trial, ...]
    match: Match | None
    drop: Drop | None = None
    body: dict[str, Any] | None = None
    refused: str | None = None
    marker: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        drop = self.drop
        return {
            "path": str(self.path),
            "matched": self.match is not None,
            "rule": self.match.rule.name if self.match else None,
            "drop": None
            if drop is None
            else {
                "kind": drop.kind,
                "watch": str(drop.watch),
                "relpath": drop.relpath,
                "size": drop.size,
                "mtime": drop.mtime,
                "members": list(drop.members) if drop.kind == "folder" else None,
            },
            "ready_marker": None
            if self.marker is None
            else {"path": str(self.marker), "present": os.path.lexists(self.marker)},
            "body": self.body,
            "refused": self.refused,
            "trials": [t.as_dict() for t in self.trials],
        }


class RuleSet:
    """Valid rules in match order, with the warnings found when they were loaded."""

    def __init__(
        self,
        rules: Iterable[Rule],
        files: Iterable[Path] = (),
        warnings: Iterable[Problem] = (),
    ) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.files: tuple[Path, ...] = tuple(files)
        self.warnings: tuple[Problem, ...] = tuple(warnings)
        self._by_name = {rule.name: rule for rule in self.rules}

    def __repr__(self) -> str:
        return f"RuleSet({[r.name for r in self.rules]!r}, files={len(self.files)})"

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def get(self, name: str) -> Rule | None:
        return self._by_name.get(name)

    def watch_folders(self) -> dict[Path, tuple[Rule, ...]]:
        """Each distinct watch folder of the enabled rules, with its rules in match order."""
        folders: dict[Path, list[Rule]] = {}
        for rule in self.rules:
            if rule.enabled:
                folders.setdefault(rule.watch, []).append(rule)
        return {folder: tuple(rules) for folder, rules in folders.items()}

    def match(self, path: Path) -> Match | None:
        """The first rule's match for ``path`` (absolute), or None when no rule takes it."""
        for rule in self.rules:
            trial = rule.try_path(path)
            if trial.match is not None:
                return trial.match
        return None

    def explain(
        self, path: Path, *, read_disk: bool = True, now: float | None = None
    ) -> Explanation:
        """Every rule tried on ``path``; with ``read_disk``, also the drop and request body."""
        path = Path(os.path.abspath(path)) if ".." not in Path(path).parts else Path(path)
        trials: list[Trial] = []
        winner: Match | None = None
        for rule in self.rules:
            trial = rule.try_path(path)
            if trial.match is not None:
                if winner is None:
                    winner = trial.match
                else:
                    detail = trial.detail + f", but rule {winner.rule.name!r} comes first"
                    trial = Trial(trial.rule, "match", detail, trial.relpath, trial.patterns)
            trials.append(trial)
        if winner is None or not read_disk:
            return Explanation(path, tuple(trials), winner)
        rule = winner.rule
        try:
            drop = rule.drop_for(winner)
        except OSError as exc:
            return Explanation(path, tuple(trials), winner, refused=f"cannot read: {exc}")
        marker = rule.marker_path(drop)
        try:
            body = build_archive_body(rule, drop, now)
        except DropRefused as exc:
            return Explanation(path, tuple(trials), winner, drop, None, exc.reason, marker)
        return Explanation(path, tuple(trials), winner, drop, body, None, marker)


# ---------------------------------------------------------------------------------------
# loading and checking


def _one_of(*choices: str) -> Any:
    def check(value: str) -> str | None:
        if value in choices:
            return None
        return f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}" + (
            did_you_mean(value, list(choices))
        )

    return check


def _qos(value: str | int) -> str | None:
    if isinstance(value, str):
        if value in QOS_NAMES:
            return None
        return f"unknown QoS {value!r}; one of {', '.join(QOS_NAMES)} or 0-4" + did_you_mean(
            value, list(QOS_NAMES)
        )
    if 0 <= value <= 4:
        return None
    if value & DELETE_ON_SOURCE:
        return f"{value} includes 0x100: give 0-4 and set delete_on_source = true instead"
    return f"must be 0-4 or a name ({', '.join(QOS_NAMES)}), got {value}"


def _settle(value: float) -> str | None:
    return None if math.isfinite(value) and value >= 0 else f"must be >= 0, got {value}"


def _priority(value: int) -> str | None:
    return None if value == -1 or 1 <= value <= 100 else f"must be 1-100 or -1, got {value}"


_NAME_RX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _rule_name(value: str) -> str | None:
    if _NAME_RX.fullmatch(value):
        return None
    return f"{value!r}: use 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit)"


def _non_empty(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    problem = check_component(value)
    return f"{problem}" if problem else None


def _patterns(value: tuple[str, ...]) -> str | None:
    for pattern in value:
        problem = _pattern_problem(pattern)
        if problem:
            return problem
    return None


def _match(value: tuple[str, ...]) -> str | None:
    return "must hold at least one pattern" if not value else _patterns(value)


RULE_FIELDS: dict[str, Field] = {
    f.name: f
    for f in [
        Field("name", "str", check=_rule_name),
        Field("watch", "str", check=_non_empty),
        Field("match", "str_list", check=_match),
        Field("ignore", "str_list", (), check=_patterns),
        Field("mode", "str", defaults.RULE_MODE, check=_one_of("file", "folder")),
        Field("settle_seconds", "number", defaults.RULE_SETTLE_SECONDS, check=_settle),
        Field("ready_marker", "str", defaults.RULE_READY_MARKER),
        Field("object_name", "str", defaults.RULE_OBJECT_NAME),
        Field("collection", "str"),
        Field("media", "str", check=_non_empty),
        Field("qos", "str_or_int", defaults.RULE_QOS, check=_qos),
        Field("delete_on_source", "bool", defaults.RULE_DELETE_ON_SOURCE),
        Field("priority", "int", defaults.RULE_PRIORITY, check=_priority),
        Field("source_server", "str", check=_non_empty),
        Field("file_path_root", "str", defaults.RULE_FILE_PATH_ROOT),
        Field("comments", "str", defaults.RULE_COMMENTS),
        Field("options", "str", defaults.RULE_OPTIONS),
        Field("on_conflict", "str", "fail", check=_one_of("fail", "skip", "suffix")),
        Field("observer", "str", "auto", check=_one_of("auto", "native", "polling")),
        Field("enabled", "bool", defaults.RULE_ENABLED),
        Field("ignore_case", "bool", defaults.RULE_IGNORE_CASE),
        Field("description", "str", ""),
    ]
}


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
    mode = values.get("mode", "file")
    fields = FOLDER_FIELDS if mode == "folder" else FILE_FIELDS
    samples = [Drop("sample", Path("/"), "sample.mxf", "folder" if mode == "folder" else "file")]
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
            rendered = template.render(samples[0].fields(now=0.0))
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
        allowed = _MARKER_FOLDER_FIELDS if mode == "folder" else _MARKER_FILE_FIELDS
        try:
            compiled = Template.compile(marker, allowed)
            if "/" in marker or "\\" in marker:
                report("ready_marker", "must be a file name, not a path")
            elif not "".join(lit for lit, _, _ in compiled.pieces).strip():
                report("ready_marker", 'must add text to the name, e.g. "{name}.ready"')
        except TemplateError as exc:
            report("ready_marker", f"bad template: {exc}")
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
    globs = [g if rule.mode == "file" else g + "/**" for g in rule.match]
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
            ga = [_Glob.compile(g, True) for g in _file_globs(first, pa)]
            gb = [_Glob.compile(g, True) for g in _file_globs(second, pb)]
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

    >>> # doctest: +SKIP
    >>> book = RuleBook(config.rules.paths, base_dir=config.base_dir)
    >>> book.maybe_reload()   # every few seconds: cheap when nothing changed
    False
    """

    def __init__(self, paths: Iterable[Path | str], base_dir: Path | None = None) -> None:
        self.paths = tuple(Path(p) for p in paths)
        self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        stamp = self._fingerprint()
        self._rules = load_rules(self.paths, self.base_dir)
        self._stamp = stamp
        self._refused: tuple[Any, ...] | None = None

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

    def maybe_reload(self) -> bool:
        """Reload when a rule file was added, edited or removed; True when new rules took effect.

        An invalid edit is logged once (one error listing every problem) and the rules in
        force stay in force.
        """
        stamp = self._fingerprint()
        if stamp == self._stamp or stamp == self._refused:
            return False
        result = check_rules(self.paths, self.base_dir)
        if result.ruleset is None:
            self._refused = stamp
            log.error(
                "rule files changed but are invalid; keeping the %d rules in force:\n  %s",
                len(self._rules),
                "\n  ".join(str(p) for p in result.errors),
            )
            return False
        old = {r.name: r for r in self._rules}
        new = {r.name: r for r in result.ruleset}
        added = sorted(new.keys() - old.keys())
        removed = sorted(old.keys() - new.keys())
        changed = sorted(n for n in new.keys() & old.keys() if new[n] != old[n])
        self._rules, self._stamp, self._refused = result.ruleset, stamp, None
        log.info(
            "rules reloaded: %d rules from %d files (added %s; removed %s; changed %s)",
            len(new),
            len(result.files),
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
            ", ".join(changed) or "none",
        )
        for warning in result.warnings:
            log.warning("%s", warning)
        return True
