"""Realistic 100ms events for the simulator, the demo and the benchmarks."""

from __future__ import annotations

import datetime
import random
import time
import uuid
from typing import Any

__all__ = ["object_id", "recording_event", "rfc3339"]


def recording_event(
    rng: random.Random,
    room_id: str,
    *,
    template_id: str,
    now_ns: int | None = None,
    type: str = "beam.recording.success",
    **data_overrides: Any,
) -> dict[str, Any]:
    """A realistic event shaped like CONTRACT.md's example; ``data_overrides`` patch its data."""
    now = time.time_ns() if now_ns is None else now_ns
    duration = rng.randint(5, 3600)
    stopped = now - 2 * 10**9
    started = stopped - duration * 10**9
    beam_id = object_id(rng)
    data: dict[str, Any] = {
        "beam_id": beam_id,
        "room_id": room_id,
        "session_id": object_id(rng),
        "peer_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "template_id": template_id,
        "created_at": rfc3339(now - 5 * 10**8),
        "duration": duration,
        "started_at": rfc3339(started, digits=3),
        "stopped_at": rfc3339(stopped, digits=3),
        "max_width": 1280,
        "max_height": 720,
        "recording_path": f"s3://recordings/{room_id}/{beam_id}.mp4",
        "recording_presigned_url": (
            f"https://recordings.example.com/{room_id}/{beam_id}.mp4?X-Amz-Expires=86400"
        ),
        "meeting_url": "https://app.100ms.live/preview/rpe-pwl-akt?token=beam_recording",
        "rtmp": [{"url": "rtmp://live.example.com/app/stream"}],
        "session_started_at": rfc3339(started - rng.randint(1, 60) * 10**9, digits=3),
        "size": rng.randint(10**5, 10**9),
    }
    data.update(data_overrides)
    return {
        "version": "2.0",
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "timestamp": rfc3339(now),
        "type": type,
        "data": data,
    }


def object_id(rng: random.Random) -> str:
    """A 24-hex-digit id like 100ms's room, session and template ids."""
    return f"{rng.getrandbits(96):024x}"


def rfc3339(ns: int, digits: int = 9) -> str:
    """Format Unix nanoseconds as RFC 3339 UTC with ``digits`` fractional digits."""
    seconds, fraction = divmod(ns, 10**9)
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{fraction // 10 ** (9 - digits):0{digits}d}Z"
