"""What every route of the emulator shares: its live parts (:class:`Emulator`), the
role each route needs (``AnyUser``, ``Operator``, ``Admin``, ``Sysadmin``), DIVA's success
body, paging and the dates DIVA's clients send.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request

from .auth import Caller, check_role, hash_password, read_token
from .config import EmulatorConfig
from .faults import Runtime
from .hooks import ArchiveHook
from .profiles import Profile
from .store import FINISHED_STATES, Refusal, Store
from .worker import Worker

__all__ = ["OK", "Admin", "AnyUser", "Emulator", "Operator", "Sysadmin", "paged", "parse_when"]

#: DIVA's body for a call that succeeded
OK = {"statusCode": 1000, "statusName": "DIVA_OK", "statusDescription": "success"}


@dataclass
class Emulator:
    """The live parts the routes share."""

    config: EmulatorConfig
    store: Store
    runtime: Runtime
    worker: Worker
    secret: str
    profile: Profile
    hook: ArchiveHook

    def install_users(self) -> None:
        for name, password, role in self.config.users:
            salt, pwhash = hash_password(password)
            self.store.put_user(name, salt, pwhash, role, replace=True)

    def reset(self) -> None:
        self.worker.reset()
        self.store.wipe()
        for media in self.config.media:
            shutil.rmtree(self.config.media_dir(media), ignore_errors=True)
        self.install_users()
        self.runtime.reset()
        self.hook.reset()

    def forgotten(self, row: Any) -> bool:
        """True for a request that finished longer ago than the ``forget_after`` knob."""
        after = self.runtime.knobs.forget_after
        if after <= 0 or row["state"] not in FINISHED_STATES:
            return False
        return bool(row["completed"] < time.time() - after)


def _needs(role: str) -> Callable[[Request], Caller]:
    def dependency(request: Request) -> Caller:
        emu: Emulator = request.app.state.emu
        caller = read_token(emu.store, emu.secret, request.headers.get("authorization"))
        check_role(caller, role)
        return caller

    return dependency


# Module level, so FastAPI can resolve these names in the (string) annotations.
AnyUser = Annotated[Caller, Depends(_needs("user"))]
Operator = Annotated[Caller, Depends(_needs("operator"))]
Admin = Annotated[Caller, Depends(_needs("admin"))]
Sysadmin = Annotated[Caller, Depends(_needs("sysadmin"))]


def paged(items: list[Any], page: int | None, size: int | None) -> list[Any]:
    if size is None:
        return items
    start = (max(page or 1, 1) - 1) * size
    return items[start : start + size]


def parse_when(value: str | None, what: str) -> float | None:
    """``YYYY-MM-DD HH:MM:SS`` (UTC, as DIVA's clients send it), ISO 8601, or epoch seconds."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Refusal(1008, 400, f"{what}: expected YYYY-MM-DD HH:MM:SS") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
