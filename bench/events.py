"""Deterministic, realistic 100ms events for the benchmarks (shared by every process)."""

from __future__ import annotations

import json
import random
from typing import Any

from poller.simulator import recording_event

EVENT_TYPE = "beam.recording.success"


def room_ids(count: int) -> list[str]:
    """``count`` room ids shaped like 100ms's (24 hex digits)."""
    return [f"{0xB0000000 + i:024x}" for i in range(count)]


def make_event(rng: random.Random, room_id: str, now_ns: int | None = None) -> dict[str, Any]:
    """One ``beam.recording.success`` event like CONTRACT.md's example (about 900 bytes)."""
    return recording_event(rng, room_id, template_id=f"{rng.getrandbits(96):024x}", now_ns=now_ns)


def backlog(rooms: list[str], count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """``count`` events spread round-robin over ``rooms``; the same seed gives the same events."""
    rng = random.Random(seed)
    base = 1_700_000_000 * 10**9
    return [
        (rooms[i % len(rooms)], make_event(rng, rooms[i % len(rooms)], base + i * 10**6))
        for i in range(count)
    ]


def compact(event: dict[str, Any]) -> str:
    """The body poller sends: compact UTF-8 JSON of the event as the API returned it."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
