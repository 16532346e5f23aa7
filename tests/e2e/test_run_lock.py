"""One daemon per SQLite file: real processes, a real kill -9."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from poller.receiver import Receiver
from poller.simulator import Simulator
from tests.conftest import ConfigWriter, DaemonProcess, daemon_config, delivered, refused_start

ROOM = "room-1"


async def test_a_second_daemon_on_the_same_sqlite_file_exits_2_whatever_its_id(
    simulator: Simulator,
    receiver: Receiver,
    write_config: ConfigWriter,
    daemons: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'poller.db'}"
    first = await daemons(
        write_config(
            "first.toml", instance_id="a", **daemon_config(simulator, receiver, url, rooms=[ROOM])
        )
    ).start()
    second_config, last = await refused_start(
        write_config(
            "second.toml", instance_id="b", **daemon_config(simulator, receiver, url, rooms=[ROOM])
        )
    )
    assert last == (
        f"poller: error: {second_config}: store.url: the store file {tmp_path / 'poller.db'} "
        f"is in use by another poller daemon (pid {first.proc.pid if first.proc else 0}); "
        "a SQLite store serves one daemon: stop the other, or use PostgreSQL for several "
        "instances"
    )
    # The first one noticed nothing.
    event = simulator.add_event(ROOM)
    assert await receiver.wait_for(lambda: delivered(receiver, event["id"]), 30)
    assert await first.stop() == 0


async def test_a_restart_after_kill_9_under_the_same_id_joins_at_once(
    simulator: Simulator,
    receiver: Receiver,
    write_config: ConfigWriter,
    daemons: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    # A container's default id is hostname:1, the same after every restart.
    url = f"sqlite+aiosqlite:///{tmp_path / 'poller.db'}"
    config = write_config(
        instance_id="box:1", **daemon_config(simulator, receiver, url, rooms=[ROOM])
    )
    crashed = await daemons(config).start()
    first = simulator.add_event(ROOM)
    assert await receiver.wait_for(lambda: delivered(receiver, first["id"]), 30)
    await crashed.kill()

    restarted = await daemons(config).start()
    # Its dead predecessor's fresh heartbeat is not waited out: the run lock proved it dead.
    events = restarted.events()
    assert not [e for e in events if e.get("event") == "instance_id_held"], events
    assert [e for e in events if e.get("event") == "took_over"], events
    second = simulator.add_event(ROOM)
    assert await receiver.wait_for(lambda: delivered(receiver, second["id"]), 30)
    assert await restarted.stop() == 0
