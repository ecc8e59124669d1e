"""A live drop as the engine holds it between ledger writes.

A :class:`Tracked` is made when a drop is first seen (DETECTED) or read back from the
ledger at start, and dropped when it reaches a final state; the ledger row stays the
record, this is the working copy. The :class:`~.submissions.Tracker` holds each one once,
by its :attr:`~Tracked.key`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..drop import Drop, Kind
from ..rules import Rule
from .dispatch import Key

__all__ = ["Asking", "Tracked"]

#: the DIVA job whose answer a drop awaits ("": none)
Asking = Literal["", "submit", "poll", "check", "rename"]


@dataclass(eq=False)
class Tracked:
    """A live drop (any active state), as the engine holds it between ledger writes: the
    :class:`~ingest.drop.Drop` (its identity, and its signature once settled) and the
    state of its life with DIVA."""

    id: int
    drop: Drop
    state: str
    attempts: int = 0
    token: int = 0  # the token of the drop's latest job: older answers are stale
    asking: Asking = ""  # the job whose answer the drop awaits
    object_name: str | None = None
    collection: str | None = None
    body: dict[str, Any] | None = None
    body_json: str | None = None  # ``body`` as the ledger stores it
    request_id: int | None = None
    priority: int | None = None
    on_conflict: str = "fail"
    uncertain: bool = False  # an earlier archive call may have reached DIVA
    queued: bool = False
    diva_state: str | None = None
    progress: int | None = None
    next_attempt_at: float | None = None  # epoch seconds
    source_deleted: bool | None = None
    submitted_at: float | None = None  # epoch seconds of the first intent we know of
    waiting_since: float | None = None  # epoch seconds DIVA began keeping it waiting
    checks: int = 0  # reconciliations that could not settle the question, in a row
    late_conflict: int | None = None  # DIVA aborted its request with 1016 / 1040
    adopted: bool = False  # following a request found by name: check the object at the end
    renames: int = 0  # failed searches for a free name (on_conflict = suffix), in a row
    conflict: str = ""  # why the name is taken, while on_conflict = suffix looks for another
    #: a rule's ``checksum``: the algorithm and each component's digest, once hashed
    checksum_algo: str | None = None
    checksums: dict[str, str] | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Tracked:
        body = json.loads(row["body"]) if row.get("body") else None
        members: tuple[str, ...] = ()
        if body and row["kind"] in ("folder", "fileset"):
            members = tuple(body.get("components", ()))
        return cls(
            id=row["id"], drop=Drop.from_row(row, members), state=row["state"],
            attempts=row["attempts"] or 0,
            object_name=row["object_name"], collection=row["collection"], body=body,
            body_json=row["body"] if body else None,
            request_id=row["request_id"], priority=row["priority"],
            diva_state=row["diva_state"], progress=row["progress"],
            next_attempt_at=row["next_attempt_at"], submitted_at=row.get("submitted_at"),
            waiting_since=row.get("waiting_since"), adopted=bool(row.get("adopted")),
            checksum_algo=row.get("checksum_algo"),
            checksums=json.loads(row["checksums"]) if row.get("checksums") else None,
        )  # fmt: skip

    # The drop's identity and signature, read through: one value, not copies to sync.

    @property
    def rule(self) -> str:
        return self.drop.rule

    @property
    def watch(self) -> str:
        return self.drop.watch

    @property
    def path(self) -> str:
        """The drop's relpath (the ledger's ``path`` column)."""
        return self.drop.relpath

    @property
    def kind(self) -> Kind:
        return self.drop.kind

    @property
    def size(self) -> int | None:
        return self.drop.size

    @property
    def mtime_ns(self) -> int | None:
        return self.drop.mtime_ns

    @property
    def file_count(self) -> int | None:
        return self.drop.file_count

    @property
    def members(self) -> tuple[str, ...]:
        return self.drop.members

    @property
    def key(self) -> Key:
        return self.drop.key

    @property
    def label(self) -> str:
        return f"{self.rule} {self.path}"

    def as_drop(self, rule: Rule) -> Drop:
        """The drop as ``rule`` (the rule that matches it now) names it, for its templates."""
        return replace(self.drop, rule=rule.name, watch=str(rule.watch))

    def sources(self) -> list[str]:
        """The files DIVA was asked to archive, as absolute paths."""
        names = self.members if self.kind != "file" else (self.path,)
        return [os.path.join(self.watch, *n.split("/")) for n in names]

    def set_body(self, body: dict[str, Any]) -> None:
        """The archive request's body, serialized once for every ledger write of it."""
        self.body = body
        self.body_json = json.dumps(body, sort_keys=True, ensure_ascii=False)
        self.object_name = body["objectName"]
        self.collection = body["collectionName"]
