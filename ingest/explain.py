"""``ingest rules explain``: why a path is (or is not) a drop, and the request it would make.

:meth:`ingest.rules.RuleSet.explain` tries every rule and builds an :class:`Explanation`;
the helpers here add what the daemon would read from disk: the sidecar's fields, a file
set's members, and the archive body (or why it is refused).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .archivebody import build_fileset_body
from .sidecar import SidecarError
from .templates import Drop, DropRefused

if TYPE_CHECKING:
    from .rules import Match, Rule, Trial

__all__ = ["Explanation", "explain_fileset", "explain_sidecar"]


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
    #: the sidecar: its path, whether present, the fields read (name: {source, value})
    sidecar: dict[str, Any] | None = None

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
                "members": list(drop.members) if drop.kind != "file" else None,
            },
            "ready_marker": None
            if self.marker is None
            else {"path": str(self.marker), "present": os.path.lexists(self.marker)},
            "sidecar": self.sidecar,
            "body": self.body,
            "refused": self.refused,
            "trials": [t.as_dict() for t in self.trials],
        }


def explain_sidecar(
    rule: Rule, drop: Drop
) -> tuple[dict[str, Any] | None, dict[str, str], str | None]:
    """What ``rules explain`` shows of a drop's sidecar: its path, whether it is there,
    each field with where it is read and its value; and the values and sidecar relpath
    the archive body is built with (as the daemon would, were it settled now)."""
    path = rule.sidecar_path(drop)
    if path is None:
        return None, {}, None
    present = os.path.isfile(path) and not os.path.islink(path)
    values: dict[str, str] = {}
    error = None
    if present:
        try:
            values = rule.read_sidecar(drop)
        except SidecarError as exc:
            error = str(exc)
    shown = {
        "path": str(path),
        "present": present,
        "required": rule.sidecar_required,
        "archived": rule.archive_sidecar,
        "error": error,
        "fields": {name: {"source": spec, "value": values.get(name)} for name, spec in rule.fields},
    }
    return shown, values, rule.sidecar_relpath(drop) if present else None


def explain_fileset(ex: Explanation, now: float | None) -> Explanation:
    """A manifest explained: the files it would archive, or why not yet (or never)."""
    assert ex.match is not None and ex.drop is not None
    rule, drop = ex.match.rule, ex.drop
    fileset = rule.read_fileset(drop.relpath)
    if fileset is None:
        return replace(ex, refused=f"the manifest {drop.relpath!r} is gone")
    try:
        body = build_fileset_body(rule, drop, fileset, now)
    except DropRefused as exc:
        return replace(ex, refused=exc.reason)
    return replace(ex, body=body)
