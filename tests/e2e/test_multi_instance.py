"""Several daemons on one PostgreSQL: rooms spread and leased, deliveries claimed once."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from poller.receiver import Receiver
from poller.simulator import Simulator
from tests.conftest import ConfigWriter, DaemonProcess, daemon_config

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

ROOMS = [f"room-{i:02d}" for i in range(50)]
INTERVAL = 1.0


def config_for(
    simulator: Simulator, receiver: Receiver, pg_url: str, write_config: ConfigWriter, name: str
) -> Path:
    tables = daemon_config(
        simulator,
        receiver,
        pg_url,
        rooms=ROOMS,
        webhooks=[{"name": "all"}, {"name": "filtered", "rooms": ROOMS[:10]}],
        poll={"interval": f"{INTERVAL}s", "page_size": 5, "lease_ttl": "3s"},
        delivery={"timeout": "2s", "retry_schedule": ["200ms", "500ms", "1s"]},
    )
    tables["instance_id"] = name
    return write_config(f"{name}.toml", **tables)


def expected_pairs(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {("all", e["id"]) for e in events} | {
        ("filtered", e["id"]) for e in events if e["data"]["room_id"] in ROOMS[:10]
    }


def ok_polls(daemon: DaemonProcess) -> list[tuple[float, str]]:
    """(time, room) of every poll that did the room's work in this daemon."""
    from datetime import datetime

    out = []
    for e in daemon.events():
        if e.get("event") == "poll" and e.get("outcome") == "ok":
            ts = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
            out.append((ts, e["room_id"]))
    return out


async def start_three(
    simulator: Simulator,
    receiver: Receiver,
    pg_url: str,
    write_config: ConfigWriter,
    daemons: Callable[..., DaemonProcess],
) -> list[DaemonProcess]:
    procs = [
        daemons(config_for(simulator, receiver, pg_url, write_config, f"poller-{i}"))
        for i in range(3)
    ]
    await asyncio.gather(*(p.start() for p in procs))
    return procs


async def test_three_instances_share_rooms_and_deliver_each_pair_exactly_once(
    simulator: Simulator,
    receiver: Receiver,
    pg_url: str,
    write_config: ConfigWriter,
    daemons: Callable[..., DaemonProcess],
) -> None:
    events = [simulator.add_event(ROOMS[i % 50]) for i in range(60)]
    procs = await start_three(simulator, receiver, pg_url, write_config, daemons)
    for i in range(40):  # events keep arriving while all three run
        events.append(simulator.add_event(ROOMS[(i * 7) % 50]))
        await asyncio.sleep(0.05)
    expected = expected_pairs(events)

    def got() -> set[tuple[str, str]]:
        return {(r.webhook, r.msg_id) for r in receiver.delivered()}

    assert await receiver.wait_for(lambda: expected <= got(), 60), procs[0].output()[-3000:]
    # Let every room be polled a couple more times: a late duplicate would show now.
    settle_from = time.time()
    await asyncio.sleep(0)
    while time.time() - settle_from < 3 * INTERVAL:
        await asyncio.sleep(0.1)
    statuses = await asyncio.gather(*(p.stop() for p in procs))
    assert statuses == [0, 0, 0]

    pairs = Counter((r.webhook, r.msg_id) for r in receiver.delivered())
    assert set(pairs) == expected
    assert max(pairs.values()) == 1, [p for p, n in pairs.items() if n > 1]

    polls = {f"poller-{i}": ok_polls(p) for i, p in enumerate(procs)}
    rooms_by_instance = {name: {room for _, room in ps} for name, ps in polls.items()}
    print("rooms polled per instance:", {n: len(r) for n, r in rooms_by_instance.items()})
    assert all(rooms_by_instance.values()), rooms_by_instance
    # No room was polled by two instances within one interval of each other: a room
    # changing hands is released with a one-interval cooldown.
    timeline: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for name, ps in polls.items():
        for ts, room in ps:
            timeline[room].append((ts, name))
    for room, seq in timeline.items():
        seq.sort()
        for (t1, a), (t2, b) in itertools.pairwise(seq):
            if a != b:
                assert t2 - t1 >= INTERVAL - 0.01, (room, a, t1, b, t2)


