"""The daemon with adaptive polling: an idle room turns fast when a session starts in it, its
recording is delivered within an interval, and idle rooms are polled rarely."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from poller.receiver import Receiver
from poller.simulator import Simulator
from tests.conftest import ConfigWriter, daemon_config
from tests.e2e.test_daemon import (
    Daemons,
    eventually,
    polled_ok,
    poller_cli,
    wait_delivered,
    wait_log,
)

pytestmark = pytest.mark.e2e

INTERVAL, IDLE = 0.3, 5.0


def polls_of(simulator: Simulator, room_id: str, since: float = 0.0) -> int:
    """Events requests the API saw for this room (first pages of walks and their follow-ups)."""
    return sum(
        1 for r in simulator.requests if r["at"] >= since and ("room_id", room_id) in r["query"]
    )


def walked(**expected: int) -> Any:
    def matches(e: dict[str, Any]) -> bool:
        return e.get("event") == "sessions_walked" and all(
            e.get(k) == v for k, v in expected.items()
        )

    return matches


async def test_a_session_makes_an_idle_room_fast_and_its_recording_arrives_within_an_interval(
    simulator: Simulator,
    receiver: Receiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
) -> None:
    config = write_config(
        **daemon_config(
            simulator,
            receiver,
            store_url,
            rooms=["quiet", "class"],
            poll={
                "interval": f"{INTERVAL * 1000:g}ms",
                "adaptive": True,
                "idle_interval": f"{IDLE:g}s",
                "active_window": "2s",
                "sessions_interval": "300ms",
            },
        )
    )
    daemon = await daemons(config).start()
    # Startup is unchanged: every room's first poll within one (fast) interval spread.
    await wait_log(daemon, polled_ok("quiet"), "quiet's first poll", 10)
    await wait_log(daemon, polled_ok("class"), "class's first poll", 10)
    settled = time.monotonic()

    session = simulator.start_session("class")
    await wait_log(daemon, walked(fast=1, changed=1), "class to turn fast", 10)
    turned = time.monotonic()
    # Fast now: several polls within a few intervals.
    await eventually(lambda: polls_of(simulator, "class", turned) >= 4, 5, "class's fast polls")
    # And poller status says so, with why.
    code, out, err = await poller_cli("status", "--json", "-c", str(config))
    assert code == 0, err
    rooms = {r["id"]: r for r in json.loads(out)["rooms"]}
    assert (rooms["class"]["interval_s"], rooms["class"]["pace"]) == (INTERVAL, "live")
    assert rooms["class"]["active_until"] is not None
    assert (rooms["quiet"]["interval_s"], rooms["quiet"]["pace"]) == (IDLE, "idle")
    code, out, err = await poller_cli("status", "-c", str(config))
    assert f"every {INTERVAL * 1000:g}ms, a session is live, fast until in " in out
    assert f"every {IDLE:g}s, idle" in out

    simulator.end_session(session)
    recording = simulator.add_event("class")  # the recording follows the session's end
    added = time.monotonic()
    await wait_delivered(receiver, {("all", recording["id"])}, daemon, timeout=10)
    latency = time.monotonic() - added
    # One interval, its jitter, a walk and the delivery: far below the idle interval.
    assert latency < INTERVAL + 1.5, latency

    # Meanwhile the quiet room was left at its idle pace.
    # At most one poll an idle interval (and one that had come due), however long this
    # took on a loaded machine; the fast pace would have given one every INTERVAL.
    elapsed = time.monotonic() - settled
    assert polls_of(simulator, "quiet", settled) <= 1 + int(elapsed // IDLE)
    assert polls_of(simulator, "class", settled) >= 4

    # The active window runs out: class turns idle again, and nothing is lost at the idle
    # pace (the full walk is the catch-all).
    await wait_log(daemon, walked(fast=0, changed=1), "class to turn idle", 10)
    late = simulator.add_event("quiet")
    await wait_delivered(receiver, {("all", late["id"])}, daemon, timeout=IDLE + 5)
    idle_since = time.monotonic()
    quiet_polls = polls_of(simulator, "quiet", idle_since)
    class_polls = polls_of(simulator, "class", idle_since)
    await eventually(lambda: time.monotonic() - idle_since > 1.5, 5, "a while at the idle pace")
    # At most one more walk each in 1.5 s at a 5 s pace (a walk may take two pages), not
    # the five the fast pace would make.
    assert polls_of(simulator, "quiet", idle_since) - quiet_polls <= 2
    assert polls_of(simulator, "class", idle_since) - class_polls <= 2
    assert await daemon.stop() == 0
