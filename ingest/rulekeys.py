"""The keys of a ``[[rule]]``: their types, defaults and checks, and the rules between them.

:data:`RULE_FIELDS` is the table each rule is checked against (every problem at once, with a
did-you-mean for a misspelt key or value); :func:`fileset_problems` and
:func:`sidecar_problems` check the keys that go together. Reading rule files, checking the
rules as a whole and hot reload are :mod:`ingest.rulefiles`'s.
"""

from __future__ import annotations

import math
import re
from typing import Any

from . import defaults
from .globs import pattern_problem
from .hashing import ALGORITHMS, xxh64_available
from .protocol import DELETE_ON_SOURCE, QOS_NAMES
from .rules import _MARKER_FILE_FIELDS, _MARKER_FOLDER_FIELDS
from .sidecar import FieldSpec
from .templates import Template, TemplateError, check_component
from .tomlcheck import Field, did_you_mean

__all__ = ["RULE_FIELDS", "beside_problems", "fileset_problems", "sidecar_problems"]


def _one_of(*choices: str) -> Any:
    def check(value: str) -> str | None:
        if value in choices:
            return None
        return f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}" + (
            did_you_mean(value, list(choices))
        )

    return check


_QOS_RANGE = f"{min(QOS_NAMES.values())}-{max(QOS_NAMES.values())}"


def _qos(value: str | int) -> str | None:
    if isinstance(value, str):
        if value in QOS_NAMES:
            return None
        return f"unknown QoS {value!r}; one of {', '.join(QOS_NAMES)} or {_QOS_RANGE}" + (
            did_you_mean(value, list(QOS_NAMES))
        )
    if value in QOS_NAMES.values():
        return None
    if value & DELETE_ON_SOURCE:
        return f"{value} includes 0x100: give {_QOS_RANGE} and set delete_on_source = true instead"
    return f"must be {_QOS_RANGE} or a name ({', '.join(QOS_NAMES)}), got {value}"


def _settle(value: float) -> str | None:
    return None if math.isfinite(value) and value >= 0 else f"must be >= 0, got {value}"


def _priority(value: int) -> str | None:
    low, high = defaults.DIVA_PRIORITY_MIN, defaults.DIVA_PRIORITY_MAX
    if value == defaults.RULE_PRIORITY or low <= value <= high:
        return None
    return f"must be {low}-{high} or {defaults.RULE_PRIORITY}, got {value}"


_NAME_RX = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{defaults.RULE_NAME_MAX_CHARS - 1}}}")


def _rule_name(value: str) -> str | None:
    if _NAME_RX.fullmatch(value):
        return None
    return (
        f"{value!r}: use 1-{defaults.RULE_NAME_MAX_CHARS} letters, digits, '.', '_' or '-' "
        "(starting with a letter or digit)"
    )


