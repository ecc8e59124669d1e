"""A DIVA Core 9.x emulator: DIVA's REST API over HTTP(S), moving real bytes on disk.

Run it with ``ingest emulator``; in tests, use :class:`EmulatorProcess` (a subprocess on
a free loopback port) or :class:`EmulatorThread` (in-process). Importing this package
does not import FastAPI; the names below are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import EmulatorConfig
    from .faults import Knobs
    from .server import EmulatorProcess, EmulatorThread, serve

__all__ = ["EmulatorConfig", "EmulatorProcess", "EmulatorThread", "Knobs", "serve"]

_WHERE = {
    "EmulatorConfig": "config",
    "Knobs": "faults",
    "EmulatorProcess": "server",
    "EmulatorThread": "server",
    "serve": "server",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(name)
