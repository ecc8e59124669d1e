"""Request bodies the emulator accepts, and the JSON shapes it answers with.

Field names are DIVA's (camelCase). Unknown fields are ignored, as DIVA's Jackson
deserialiser does; missing required ones become 1008 through the app's validation handler.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..protocol import ABORT_REASONS, STATUS_DESCRIPTIONS, RequestState, status_name
from .profiles import LENIENT, Profile
from .store import StoredObject

__all__ = [
    "REQUEST_TYPES",
    "ArchiveBody",
    "CancelBody",
    "DeleteBody",
    "LoginBody",
    "NewUserBody",
    "PartialRestoreBody",
    "RestoreBody",
    "object_json",
    "request_json",
]

#: our type key -> (``type``, ``typeCode``, ``typeDescription``), codes from the legacy API.
REQUEST_TYPES: dict[str, tuple[str, int, str]] = {
    "archive": ("DIVA_ARCHIVE_REQUEST", 0, "Archive"),
    "restore": ("DIVA_RESTORE_REQUEST", 1, "Restore"),
    "delete": ("DIVA_DELETE_REQUEST", 2, "Delete"),
    "partialRestore": ("DIVA_PARTIAL_RESTORE_REQUEST", 13, "Partial Restore"),
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class LoginBody(_Body):
    username: str
    password: str


class NewUserBody(_Body):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1)
    role: str
    emailAddress: str = ""
    sessionTimeout: int = 0


class ArchiveBody(_Body):
    objectName: str = Field(min_length=1, max_length=192)
    collectionName: str = Field(min_length=1, max_length=96)
    components: list[str] = Field(min_length=1)
    media: str = Field(min_length=1)
    sourceServer: str = ""
    filePathRoot: str = ""
    qos: int = 0
    priority: int = -1
    comments: str = ""
    options: str = ""
    uids: list[str] = Field(default_factory=list)


class RestoreBody(_Body):
    objectName: str = Field(min_length=1, max_length=192)
    collectionName: str = Field(min_length=1, max_length=96)
    destinationServer: str = Field(min_length=1)
    filePathRoot: str = ""
    instance: int = -1
    qos: int = 0
    priority: int = -1
    options: str = ""


class OffsetPair(_Body):
    bytesBegin: int = Field(default=0, ge=0)
    bytesEnd: int = Field(default=0, ge=0)
    timeCode: bool = False
    timeCodeBegin: str = ""
    timeCodeEnd: str = ""


class FileFolder(_Body):
    name: str = Field(min_length=1)
    option: str = ""


class Range(_Body):
    begin: int
    end: int


class Offset(_Body):
    sourceFile: str | None = None
    destinationFile: str | None = None
    offsetPairs: list[OffsetPair] | None = None
    fileFolder: FileFolder | None = None
    range: Range | None = None


class PartialRestoreBody(RestoreBody):
    format: int = Field(ge=0, le=13)
    offsets: list[Offset] = Field(min_length=1)
    minRequestPriority: int = -1
    maxRequestPriority: int = 100


class CancelBody(_Body):
    requestId: int


class DeleteBody(_Body):
    objectName: str = Field(min_length=1, max_length=192)
    collectionName: str = Field(min_length=1, max_length=96)
    media: str = ""
    instance: int = -1
    priority: int = -1


def request_json(row: Any, now: float | None = None, profile: Profile = LENIENT) -> dict[str, Any]:
    """A request as ``GET /requests/{id}`` answers it in production."""
    now = time.time() if now is None else now
    state = RequestState(row["state"])
    progress = int(row["progress"])
    if not state.finished and row["due"] > row["submitted"]:
        # With --request-seconds, progress also follows the clock, so it rises smoothly.
        share = (now - row["submitted"]) / (row["due"] - row["submitted"])
        progress = max(0, min(progress, int(share * 100), 99))
    type_name, type_code, type_description = REQUEST_TYPES[row["type"]]
    reason = row["abort_reason"]
    code = int(row["status_code"])
    state_name, state_description = state.wire_name, state.description
    if state is RequestState.PARTIALLY_ABORTED:
        state_name, state_description = profile.partial_state
    return {
        "id": row["id"],
        "type": type_name,
        "typeCode": type_code,
        "typeDescription": type_description,
        "objectName": row["object_name"],
        "collectionName": row["collection"],
        "stateCode": int(state),
        "stateName": state_name,
        "stateDescription": state_description,
        "progress": progress,
        "currentPriority": row["priority"] if row["priority"] >= 0 else 50,
        "statusCode": code,
        "statusName": status_name(code),
        "statusDescription": STATUS_DESCRIPTIONS.get(code, status_name(code).lower()),
        "abortReason": {
            "code": ABORT_REASONS.get(reason, 0),
            "name": reason,
            "description": "" if reason == "DIVA_AR_NONE" else _reason_text(reason),
        },
        "submissionDate": int(row["submitted"]),
        "completionDate": int(row["completed"]) if row["completed"] else 0,
        "additionalInfo": row["info"]
        or '<?xml version="1.0" encoding="UTF-8"?><ADDITIONAL_INFO></ADDITIONAL_INFO>',
    }


def _reason_text(name: str) -> str:
    return name.removeprefix("DIVA_AR_").replace("_", " ").lower()


def object_json(obj: StoredObject) -> dict[str, Any]:
    """An object as ``GET /objects/info`` answers it."""
    return {
        "objectName": obj.name,
        "collectionName": obj.collection,
        "objectSize": obj.size,
        "archiveDate": int(obj.archive_date),
        "sourceServer": obj.source_server,
        "filePathRoot": obj.file_path_root,
        "comments": obj.comments,
        "numberOfComponents": len(obj.components),
        "components": [
            {
                "fileName": c["fileName"],
                "size": c["size"],
                "checksumType": "MD5",
                "checksum": c["md5"],
            }
            for c in obj.components
        ],
        "instances": [
            {
                "id": 0,
                "media": obj.media,
                "mediaType": "DISK" if obj.media_kind == "disk" else "TAPE",
                "online": True,
                "archiveDate": int(obj.archive_date),
                "requestId": obj.request_id,
            }
        ],
    }
