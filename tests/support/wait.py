"""Waiting for a condition: the one poll loop tests and benchmarks share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError, TimeoutError):
    """A condition not met in time: a failed assertion to pytest, a timeout to a benchmark."""


def wait_for(
    condition: Callable[[], T | Literal[False] | None],
    timeout: float = 15.0,
    interval: float = 0.02,
) -> T:
    """Poll ``condition`` until it returns something truthy (returned), or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"condition not met within {timeout:g} s")
        time.sleep(interval)
