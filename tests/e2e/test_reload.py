"""SIGHUP re-reads the config: rooms and webhooks change in place, a broken config changes
nothing, and what needs a restart says so."""

from __future__ import annotations

import signal
from typing import Any

import aiohttp
import pytest

from poller.receiver import Receiver
from poller.simulator import Simulator
from tests.conftest import ConfigWriter, DaemonProcess, daemon_config, free_port
from tests.e2e.test_daemon import Daemons, pairs, wait_delivered, wait_log

pytestmark = pytest.mark.e2e


def logged(event: str, **expected: Any) -> Any:
    def matches(e: dict[str, Any]) -> bool:
        return e.get("event") == event and all(e.get(k) == v for k, v in expected.items())

    return matches


async def reload(daemon: DaemonProcess, event: str, **expected: Any) -> None:
    """SIGHUP, then wait for the reload's outcome and the READY=1 that ends it."""
    matches = logged(event, **expected)
    seen = sum(1 for e in daemon.events() if matches(e))
    daemon.send(signal.SIGHUP)
    await daemon.wait_notification("RELOADING=1", 10)
    await daemon.wait_notification("READY=1", 10)

    def one_more(e: dict[str, Any]) -> bool:
        return sum(1 for x in daemon.events() if matches(x)) > seen

    try:
        await wait_log(daemon, one_more, f"{event} {expected}", 10)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{daemon.output()[-3000:]}") from None


async def test_sighup_adds_and_removes_rooms_and_webhooks_in_place(
    simulator: Simulator,
    receiver: Receiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
) -> None:
    port = free_port()
    health = f"http://127.0.0.1:{port}"
    one = daemon_config(
        simulator,
        receiver,
        store_url,
        rooms=["room-a"],
        webhooks=[{"name": "all"}],
        server={"listen": f"127.0.0.1:{port}"},
    )
    config = write_config(**one)
    daemon = await daemons(config).start()
    first = simulator.add_event("room-a")
    await wait_delivered(receiver, {("all", first["id"])}, daemon)

    # A room and a webhook more.
    two = daemon_config(
        simulator,
        receiver,
        store_url,
        rooms=["room-a", "room-b"],
        webhooks=[{"name": "all"}, {"name": "filtered"}],
        server={"listen": f"127.0.0.1:{port}"},
    )
    write_config(**two)
    await reload(daemon, "reloaded", rooms_added=["room-b"], webhooks_added=["filtered"])
    # Still ready at once: a reload is no new start (no "no successful poll yet").
    async with aiohttp.ClientSession() as session, session.get(f"{health}/readyz") as resp:
        assert resp.status == 200, await resp.text()
    in_b = simulator.add_event("room-b")
    in_a = simulator.add_event("room-a")
    await wait_delivered(
        receiver,
        {
            ("all", in_b["id"]),
            ("filtered", in_b["id"]),
            ("all", in_a["id"]),
            ("filtered", in_a["id"]),
        },
        daemon,
    )

    # A broken config changes nothing: the daemon goes on with the running one.
    config.write_text(config.read_text() + "\n[poll\n")
    await reload(daemon, "reload_failed")
    (failed,) = [e for e in daemon.events() if e.get("event") == "reload_failed"]
    assert "invalid TOML" in failed["error"]
    still = simulator.add_event("room-b")
    await wait_delivered(receiver, {("all", still["id"]), ("filtered", still["id"])}, daemon)

    # What a running process cannot change is kept, and said; the rest applies.
    moved = {**one, "store": {"url": store_url + "-elsewhere"}, "instance_id": "renamed"}
    write_config(**moved)
    await reload(daemon, "reloaded", rooms_removed=["room-b"], webhooks_removed=["filtered"])
    (restart,) = [e for e in daemon.events() if e.get("event") == "reload_needs_restart"]
    assert restart["keys"] == ["store", "instance_id"]
    gone = simulator.add_event("room-b")  # room-b is no longer polled
    last = simulator.add_event("room-a")
    await wait_delivered(receiver, {("all", last["id"])}, daemon)
    assert ("all", gone["id"]) not in pairs(receiver)
    assert ("filtered", last["id"]) not in pairs(receiver)
    assert await daemon.stop() == 0
