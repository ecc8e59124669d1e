"""The emulator's own ``/_emulator`` routes, for tests: reset, counters, fault knobs and
the archive hook. DIVA has none of them; the guide profile keeps them too.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request

from .routing import Emulator
from .store import Refusal

__all__ = ["install_control"]


def install_control(app: FastAPI, emu: Emulator) -> None:
    @app.post("/_emulator/reset", tags=["emulator (tests only)"])
    def reset() -> dict[str, Any]:
        emu.reset()
        return {"reset": True}

    @app.get("/_emulator/stats", tags=["emulator (tests only)"])
    def stats() -> dict[str, Any]:
        return {**emu.runtime.snapshot(), **emu.store.counts(), "hooks": emu.hook.snapshot()}

    @app.get("/_emulator/hooks", tags=["emulator (tests only)"])
    def hooks() -> dict[str, Any]:
        return emu.hook.snapshot()

    @app.put("/_emulator/hooks", tags=["emulator (tests only)"])
    async def set_hooks(request: Request) -> dict[str, Any]:
        try:
            doc = json.loads(await request.body())
            if not isinstance(doc, dict) or set(doc) - {"archive"}:
                raise ValueError('expected {"archive": URL or null}')
            url = doc.get("archive")
            if url is not None and not isinstance(url, str):
                raise ValueError("archive: a URL or null")
            emu.hook.set(url or None)
        except ValueError as exc:
            raise Refusal(1008, 400, str(exc)) from None
        return emu.hook.snapshot()

    @app.get("/_emulator/faults", tags=["emulator (tests only)"])
    def faults() -> dict[str, Any]:
        return asdict(emu.runtime.knobs)

    @app.put("/_emulator/faults", tags=["emulator (tests only)"])
    async def set_faults(request: Request) -> dict[str, Any]:
        try:
            changes = json.loads(await request.body())
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of knobs")
            knobs = emu.runtime.set_knobs(changes)
        except ValueError as exc:
            raise Refusal(1008, 400, str(exc)) from None
        return asdict(knobs)
