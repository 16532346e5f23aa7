"""One call's outcome as a value, so that a property can check a result and an error alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)


def outcome(call: Callable[[], T], expected: type[E]) -> T | E:
    """``call()``'s result, or the ``expected`` exception it raised (any other propagates)."""
    try:
        return call()
    except expected as e:
        return e
