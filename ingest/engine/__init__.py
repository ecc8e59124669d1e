"""The engine: the one owner of every drop's state, from first sight to DIVA's last word.

See ``docs/architecture.md`` for who owns what; :class:`Engine` is the whole public surface.
"""

from __future__ import annotations

from .core import Engine

__all__ = ["Engine"]