def _non_empty(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    problem = check_component(value)
    return f"{problem}" if problem else None


def _patterns(value: tuple[str, ...]) -> str | None:
    for pattern in value:
        problem = pattern_problem(pattern)
        if problem:
            return problem
    return None


def _match(value: tuple[str, ...]) -> str | None:
    return "must hold at least one pattern" if not value else _patterns(value)


def _checksum(value: str) -> str | None:
    if value == "xxh64" and not xxh64_available():
        return "'xxh64' needs the xxhash package, which is not installed (pip install xxhash)"
    if value in ("", *ALGORITHMS):
        return None
    return _one_of("", *ALGORITHMS)(value)  # type: ignore[no-any-return]


def _patterns_one(value: str) -> str | None:
    return pattern_problem(value) if value else None


def _positive(value: float) -> str | None:
    return None if math.isfinite(value) and value > 0 else f"must be > 0 seconds, got {value}"


def fileset_problems(table: dict[str, Any], values: dict[str, Any], report: Any) -> None:
    """The fileset keys: a manifest glob in fileset mode (and no ``match``), none outside it."""
    if values.get("mode") != "fileset":
        if "match" not in table:
            report("match", "missing (this key is required)")
        for key in ("manifest", "manifest_priority", "archive_manifest"):
            # (a default spelled out is harmless: ``rules show`` writes every key)
            if key in table and values.get(key) != RULE_FIELDS[key].default:
                report(key, 'only used with mode = "fileset"')
        return
    if "match" in table and tuple(values.get("match", ())) != (values.get("manifest"),):
        report(
            "match", 'fileset mode: the manifests\' glob goes in manifest, e.g. manifest = "*.mdf"'
        )
    if not table.get("manifest"):
        report(
            "manifest", 'missing: fileset mode needs the manifests\' glob, e.g. manifest = "*.mdf"'
        )
    if values.get("ready_marker"):
        report("ready_marker", "fileset mode: the manifest is the ready marker; drop this key")
    if values.get("sidecar"):
        report("sidecar", "fileset mode: the manifest holds the set's metadata; drop this key")
    values["match"] = (values["manifest"],) if values.get("manifest") else ()


RULE_FIELDS: dict[str, Field] = {
    f.name: f
    for f in [
        Field("name", "str", check=_rule_name),
        Field("watch", "str", check=_non_empty),
        Field("match", "str_list", (), check=_match),  # required but in fileset mode
        Field("ignore", "str_list", (), check=_patterns),
        Field("mode", "str", defaults.RULE_MODE, check=_one_of("file", "folder", "fileset")),
        Field("manifest", "str", defaults.RULE_MANIFEST, check=_patterns_one),
        Field(
            "manifest_priority",
            "str",
            defaults.RULE_MANIFEST_PRIORITY,
            check=_one_of("primary", "secondary"),
        ),
        Field("archive_manifest", "bool", defaults.RULE_ARCHIVE_MANIFEST),
        Field(
            "incomplete_after_seconds",
            "number",
            defaults.RULE_INCOMPLETE_AFTER_SECONDS,
            check=_positive,
        ),
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
        Field(
            "on_conflict",
            "str",
            defaults.RULE_ON_CONFLICT,
            check=_one_of("fail", "skip", "suffix"),
        ),
        Field(
            "observer",
            "str",
            defaults.RULE_OBSERVER,
            check=_one_of("auto", "native", "polling"),
        ),
        Field("enabled", "bool", defaults.RULE_ENABLED),
        Field("ignore_case", "bool", defaults.RULE_IGNORE_CASE),
        Field("description", "str", defaults.RULE_DESCRIPTION),
        Field("sidecar", "str", defaults.RULE_SIDECAR),
        Field("fields", "str_table", ()),
        Field("sidecar_wait_seconds", "number", defaults.RULE_SIDECAR_WAIT_SECONDS, check=_settle),
        Field("sidecar_required", "bool", defaults.RULE_SIDECAR_REQUIRED),
        Field("archive_sidecar", "bool", defaults.RULE_ARCHIVE_SIDECAR),
        Field("checksum", "str", defaults.RULE_CHECKSUM, check=_checksum),
    ]
}


def sidecar_problems(values: dict[str, Any], mode: str, report: Any) -> frozenset[str]:
    """Check the sidecar keys; the ``{meta.*}`` template fields they give."""
    names: set[str] = set()
    for name, spec in values.get("fields", ()):
        try:
            FieldSpec.parse(name, spec)
        except ValueError as exc:
            report("fields", str(exc))
            continue
        names.add(f"meta.{name}")
    kinds = {spec.partition(":")[0] for _, spec in values.get("fields", ())}
    if len(kinds) > 1:
        report("fields", "one sidecar is XML or JSON: use xml: or json: fields, not both")
    sidecar = values.get("sidecar", "")
    if values.get("fields") and not sidecar:
        report("fields", 'needs a sidecar to read them from, e.g. sidecar = "{stem}.xml"')
    if sidecar:
        beside_problems("sidecar", sidecar, mode, "{stem}.xml", report)
    return frozenset(names)


def beside_problems(key: str, text: str, mode: str, example: str, report: Any) -> None:
    """Check the template of a file that sits beside the drop (``ready_marker``,
    ``sidecar``): a file name, not a path, with some text of its own."""
    allowed = _MARKER_FOLDER_FIELDS if mode == "folder" else _MARKER_FILE_FIELDS
    try:
        compiled = Template.compile(text, allowed)
        if "/" in text or "\\" in text:
            report(key, "must be a file name, not a path")
        elif not "".join(lit for lit, _, _ in compiled.pieces).strip():
            report(key, f'must add text to the name, e.g. "{example}"')
    except TemplateError as exc:
        report(key, f"bad template: {exc}")