async def test_kill_9_of_one_instance_hands_its_rooms_and_claims_to_the_others(
    simulator: Simulator,
    receiver: Receiver,
    pg_url: str,
    write_config: ConfigWriter,
    daemons: Callable[..., DaemonProcess],
) -> None:
    events = [simulator.add_event(ROOMS[i % 50]) for i in range(30)]
    # Slow answers keep deliveries in flight, so the kill interrupts some.
    receiver.fail("all", times=None, status=204, hang=0.8)
    procs = await start_three(simulator, receiver, pg_url, write_config, daemons)
    assert await receiver.wait_for(lambda: len(receiver.delivered()) >= 10, 30)
    # Kill only once every instance owns rooms, so there is something to take over.
    async with asyncio.timeout(30):
        while not all(ok_polls(p) for p in procs):
            await asyncio.sleep(0.1)

    victim = procs[1]
    kill_sent = time.time()
    await victim.kill()
    killed_at = time.time()
    for i in range(30):
        events.append(simulator.add_event(ROOMS[i]))
    expected = expected_pairs(events)

    def got() -> set[tuple[str, str]]:
        return {(r.webhook, r.msg_id) for r in receiver.delivered()}

    assert await receiver.wait_for(lambda: expected <= got(), 60), procs[0].output()[-3000:]
    # The victim's claimed deliveries were taken over once their claims expired:
    # nothing is left owed in the store.
    async with asyncio.timeout(60):
        while await owed(pg_url):
            await asyncio.sleep(0.2)
    receiver.heal("all")
    statuses = await asyncio.gather(procs[0].stop(), procs[2].stop())
    assert statuses == [0, 0]

    pairs = Counter((r.webhook, r.msg_id) for r in receiver.delivered())
    duplicates = {p for p, n in pairs.items() if n > 1}
    # In flight at the kill: sent before it and not yet recorded by the victim,
    # i.e. still unanswered, or answered so shortly before the kill that the
    # outcome could not reach the store (it takes milliseconds; 1 s is generous).
    in_flight_at_kill = {
        (r.webhook, r.msg_id)
        for r in receiver.received
        if r.arrived < killed_at and r.at > kill_sent - 1.0
    }
    print(
        f"duplicates after kill -9: {len(duplicates)}; in flight at the kill: "
        f"{len(in_flight_at_kill)}"
    )
    assert duplicates <= in_flight_at_kill, [
        (
            r.webhook,
            r.msg_id[:8],
            round(r.arrived - kill_sent, 3),
            round(r.at - kill_sent, 3),
            r.status,
        )
        for r in receiver.received
        if (r.webhook, r.msg_id) in duplicates - in_flight_at_kill
    ]
    # The survivors polled rooms the victim had owned.
    survivors = {room for p in (procs[0], procs[2]) for ts, room in ok_polls(p) if ts > killed_at}
    victim_rooms = {room for _, room in ok_polls(victim)}
    assert victim_rooms
    assert victim_rooms <= survivors


async def owed(url: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            query = text("SELECT count(*) FROM deliveries WHERE state <> 'delivered'")
            return int((await conn.execute(query)).scalar_one())
    finally:
        await engine.dispose()


def test_concurrent_migrate_from_several_processes_is_safe(
    pg_url: str, write_config: ConfigWriter, simulator_free_config: dict[str, Any]
) -> None:
    config = write_config(**{**simulator_free_config, "store": {"url": pg_url}})
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "poller", "migrate", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs

    async def revision() -> list[Any]:
        engine = create_async_engine(pg_url)
        try:
            async with engine.connect() as conn:
                return list(
                    (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars()
                )
        finally:
            await engine.dispose()

    assert len(asyncio.run(revision())) == 1


@pytest.fixture
def simulator_free_config() -> dict[str, Any]:
    return {
        "hms": {"base_url": "http://127.0.0.1:9", "management_token": "t" * 40},
        "rooms": [{"id": "r"}],
        "webhooks": [
            {
                "name": "w",
                "url": "http://127.0.0.1:9/hook",
                "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            }
        ],
    }
