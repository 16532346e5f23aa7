"""End to end: the real daemon as a subprocess against a fake 100ms API and a receiver."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from poller.receiver import Receiver
from poller.simulator import Simulator
from tests.conftest import ConfigWriter, DaemonProcess, daemon_config

pytestmark = pytest.mark.e2e


async def test_delivers_backlog_and_new_events_then_stops_on_sigterm(
    simulator: Simulator,
    receiver: Receiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Callable[..., DaemonProcess],
) -> None:
    rooms = ["room-a", "room-b", "room-c"]
    backlog = [simulator.add_event(rooms[i % 3]) for i in range(25)]
    config = write_config(
        **daemon_config(
            simulator,
            receiver,
            store_url,
            rooms=rooms,
            webhooks=[{"name": "all"}, {"name": "filtered", "rooms": ["room-b"]}],
        )
    )
    daemon = await daemons(config).start()
    late = [simulator.add_event(r) for r in rooms]
    events = backlog + late
    expected = {("all", e["id"]) for e in events} | {
        ("filtered", e["id"]) for e in events if e["data"]["room_id"] == "room-b"
    }

    def got() -> set[tuple[str, str]]:
        return {(r.webhook, r.msg_id) for r in receiver.delivered()}

    assert await receiver.wait_for(lambda: expected <= got(), 20), daemon.output()
    assert await daemon.stop(signal.SIGTERM) == 0
    # Exactly once, exact bodies, valid Standard Webhooks signatures.
    assert len(receiver.delivered()) == len(expected)
    by_id = {e["id"]: e for e in events}
    for r in receiver.delivered():
        assert json.loads(r.body) == by_id[r.msg_id]
        Webhook(receiver.secrets[r.webhook]).verify(r.body, dict(r.headers))
        assert r.headers["User-Agent"].startswith("poller/")
        assert r.headers["Content-Type"] == "application/json"
