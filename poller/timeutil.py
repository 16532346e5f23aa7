"""Time helpers shared by every layer."""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import time


def utcnow() -> dt.datetime:
    """The current time as an aware UTC datetime."""
    return dt.datetime.now(dt.UTC)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000" means UTC of unknown origin: still UTC
            when = when.replace(tzinfo=dt.UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def parse_instant(text: str, *, now: dt.datetime) -> dt.datetime:
    """An instant from RFC 3339 (``2026-12-01T08:00:00Z``; a bare date is its UTC
    midnight) or a duration before ``now`` (``2h``, ``90m``, ``1h30m``)."""
    from poller.config.durations import parse_duration

    value = text.strip()
    try:
        return now - dt.timedelta(seconds=parse_duration(value))
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an RFC 3339 time (2026-12-01T08:00:00Z) "
            "nor a duration before now (2h, 30m)"
        ) from None
    if when.tzinfo is None:
        if len(value) > 10:  # a time without an offset is ambiguous: refuse to guess
            raise ValueError(f"{text!r} has no UTC offset (add Z or +01:00)")
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)
