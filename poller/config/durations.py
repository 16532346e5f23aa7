"""Durations as the config file writes them: seconds (``30``, ``0.5``) or ``"250ms"``, ``"5m"``."""

from __future__ import annotations

import math
import re
from decimal import Decimal

from poller.config.values import type_name

__all__ = ["DURATION_PATTERN", "format_duration", "parse_duration"]

# Compound forms ("1h30m") are accepted so that format_duration() output parses back.
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|h|m|s)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")
# The same rule for editors (the JSON Schema); the loader also tolerates blanks around it.
DURATION_PATTERN = rf"^\s*{_DURATION.pattern}\s*$"
_UNIT_SECONDS = {"ms": (1, 1000), "s": (1, 1), "m": (60, 1), "h": (3600, 1)}
_DURATION_HINT = "expected a number of seconds or a string like '30s' (units: ms, s, m, h)"


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like ``"250ms"``, ``"5m"`` or ``"2h"``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{_DURATION_HINT}, got {type_name(value)}")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ValueError(f"must not be negative, got {value!r}")
        if not _DURATION.fullmatch(text):
            raise ValueError(f"invalid duration {value!r}: {_DURATION_HINT}")
        seconds = 0.0
        for number, unit in _DURATION_PART.findall(text):
            # Multiply before dividing so that "250ms" is exactly 0.25.
            multiplier, divisor = _UNIT_SECONDS[unit]
            seconds += float(number) * multiplier / divisor
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an integer past float's range, which TOML allows
            raise ValueError("must be a finite duration") from None
    if not math.isfinite(seconds):
        raise ValueError("must be a finite duration")
    if seconds < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """A compact human form of a duration in seconds: ``250ms``, ``30s``, ``5m``, ``1h30m``."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {seconds!r}")
    if seconds == 0:
        return "0s"
    if seconds < 1:
        millis_text = f"{seconds * 1000:g}"
        if "e" in millis_text:  # below 0.0001ms: written out, as the parser reads no exponent
            millis_text = format(Decimal(millis_text), "f")
        return f"{millis_text}ms"
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    parts.append(f"{rest / 1000:g}s" if rest else "")
    return "".join(parts)
