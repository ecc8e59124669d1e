"""What DIVA Core 9.x says on the wire: status codes, request states, abort reasons, QoS.

The single table of DIVA facts, shared by the client (to read answers) and the
emulator (to give them). Source: the DIVA REST API guide, release 9.0, as
digested in the project's ``docs/diva-api.md``.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "ABORT_REASONS",
    "CODE_KINDS",
    "DELETE_ON_SOURCE",
    "QOS_NAMES",
    "STATUS",
    "STATUS_DESCRIPTIONS",
    "TRANSIENT_ABORT_REASONS",
    "CodeKind",
    "RequestState",
    "code_kind",
    "status_name",
]

#: DIVA status codes (``statusCode``) and their names. All but 1000 and 1019 are errors.
STATUS: dict[int, str] = {
    1000: "DIVA_OK",
    1001: "DIVA_ERR_UNKNOWN",
    1002: "DIVA_ERR_INTERNAL",
    1003: "DIVA_ERR_NO_ARCHIVE_SYSTEM",
    1004: "DIVA_ERR_BROKEN_CONNECTION",
    1005: "DIVA_ERR_DISCONNECTING",
    1006: "DIVA_ERR_ALREADY_CONNECTED",
    1007: "DIVA_ERR_WRONG_VERSION",
    1008: "DIVA_ERR_INVALID_PARAMETER",
    1009: "DIVA_ERR_OBJECT_DOESNT_EXIST",
    1010: "DIVA_ERR_SEVERAL_OBJECTS",
    1011: "DIVA_ERR_NO_SUCH_REQUEST",
    1012: "DIVA_ERR_NOT_CANCELABLE",
    1013: "DIVA_ERR_SYSTEM_IDLE",
    1014: "DIVA_ERR_WRONG_LIST_SIZE",
    1015: "DIVA_ERR_LIST_NOT_INITIALIZED",
    1016: "DIVA_ERR_OBJECT_ALREADY_EXISTS",
    1017: "DIVA_ERR_GROUP_DOESNT_EXIST",
    1018: "DIVA_ERR_SOURCE_OR_DESTINATION_DOESNT_EXIST",
    1019: "DIVA_WARN_NO_MORE_OBJECTS",
    1020: "DIVA_ERR_NOT_CONNECTED",
    1021: "DIVA_ERR_GROUP_ALREADY_EXISTS",
    1022: "DIVA_ERR_GROUP_IN_USE",
    1023: "DIVA_ERR_OBJECT_OFFLINE",
    1024: "DIVA_ERR_TIMEOUT",
    1025: "DIVA_ERR_LAST_INSTANCE",
    1026: "DIVA_ERR_PATH_DESTINATION",
    1027: "DIVA_ERR_INSTANCE_DOESNT_EXIST",
    1028: "DIVA_ERR_INSTANCE_OFFLINE",
    1029: "DIVA_ERR_INSTANCE_MUST_BE_ON_TAPE",
    1030: "DIVA_ERR_NO_INSTANCE_TAPE_EXIST",
    1031: "DIVA_ERR_OBJECT_IN_USE",
    1032: "DIVA_ERR_CANNOT_ACCEPT_MORE_REQUESTS",
    1033: "DIVA_ERR_TAPE_DOESNT_EXIST",
    1034: "DIVA_ERR_INVALID_INSTANCE_TYPE",
    1035: "DIVA_ERR_ACCESS_DENIED",
    1036: "DIVA_ERR_OBJECT_PARTIALLY_DELETED",
    1037: "DIVA_ERR_LICENSE_DOES_NOT_SUPPORT_THIS_FEATURE",
    1038: "DIVA_ERR_COMPONENT_NOT_FOUND",
    1039: "DIVA_ERR_OBJECT_IS_LOCKED",
    1040: "DIVA_ERR_OBJECT_BEING_ARCHIVED",
}


class CodeKind(enum.Enum):
    """What a ``statusCode`` tells a client to do about the call that got it."""

    SUCCESS = "success"  # the call did what it was asked
    TRANSIENT = "transient"  # a condition that passes: try again later, with backoff
    PERMANENT = "permanent"  # the same call will fail again: refuse the drop
    CONFLICT = "conflict"  # the object exists, or is being archived: whose is it?
    NOT_FOUND = "not_found"  # DIVA's positive word that the object or request is not there


#: Every status code's kind. The guide lists 1002, 1008, 1016, 1018 and 1040 as the ways an
#: archive fails; the rest is read from each code's name. Where a code names a condition
#: that passes (DIVA busy, restarting, disconnected, an object in use) it is transient, so
#: a drop is retried and at worst FAILED with its files in place, never REJECTED for good.
CODE_KINDS: dict[int, CodeKind] = {
    1000: CodeKind.SUCCESS,
    1001: CodeKind.TRANSIENT,  # unknown: nothing says it will fail again
    1002: CodeKind.TRANSIENT,  # internal error: on the guide's list of archive failures
    1003: CodeKind.TRANSIENT,  # no archive system: the manager is starting or stopping
    1004: CodeKind.TRANSIENT,  # broken connection
    1005: CodeKind.TRANSIENT,  # disconnecting
    1006: CodeKind.TRANSIENT,  # already connected
    1007: CodeKind.PERMANENT,  # wrong version
    1008: CodeKind.PERMANENT,  # invalid parameter
    1009: CodeKind.NOT_FOUND,  # object does not exist
    1010: CodeKind.PERMANENT,  # several objects
    1011: CodeKind.NOT_FOUND,  # no such request
    1012: CodeKind.PERMANENT,  # not cancelable
    1013: CodeKind.TRANSIENT,  # system idle
    1014: CodeKind.PERMANENT,  # wrong list size
    1015: CodeKind.PERMANENT,  # list not initialised
    1016: CodeKind.CONFLICT,  # object already exists
    1017: CodeKind.PERMANENT,  # group, media or storage plan does not exist
    1018: CodeKind.PERMANENT,  # source or destination does not exist
    1019: CodeKind.SUCCESS,  # no more objects: the end of a list, not an error
    1020: CodeKind.TRANSIENT,  # not connected
    1021: CodeKind.PERMANENT,  # group already exists
    1022: CodeKind.PERMANENT,  # group in use
    1023: CodeKind.TRANSIENT,  # object offline (a tape out of the library comes back)
    1024: CodeKind.TRANSIENT,  # timeout
    1025: CodeKind.PERMANENT,  # last instance
    1026: CodeKind.PERMANENT,  # path destination
    1027: CodeKind.PERMANENT,  # instance does not exist
    1028: CodeKind.TRANSIENT,  # instance offline
    1029: CodeKind.PERMANENT,  # instance must be on tape
    1030: CodeKind.PERMANENT,  # no instance on tape
    1031: CodeKind.TRANSIENT,  # object in use
    1032: CodeKind.TRANSIENT,  # cannot accept more requests: the queue is full
    1033: CodeKind.PERMANENT,  # tape does not exist
    1034: CodeKind.PERMANENT,  # invalid instance type
    1035: CodeKind.PERMANENT,  # access denied: the user's role may not do it
    1036: CodeKind.PERMANENT,  # object partially deleted
    1037: CodeKind.PERMANENT,  # the licence does not cover it
    1038: CodeKind.PERMANENT,  # component not found
    1039: CodeKind.TRANSIENT,  # object is locked
    1040: CodeKind.CONFLICT,  # object being archived
}


def code_kind(code: int) -> CodeKind:
    """The kind of a status code; a code DIVA never documented is transient (fail safe:
    an answer we do not understand never refuses a drop for good).

    >>> [code_kind(c).value for c in (1032, 1018, 1016, 4242)]
    ['transient', 'permanent', 'conflict', 'transient']
    """
    return CODE_KINDS.get(code, CodeKind.TRANSIENT)


#: The status description DIVA gives with a code, for the emulator's answers.
STATUS_DESCRIPTIONS: dict[int, str] = {
    1000: "success",
    1001: "unknown error",
    1002: "internal error",
    1008: "invalid parameter",
    1009: "object does not exist",
    1011: "no such request",
    1012: "request cannot be cancelled",
    1016: "object already exists",
    1017: "group, media or storage plan does not exist",
    1018: "source or destination does not exist",
    1020: "not connected: invalid or expired token",
    1026: "destination path problem",
    1027: "instance does not exist",
    1032: "cannot accept more requests",
    1035: "access denied",
    1038: "component not found",
    1040: "object is being archived",
}

#: Delete-on-source: OR-ed into ``qos`` so DIVA deletes the source after a successful archive.
DELETE_ON_SOURCE = 0x0100

#: QoS names a rule may use, and their numbers.
QOS_NAMES: dict[str, int] = {
    "default": 0,
    "cache_only": 1,
    "direct_only": 2,
    "direct_and_cache": 3,
    "cache_and_direct": 4,
}

#: Abort reasons (``abortReason.name``) and their codes.
ABORT_REASONS: dict[str, int] = {
    "DIVA_AR_NONE": 0,
    "DIVA_AR_DRIVE": 1,
    "DIVA_AR_TAPE": 2,
    "DIVA_AR_ACTOR": 3,
    "DIVA_AR_DISK": 4,
    "DIVA_AR_DISK_FULL": 5,
    "DIVA_AR_SOURCE_DEST": 6,
    "DIVA_AR_RESOURCES": 7,
    "DIVA_AR_LIBRARY": 8,
    "DIVA_AR_PARAMETERS": 9,
    "DIVA_AR_INTERNAL": 10,
    "DIVA_AR_UNKNOWN": 11,
}

#: Abort reasons that are about DIVA's own resources, not the drop: worth another attempt.
TRANSIENT_ABORT_REASONS = frozenset(
    {
        "DIVA_AR_DRIVE",
        "DIVA_AR_TAPE",
        "DIVA_AR_ACTOR",
        "DIVA_AR_DISK",
        "DIVA_AR_DISK_FULL",
        "DIVA_AR_RESOURCES",
        "DIVA_AR_LIBRARY",
        "DIVA_AR_INTERNAL",
    }
)


def status_name(code: int) -> str:
    """DIVA's name for a status code.

    >>> status_name(1016)
    'DIVA_ERR_OBJECT_ALREADY_EXISTS'
    """
    return STATUS.get(code, f"DIVA_ERR_{code}")


class RequestState(enum.IntEnum):
    """A DIVA request's state (``stateCode``); the name is ``stateName`` without ``DIVA_``."""

    PENDING = 0
    TRANSFERRING = 1
    MIGRATING = 2
    COMPLETED = 3
    ABORTED = 4
    CANCELLED = 5
    UNKNOWN_STATE = 6
    DELETING = 7
    WAITING_FOR_RESOURCES = 8
    WAITING_FOR_OPERATOR = 9
    ASSIGNING_POOL = 10
    PARTIALLY_ABORTED = 11
    RUNNING = 12

    @property
    def wire_name(self) -> str:
        """``stateName`` as DIVA sends it, e.g. ``DIVA_COMPLETED``."""
        return f"DIVA_{self.name}"

    @property
    def description(self) -> str:
        """``stateDescription`` as DIVA sends it, e.g. ``Waiting for resources``."""
        if self is RequestState.PARTIALLY_ABORTED:
            return "Partially aborted"
        return self.name.replace("_", " ").capitalize()

    @property
    def finished(self) -> bool:
        """True for the states the guide calls finished."""
        return self in _FINISHED

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RequestState:
        """Read a state the tolerant way: ``stateName`` with or without ``DIVA_``,
        then ``stateCode``; anything unrecognised is ``UNKNOWN_STATE``.

        >>> RequestState.parse({"stateName": "DIVA_COMPLETED"})
        <RequestState.COMPLETED: 3>
        >>> RequestState.parse({"stateName": "Waiting for resources", "stateCode": 8})
        <RequestState.WAITING_FOR_RESOURCES: 8>
        """
        name = data.get("stateName")
        if isinstance(name, str) and name:
            key = name.strip().upper().replace(" ", "_").removeprefix("DIVA_")
            if key == "PARTIALLY_COMPLETED":
                key = "PARTIALLY_ABORTED"
            if key in cls.__members__:
                return cls[key]
        code = data.get("stateCode")
        if isinstance(code, str) and code.strip().isdigit():
            code = int(code.strip())  # some gateways send numbers as strings
        if isinstance(code, int) and not isinstance(code, bool):
            try:
                return cls(code)
            except ValueError:
                pass
        return cls.UNKNOWN_STATE

    @property
    def waiting(self) -> bool:
        """True for the states in which a request waits on DIVA (queued or for resources
        or an operator) rather than moving bytes: the ones that can get stuck."""
        return self in _WAITING


_WAITING = frozenset(
    {
        RequestState.PENDING,
        RequestState.WAITING_FOR_RESOURCES,
        RequestState.WAITING_FOR_OPERATOR,
        RequestState.ASSIGNING_POOL,
    }
)

_FINISHED = frozenset(
    {
        RequestState.COMPLETED,
        RequestState.ABORTED,
        RequestState.CANCELLED,
        RequestState.PARTIALLY_ABORTED,
    }
)
