"""Deterministic, realistic 100ms events for the benchmarks (shared by every process)."""

from __future__ import annotations

import datetime as dt
import json
import random
import time
import uuid
from typing import Any

EVENT_TYPE = "beam.recording.success"


def room_ids(count: int) -> list[str]:
    """``count`` room ids shaped like 100ms's (24 hex digits)."""
    return [f"{0xB0000000 + i:024x}" for i in range(count)]


def _rfc3339(ns: int, digits: int = 9) -> str:
    seconds, fraction = divmod(ns, 10**9)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{fraction // 10 ** (9 - digits):0{digits}d}Z"


def make_event(rng: random.Random, room_id: str, now_ns: int | None = None) -> dict[str, Any]:
    """One ``beam.recording.success`` event like CONTRACT.md's example (about 900 bytes)."""
    now = time.time_ns() if now_ns is None else now_ns
    duration = rng.randint(5, 3600)
    stopped = now - 2 * 10**9
    started = stopped - duration * 10**9
    beam_id = f"{rng.getrandbits(96):024x}"
    return {
        "version": "2.0",
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "timestamp": _rfc3339(now),
        "type": EVENT_TYPE,
        "data": {
            "beam_id": beam_id,
            "room_id": room_id,
            "session_id": f"{rng.getrandbits(96):024x}",
            "peer_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "template_id": f"{rng.getrandbits(96):024x}",
            "created_at": _rfc3339(now - 5 * 10**8),
            "duration": duration,
            "started_at": _rfc3339(started, digits=3),
            "stopped_at": _rfc3339(stopped, digits=3),
            "max_width": 1280,
            "max_height": 720,
            "recording_path": f"s3://recordings/{room_id}/{beam_id}.mp4",
            "recording_presigned_url": (
                f"https://recordings.example.com/{room_id}/{beam_id}.mp4?X-Amz-Expires=86400"
            ),
            "meeting_url": "https://app.100ms.live/preview/rpe-pwl-akt?token=beam_recording",
            "rtmp": [{"url": "rtmp://live.example.com/app/stream"}],
            "session_started_at": _rfc3339(started - rng.randint(1, 60) * 10**9, digits=3),
            "size": rng.randint(10**5, 10**9),
        },
    }


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
