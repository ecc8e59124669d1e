"""The engine: the one owner of every drop's state, from first sight to DIVA's last word."""

from __future__ import annotations

from .core import Engine

__all__ = ["Engine"]
