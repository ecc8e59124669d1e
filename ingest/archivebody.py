"""The archive request: the exact body of DIVA's archive call for a drop of a rule.

:func:`build_archive_body` renders a file or folder drop (with its sidecar's fields);
:func:`build_fileset_body` a file set, its manifest's values over or under the rule's.
Both refuse (:class:`~ingest.templates.DropRefused`) what cannot be archived safely.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import defaults
from .manifest import Manifest
from .members import FileSet
from .templates import (
    Drop,
    DropRefused,
    UnsafeNameError,
    check_component,
    check_name,
    clean_comment,
)

if TYPE_CHECKING:
    from .rules import Rule

__all__ = ["build_archive_body", "build_fileset_body"]


def build_archive_body(
    rule: Rule,
    drop: Drop,
    now: float | None = None,
    *,
    meta: dict[str, str] | None = None,
    sidecar: str | None = None,
) -> dict[str, Any]:
    """The exact JSON body of ``POST /requests/archive`` for ``drop``.

    ``meta`` holds the sidecar's field values (a field not given renders empty);
    ``sidecar`` is the relpath of the sidecar found for a file drop, archived with it
    unless the rule says ``archive_sidecar = false``.

    Raises :class:`DropRefused` (or its :class:`UnsafeNameError`) with a reason when the
    drop cannot be archived safely: an unsafe rendered name, an undecodable or control
    character in a file path, a folder with nothing to archive.
    """
    fields = drop.fields(now)
    fields.update({f"meta.{s.name}": (meta or {}).get(s.name, "") for s in rule._field_specs})
    object_name = rule._templates["object_name"].render(fields)
    problem = check_name(object_name, defaults.OBJECT_NAME_MAX_CHARS)
    if problem:
        raise UnsafeNameError("object name", object_name, problem)
    collection = rule._templates["collection"].render(fields)
    problem = check_name(collection, defaults.COLLECTION_MAX_CHARS)
    if problem:
        raise UnsafeNameError("collection", collection, problem)
    components = list(drop.members) if drop.kind == "folder" else [drop.relpath]
    if rule.sidecar:
        own = rule.sidecar_relpath(drop)
        components = [c for c in components if c != own]
        if sidecar is not None and rule.archive_sidecar:
            components.append(sidecar)
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


#: a manifest's values -> the archive body's keys they set
_MANIFEST_BODY_KEYS = {
    "object_name": "objectName",
    "collection": "collectionName",
    "priority": "priority",
    "comments": "comments",
    "source_server": "sourceServer",
    "file_path_root": "filePathRoot",
    "media": "media",
}


def build_fileset_body(
    rule: Rule, drop: Drop, fileset: FileSet, now: float | None = None
) -> dict[str, Any]:
    """The archive body of a file set: its manifest's files, with the manifest's values
    over the rule's (``manifest_priority = "primary"``, DFM's default) or under them.

    Raises :class:`DropRefused` when the manifest cannot be read as written (naming the
    line), still lacks files, or gives an unsafe name.
    """
    if fileset.error is not None or fileset.manifest is None:
        raise DropRefused(f"manifest {drop.relpath!r}: {fileset.error}")
    if fileset.missing:
        raise DropRefused(
            f"manifest {drop.relpath!r} lists files not there: " + "; ".join(fileset.missing)
        )
    body = build_archive_body(rule, drop, now)
    components = list(fileset.members.files)
    if not components:
        raise DropRefused(f"manifest {drop.relpath!r} lists no file to archive")
    for component in components:
        problem = check_component(component)
        if problem:
            raise UnsafeNameError("file", component, problem)
    body["components"] = components
    _apply_manifest(body, fileset.manifest, rule)
    return body


def _apply_manifest(body: dict[str, Any], manifest: Manifest, rule: Rule) -> None:
    # Secondary: the rule's values win, so the manifest only fills what the rule leaves
    # at its default (its required keys, collection, media and source_server, always win).
    unset = {
        "object_name": rule.object_name == defaults.RULE_OBJECT_NAME,
        "priority": rule.priority == defaults.RULE_PRIORITY,
        "comments": rule.comments == defaults.RULE_COMMENTS,
        "file_path_root": rule.file_path_root == defaults.RULE_FILE_PATH_ROOT,
    }
    for key, value in manifest.values.items():
        if rule.manifest_priority == "secondary" and not unset.get(key, False):
            continue
        if key == "object_name":
            problem = check_name(str(value), defaults.OBJECT_NAME_MAX_CHARS)
            if problem:
                raise UnsafeNameError("object name", str(value), problem)
        elif key == "collection":
            problem = check_name(str(value), defaults.COLLECTION_MAX_CHARS)
            if problem:
                raise UnsafeNameError("collection", str(value), problem)
        elif key == "comments":
            value = clean_comment(str(value))
        body[_MANIFEST_BODY_KEYS[key]] = value
