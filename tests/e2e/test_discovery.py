"""The daemon with [discovery]: rooms appear and leave while it runs, a restart keeps them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from poller.receiver import Receiver
from poller.simulator import Simulator
from tests.conftest import ConfigWriter, daemon_config
from tests.e2e.test_daemon import (
    Daemons,
    pairs,
    polled_ok,
    poller_cli,
    wait_delivered,
    wait_log,
)

pytestmark = pytest.mark.e2e


def discovered(**expected: int) -> Any:
    """A rooms_discovered log event with these counts."""

    def matches(e: dict[str, Any]) -> bool:
        return e.get("event") == "rooms_discovered" and all(
            e.get(k) == v for k, v in expected.items()
        )

    return matches


async def test_rooms_appear_leave_and_survive_a_restart(
    simulator: Simulator,
    receiver: Receiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
) -> None:
    simulator.add_room("old", name="class-old")
    history = simulator.add_event("old")  # there before poller: backfill is off
    simulator.add_room("lobby", name="lobby")  # filtered out by the name prefix
    simulator.add_event("lobby")
    config = write_config(
        **daemon_config(
            simulator,
            receiver,
            store_url,
            rooms=[],
            # Every room at one pace: this is about the listing (tests/e2e/test_adaptive.py
            # is about paces).
            poll={"interval": "300ms", "backfill": False, "adaptive": False},
            discovery={
                "enabled": True,
                "interval": "300ms",
                "name_prefix": "class-",
                "keep": "8s",  # room for two status calls on a loaded machine
            },
        )
    )
    daemon = await daemons(config).start()
    await wait_log(daemon, discovered(first_listing=True, added=1), "the first listing", 10)
    await wait_log(daemon, polled_ok("old"), "old's first complete poll", 10)
    fresh = simulator.add_event("old")

    # A room created while poller runs: everything in it is new, even with backfill off.
    simulator.add_room("new", name="class-new")
    early = simulator.add_event("new")
    await wait_delivered(receiver, {("all", fresh["id"]), ("all", early["id"])}, daemon)
    assert ("all", history["id"]) not in pairs(receiver)
    assert not any(e.get("room_id") == "lobby" for e in daemon.events())

    # It leaves the listing: polled 8 s more (a late recording still arrives), then retired.
    simulator.set_room("new", enabled=False)
    await wait_log(daemon, discovered(left=1), "new to leave the listing", 10)
    # At once: the room has its 8 s of keep left, whatever the status calls below take.
    late = simulator.add_event("new")
    code, out, err = await poller_cli("status", "--json", "-c", str(config))
    assert code == 0, err
    rooms = {r["id"]: r for r in json.loads(out)["rooms"]}
    assert set(rooms) == {"old", "new"}
    assert rooms["old"]["origin"] == "discovery"
    assert rooms["old"]["left_at"] is None
    assert rooms["new"]["left_at"] is not None
    code, out, err = await poller_cli("status", "-c", str(config))
    assert "  new (discovered " in out
    assert ", left the listing " in out
    await wait_delivered(receiver, {("all", late["id"])}, daemon)
    await wait_log(daemon, discovered(retired=1), "new to be retired", 15)
    code, out, err = await poller_cli("status", "--json", "-c", str(config))
    status = json.loads(out)
    assert [r["id"] for r in status["rooms"]] == ["old"]
    assert status["retired_rooms"] == 1
    assert await daemon.stop() == 0

    # A restart polls what was found at once, before its first walk.
    again = await daemons(config).start()
    await wait_log(again, lambda e: e.get("event") == "started" and e.get("rooms") == 1, "", 5)
    after = simulator.add_event("old")
    await wait_delivered(receiver, {("all", after["id"])}, again)
    assert await again.stop() == 0
