"""Rules: which folders to watch, which files count, and what archive request each drop makes.

A :class:`Rule` is one ``[[rule]]`` table of a rule file, compiled once: its globs, its
ignores, its templates. Rules are tried in a stable order (the paths in the order given,
file name, order in the file) and the first rule that matches a path wins
(:meth:`RuleSet.match`). The globs are in :mod:`ingest.globs`; the archive request a drop
makes (:func:`build_archive_body`) in :mod:`ingest.archivebody`; ``rules explain``'s
:class:`Explanation` in :mod:`ingest.explain`. Loading and checking rule files, and hot
reload, are in :mod:`ingest.rulefiles`.

>>> rules = load_rules(["rules"], base_dir=Path("/etc/ingest"))  # doctest: +SKIP
>>> m = rules.match(Path("/mnt/nas/news/clip.mxf"))  # doctest: +SKIP
>>> body = build_archive_body(m.rule, m.rule.drop_for(m))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import defaults
from .archivebody import build_archive_body, build_fileset_body
from .explain import Explanation, explain_fileset, explain_sidecar
from .globs import Glob, Ignores, glob_regex
from .members import FileSet, fileset_members, folder_members
from .protocol import DELETE_ON_SOURCE, QOS_NAMES
from .sidecar import FieldSpec, read_fields
from .templates import (
    FILE_FIELDS,
    FOLDER_FIELDS,
    Drop,
    DropRefused,
    Kind,
    Template,
    UnsafeNameError,
)
from .tomlcheck import Problem

__all__ = [
    "Drop",
    "DropRefused",
    "Explanation",
    "Match",
    "Problem",
    "Rule",
    "RuleSet",
    "Trial",
    "UnsafeNameError",
    "build_archive_body",
    "build_fileset_body",
    "glob_regex",
]

# ---------------------------------------------------------------------------------------
# the rule


Mode = Literal["file", "folder", "fileset"]
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
    mode: Mode = defaults.RULE_MODE
    settle_seconds: float = defaults.RULE_SETTLE_SECONDS
    ready_marker: str = defaults.RULE_READY_MARKER
    object_name: str = defaults.RULE_OBJECT_NAME
    qos: int = QOS_NAMES[defaults.RULE_QOS]
    delete_on_source: bool = defaults.RULE_DELETE_ON_SOURCE
    priority: int = defaults.RULE_PRIORITY
    file_path_root: str = defaults.RULE_FILE_PATH_ROOT
    comments: str = defaults.RULE_COMMENTS
    options: str = defaults.RULE_OPTIONS
    on_conflict: Literal["fail", "skip", "suffix"] = defaults.RULE_ON_CONFLICT
    #: fileset mode: the manifests' glob (``match`` is set to it when not given)
    manifest: str = defaults.RULE_MANIFEST
    manifest_priority: Literal["primary", "secondary"] = defaults.RULE_MANIFEST_PRIORITY
    archive_manifest: bool = defaults.RULE_ARCHIVE_MANIFEST
    incomplete_after_seconds: float = defaults.RULE_INCOMPLETE_AFTER_SECONDS
    observer: Literal["auto", "native", "polling"] = defaults.RULE_OBSERVER
    enabled: bool = defaults.RULE_ENABLED
    ignore_case: bool = defaults.RULE_IGNORE_CASE
    description: str = defaults.RULE_DESCRIPTION
    #: the sidecar's file name, a template beside a file drop (inside a folder drop)
    sidecar: str = defaults.RULE_SIDECAR
    #: ``[rule.fields]``: (name, "xml:/Root/Path" or "json:/pointer") pairs
    fields: tuple[tuple[str, str], ...] = ()
    sidecar_wait_seconds: float = defaults.RULE_SIDECAR_WAIT_SECONDS
    sidecar_required: bool = defaults.RULE_SIDECAR_REQUIRED
    archive_sidecar: bool = defaults.RULE_ARCHIVE_SIDECAR
    checksum: str = defaults.RULE_CHECKSUM
    #: where the rule was defined (for messages); None when built in code
    source: Path | None = field(default=None, compare=False)
    line: int | None = field(default=None, compare=False)

    # compiled once, at construction (templates were checked by the loader)
    _globs: tuple[Glob, ...] = field(init=False, compare=False)
    _ignores: Ignores = field(init=False, compare=False)
    _templates: dict[str, Template] = field(init=False, compare=False)
    _marker_rx: re.Pattern[str] | None = field(init=False, compare=False)
    _sidecar_rx: re.Pattern[str] | None = field(init=False, compare=False)
    _field_specs: tuple[FieldSpec, ...] = field(init=False, compare=False)
    _watch: str = field(init=False, compare=False)
    _watch_real: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        given = self.fields.items() if isinstance(self.fields, dict) else self.fields
        pairs = tuple((str(k), str(v)) for k, v in given)
        specs = tuple(FieldSpec.parse(k, v) for k, v in pairs)
        fields = FOLDER_FIELDS if self.mode == "folder" else FILE_FIELDS
        fields = fields | {f"meta.{spec.name}" for spec in specs}
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
        sidecar_rx = None
        if self.sidecar:
            sidecar = Template.compile(self.sidecar, marker_fields)
            templates["sidecar"] = sidecar
            if self.mode == "file":
                # A file shaped like a sidecar is one, never a drop of its own.
                rx = "".join(re.escape(lit) + ("(.+)" if f else "") for lit, f, _ in sidecar.pieces)
                sidecar_rx = re.compile(rx, re.DOTALL)
        setter = object.__setattr__
        setter(self, "fields", pairs)
        setter(self, "_field_specs", specs)
        setter(self, "_sidecar_rx", sidecar_rx)
        setter(self, "watch", Path(_norm(self.watch)))
        setter(self, "_globs", tuple(Glob.compile(p, self.ignore_case) for p in self.match))
        setter(self, "_ignores", Ignores(self.ignore, self.ignore_case))
        setter(self, "_templates", templates)
        setter(self, "_marker_rx", marker_rx)
        setter(self, "_watch", str(self.watch))
        setter(self, "_watch_real", os.path.realpath(self.watch))
        if self.mode == "fileset" and not self.match and self.manifest:
            setter(self, "match", (self.manifest,))
            setter(self, "_globs", (Glob.compile(self.manifest, self.ignore_case),))

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

    def sidecar_path(self, drop: Drop) -> Path | None:
        """Where ``drop``'s sidecar is: beside a file, inside a folder (None: no sidecar)."""
        template = self._templates.get("sidecar")
        if template is None:
            return None
        name = template.render(drop.fields())
        return (drop.path if self.mode == "folder" else drop.path.parent) / name

    def sidecar_relpath(self, drop: Drop) -> str | None:
        """The sidecar's path relative to ``watch`` (as a component is named)."""
        path = self.sidecar_path(drop)
        return None if path is None else self.relpath(path)

    def read_sidecar(self, drop: Drop) -> dict[str, str]:
        """The ``[rule.fields]`` values in ``drop``'s sidecar (those found); raises
        :class:`~ingest.sidecar.SidecarError` when it is missing or cannot be read safely."""
        path = self.sidecar_path(drop)
        if path is None:
            return {}
        return read_fields(path, self._field_specs)

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
        if self.mode == "fileset":
            return self._try_fileset(path, rel)
        return self._try_file(path, rel)

    def is_manifest(self, relpath: str) -> bool:
        """Whether ``relpath`` is one of this fileset rule's manifests."""
        return self.mode == "fileset" and any(glob.hit(relpath) for glob in self._globs)

    def _try_fileset(self, path: Path, rel: str) -> Trial:
        hidden = self.ignored(rel)
        if hidden:
            return Trial(self.name, "ignored", f"hidden by the {hidden}", rel, ignored_by=hidden)
        if not self.is_manifest(rel):
            # The files a manifest lists go with it: never drops of their own here.
            detail = f"fileset mode: only manifests ({self.manifest!r}) are drops"
            return Trial(self.name, "not-a-drop", detail, rel, self.match)
        if self._through_symlink(rel):
            return Trial(self.name, "symlink", "a symlink (or below one): never archived", rel)
        found = Match(self, path, rel, "fileset")
        return Trial(
            self.name, "match", "matches (file set manifest)", rel, self.match, match=found
        )

    def read_fileset(self, relpath: str) -> FileSet | None:
        """The file set of the manifest at ``relpath`` as it is on disk now (None: gone)."""
        return fileset_members(self._watch, relpath, self)

    def _try_file(self, path: Path, rel: str) -> Trial:
        base = rel.rsplit("/", 1)[-1]
        if self._marker_rx is not None and self._marker_rx.fullmatch(base):
            return Trial(self.name, "marker", f"a ready marker ({self.ready_marker!r})", rel)
        if self._sidecar_rx is not None and self._sidecar_rx.fullmatch(base):
            return Trial(self.name, "sidecar", f"a sidecar ({self.sidecar!r})", rel)
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

    def drop_for(self, match: Match) -> Drop:
        """The drop ``match`` belongs to, read from disk now (sizes, mtimes, members), as
        the daemon reads it (:func:`ingest.members.folder_members` for a folder)."""
        unread = match.identity
        if match.kind == "fileset":
            found_set = self.read_fileset(match.drop)
            if found_set is None:
                raise FileNotFoundError(f"the manifest {match.drop!r} is gone")
            return unread.signed(found_set.signature, found_set.members.files)
        if match.kind == "folder":
            found = folder_members(self._watch, match.drop, self)
            return unread.signed((found.size, found.mtime_ns, found.count), found.files)
        st = os.stat(match.drop_path, follow_symlinks=False)
        return unread.signed((st.st_size, st.st_mtime_ns, 1))

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

    @property
    def identity(self) -> Drop:
        """The drop this path belongs to, not read yet (no signature): see
        :meth:`Rule.drop_for`. Built on demand: matching runs once per file of a scan."""
        return Drop(self.rule.name, str(self.rule.watch), self.drop, self.kind)


Outcome = Literal[
    "match",
    "outside",
    "disabled",
    "ignored",
    "no-pattern",
    "marker",
    "sidecar",
    "symlink",
    "not-a-drop",
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
# the rule set


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
        if winner.kind == "fileset":
            return explain_fileset(Explanation(path, tuple(trials), winner, drop), now)
        marker = rule.marker_path(drop)
        sidecar, meta, found = explain_sidecar(rule, drop)
        try:
            body = build_archive_body(rule, drop, now, meta=meta, sidecar=found)
        except DropRefused as exc:
            return Explanation(path, tuple(trials), winner, drop, None, exc.reason, marker, sidecar)
        return Explanation(path, tuple(trials), winner, drop, body, None, marker, sidecar)
