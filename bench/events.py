"""Deterministic, realistic 100ms events for the benchmarks (shared by every process)."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Sequence
from typing import Any

from poller.sample_events import recording_event

EVENT_TYPE = "beam.recording.success"
_BASE_NS = 1_700_000_000 * 10**9


def room_ids(count: int) -> list[str]:
    """``count`` room ids shaped like 100ms's (24 hex digits)."""
    return [f"{0xB0000000 + i:024x}" for i in range(count)]


def _presigned_url(rng: random.Random, path: str, now_ns: int) -> str:
    """An S3 presigned URL as real recordings carry (most of an event's size)."""
    key = path.partition("://")[2].partition("/")[2]
    stamp = dt.datetime.fromtimestamp(now_ns // 10**9, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    credential = f"AKIA{rng.getrandbits(64):016X}%2F{day}%2Fap-south-1%2Fs3%2Faws4_request"
    return (
        f"https://recordings-prod.s3.ap-south-1.amazonaws.com/{key}"
        f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={credential}"
        f"&X-Amz-Date={stamp}&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
        f"&X-Amz-Signature={rng.getrandbits(256):064x}"
    )


def make_event(rng: random.Random, room_id: str, now_ns: int | None = None) -> dict[str, Any]:
    """One ``beam.recording.success`` event like CONTRACT.md's example, with a real-sized
    presigned URL (about 1.2 KB of compact JSON)."""
    event = recording_event(rng, room_id, template_id=f"{rng.getrandbits(96):024x}", now_ns=now_ns)
    data = event["data"]
    data["recording_presigned_url"] = _presigned_url(
        rng, data["recording_path"], _BASE_NS if now_ns is None else now_ns
    )
    return event


def _events(order: list[str], seed: int) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    return [(room, make_event(rng, room, _BASE_NS + i * 10**6)) for i, room in enumerate(order)]


def backlog(rooms: list[str], count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """``count`` events spread round-robin over ``rooms``; the same seed gives the same events."""
    return _events([rooms[i % len(rooms)] for i in range(count)], seed)


def preloaded(
    rooms: list[str], counts: Sequence[int], seed: int
) -> list[tuple[str, dict[str, Any]]]:
    """``counts[i]`` events in ``rooms[i]``, room after room."""
    return _events([room for room, n in zip(rooms, counts, strict=True) for _ in range(n)], seed)


def room_counts(rooms: int, low: int, high: int, total: int | None, seed: int) -> list[int]:
    """How many events each of ``rooms`` rooms holds: ``low`` to ``high`` each, ``total`` in
    all (None: whatever the draw gives). Deterministic for a seed."""
    rng = random.Random(seed + 11)
    counts = [rng.randint(low, high) for _ in range(rooms)]
    if total is None:
        return counts
    if not rooms * low <= total <= rooms * high:
        raise ValueError(f"{total} events do not fit {rooms} rooms of {low}..{high}")
    # Nudge random rooms one event at a time; each step moves the sum by one towards
    # total, and a room at its bound is skipped, so this ends (bounded all the same).
    for _ in range(100 * rooms * (high - low + 1)):
        diff = total - sum(counts)
        if diff == 0:
            break
        i = rng.randrange(rooms)
        step = 1 if diff > 0 else -1
        if low <= counts[i] + step <= high:
            counts[i] += step
    return counts


def compact(event: dict[str, Any]) -> str:
    """The body poller sends: compact UTF-8 JSON of the event as the API returned it."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
