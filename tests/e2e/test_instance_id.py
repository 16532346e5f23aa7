"""One instance id, one live daemon: real processes on one PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from poller.receiver import Receiver
from poller.simulator import Simulator
from tests.conftest import ConfigWriter, DaemonProcess, daemon_config, delivered, refused_start

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

ROOM = "room-1"


def shared_config(
    simulator: Simulator, receiver: Receiver, pg_url: str, write_config: ConfigWriter, name: str
) -> Path:
    # lease_ttl 2 s: the heartbeat TTL; a heartbeat every 2/3 s.
    tables = daemon_config(simulator, receiver, pg_url, rooms=[ROOM])
    tables["instance_id"] = "shared"
    return write_config(name, **tables)


async def test_a_second_daemon_under_a_live_id_exits_2_and_the_first_keeps_delivering(
    simulator: Simulator,
    receiver: Receiver,
    pg_url: str,
    write_config: ConfigWriter,
    daemons: Callable[..., DaemonProcess],
) -> None:
    first = await daemons(
        shared_config(simulator, receiver, pg_url, write_config, "first.toml")
    ).start()
    before = simulator.add_event(ROOM)
    assert await receiver.wait_for(lambda: delivered(receiver, before["id"]), 30)

    second_config, last = await refused_start(
        shared_config(simulator, receiver, pg_url, write_config, "second.toml")
    )
    assert last.startswith(f"poller: error: {second_config}: instance_id: "), last
    assert "instance id 'shared' is in use by another running process" in last
    assert "give every instance its own instance_id" in last

    # The first one noticed nothing: it still polls and delivers, and stops cleanly.
    after = simulator.add_event(ROOM)
    assert await receiver.wait_for(lambda: delivered(receiver, after["id"]), 30)
    assert not [e for e in first.events() if e.get("event") == "instance_id_taken"]
    assert await first.stop() == 0


async def test_a_daemon_killed_with_9_restarts_under_its_id(
    simulator: Simulator,
    receiver: Receiver,
    pg_url: str,
    write_config: ConfigWriter,
    daemons: Callable[..., DaemonProcess],
) -> None:
    config = shared_config(simulator, receiver, pg_url, write_config, "shared.toml")
    crashed = await daemons(config).start()
    await crashed.kill()
    # Its heartbeat is at most 2 s (the TTL) from stale: the restart waits that out.
    restarted = await daemons(config).start(ready_timeout=30)
    event = simulator.add_event(ROOM)
    assert await receiver.wait_for(lambda: delivered(receiver, event["id"]), 30)
    assert await restarted.stop() == 0
