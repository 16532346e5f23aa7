"""Chaos: the real daemon, killed at random moments, against a receiver that misbehaves.

Events arrive in the simulator all along; the receiver answers 500 or 503, hangs past
the delivery timeout or resets the connection, at random; the daemon is SIGKILLed
(and a few times SIGTERMed) at random moments and restarted each time. At the end the
event source stops, the receiver heals and the daemon drains. Then:

- every (event, webhook) pair the simulator published was accepted (0 lost), with the
  exact body and a signature the reference ``standardwebhooks`` package verifies;
- duplicates are counted, each is traced to the daemon run whose acceptance went
  unrecorded (a static header names the run), and each stopped run accounts for at
  most ``CAPACITY`` of them, a run never stopped for none.

The short form (about a minute each) is part of the normal run; ``POLLER_CHAOS_LONG=1``
runs the long form by hand. The seed is printed; ``POLLER_CHAOS_SEED=N`` replays its
random choices (the timings of a real run are never quite the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from poller.receiver import Received
from poller.simulator import Simulator
from tests.chaos.receiver import ChaosReceiver
from tests.conftest import ConfigWriter, DaemonProcess, daemon_config, make_secret
from tests.e2e.test_daemon import compact

Daemons = Callable[..., DaemonProcess]
Pair = tuple[str, str]  # (webhook, event id), as the receiver records them

LONG = os.environ.get("POLLER_CHAOS_LONG") == "1"
ROOMS = [f"chaos-room-{i}" for i in range(6)]
HOOKS = [
    {"name": "all", "max_concurrency": 4},
    {"name": "half", "rooms": ROOMS[:3], "max_concurrency": 2},
]
RUN_HEADER = "X-Chaos-Run"  # a static header naming the daemon run that sent a request
# The most deliveries one daemon run can have sent and not yet recorded, which is what
# stopping it can make repeat. DeliveryWorker claims for a webhook only as many rows as
# it has free slots (max_concurrency minus its tasks in flight), and a task stays in
# flight until its outcome is written (``_deliver`` awaits the group commit): so the
# claim batch is bounded by the same slots, and at any instant at most the sum of the
# webhooks' max_concurrency rows are claimed and unrecorded. A stop repeats at most
# those of them the receiver had already accepted; a run never stopped repeats none.
CAPACITY = sum(int(h["max_concurrency"]) for h in HOOKS)
DELIVERY_TIMEOUT = 3.0
# Enough attempts that a delivery never goes dead under the chaos mix (a third of
# requests fail: 21 failures in a row are about 1e-10 likely), spaced briefly.
RETRY_SCHEDULE = ["50ms", "100ms", "200ms", "300ms", *["500ms"] * 17]


@dataclass(frozen=True)
class Form:
    """How much chaos one run gets."""

    kills: int
    sigterms: int

    def stops(self, rng: random.Random) -> list[signal.Signals]:
        """The signals of the run, in a random order."""
        signals = [signal.SIGKILL] * self.kills + [signal.SIGTERM] * self.sigterms
        rng.shuffle(signals)
        return signals


SQLITE_FORM = Form(kills=100, sigterms=10) if LONG else Form(kills=20, sigterms=3)
POSTGRES_FORM = Form(kills=40, sigterms=5) if LONG else Form(kills=10, sigterms=2)


def chaos_seed() -> int:
    given = os.environ.get("POLLER_CHAOS_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**32)


@pytest.fixture
async def chaos_receiver() -> AsyncIterator[ChaosReceiver]:
    rcv = ChaosReceiver({str(h["name"]): make_secret() for h in HOOKS})
    await rcv.start()
    yield rcv
    await rcv.stop()


class EventSource:
    """Publishes events to random rooms of the simulator until stopped."""

    def __init__(self, simulator: Simulator, rng: random.Random) -> None:
        self._simulator = simulator
        self._rng = rng
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._publish())

    async def stop(self) -> list[dict[str, Any]]:
        """Stop publishing; every event published, in every room."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return [e for room in ROOMS for e in self._simulator.events.get(room, [])]

    async def _publish(self) -> None:
        while True:
            self._simulator.add_event(self._rng.choice(ROOMS))
            await asyncio.sleep(self._rng.uniform(0.02, 0.12))  # the pace of arrivals


def expected_pairs(events: list[dict[str, Any]]) -> set[Pair]:
    wanted = {str(h["name"]): set(h.get("rooms", ROOMS)) for h in HOOKS}
    return {
        (name, e["id"])
        for e in events
        for name, rooms in wanted.items()
        if e["data"]["room_id"] in rooms
    }


async def owed(url: str) -> dict[Pair, str]:
    """(webhook, event id) -> state of every delivery not delivered."""
    engine = create_async_engine(url, poolclass=NullPool)
    query = text("SELECT webhook, event_id, state FROM deliveries WHERE state <> 'delivered'")
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
    finally:
        await engine.dispose()
    return {(row.webhook, row.event_id): row.state for row in rows}


@dataclass
class Tally:
    """What one chaos run did and saw."""

    name: str
    seed: int
    stopped: dict[str, signal.Signals] = field(default_factory=dict)  # run -> its signal

    @property
    def kills(self) -> int:
        return sum(how is signal.SIGKILL for how in self.stopped.values())

    @property
    def sigterms(self) -> int:
        return sum(how is signal.SIGTERM for how in self.stopped.values())

    def check(self, receiver: ChaosReceiver, events: list[dict[str, Any]]) -> str:
        """Assert nothing was lost and duplicates are bounded; return the summary line."""
        expected = expected_pairs(events)
        copies: dict[Pair, list[Received]] = defaultdict(list)
        for r in sorted(receiver.delivered(), key=lambda r: r.at):
            copies[(r.webhook, r.msg_id)].append(r)
        lost = expected - set(copies)
        assert not lost, (self.seed, sorted(lost)[:5])
        assert set(copies) == expected, (self.seed, sorted(set(copies) - expected)[:5])
        assert all(r.valid for r in receiver.received), self.seed
        by_id = {e["id"]: e for e in events}
        for r in receiver.delivered():
            assert r.body == compact(by_id[r.msg_id]), (self.seed, r.msg_id)
        # A pair accepted again was not recorded after an earlier acceptance: that
        # earlier request's run is the one that repeats it, and must have been stopped.
        repeated_by = Counter(r.headers[RUN_HEADER] for rs in copies.values() for r in rs[:-1])
        duplicates = sum(repeated_by.values())
        stops = len(self.stopped)
        assert set(repeated_by) <= set(self.stopped), (self.seed, repeated_by)
        assert max(repeated_by.values(), default=0) <= CAPACITY, (self.seed, repeated_by)
        assert duplicates <= stops * CAPACITY
        answers = ", ".join(f"{a}={n}" for a, n in sorted(receiver.answers.items()))
        return (
            f"chaos[{self.name}] seed={self.seed} kills={self.kills} sigterms={self.sigterms} "
            f"events={len(events)} pairs={len(expected)} lost={len(lost)} "
            f"duplicates={duplicates} (most from one stop: "
            f"{max(repeated_by.values(), default=0)}, bound {CAPACITY}) "
            f"bound={stops * CAPACITY} requests={len(receiver.received)} ({answers})"
        )


def chaos_config(
    simulator: Simulator,
    receiver: ChaosReceiver,
    url: str,
    write_config: ConfigWriter,
    instance_id: str,
    run: str,
) -> Path:
    """The config of one daemon run: its requests carry ``RUN_HEADER: run``."""
    tables = daemon_config(
        simulator,
        receiver,
        url,
        rooms=ROOMS,
        webhooks=[{**h, "headers": {RUN_HEADER: run}} for h in HOOKS],
        poll={"interval": "500ms", "page_size": 100, "lease_ttl": "2s"},
        delivery={"timeout": f"{DELIVERY_TIMEOUT}s", "retry_schedule": RETRY_SCHEDULE},
    )
    tables["instance_id"] = instance_id
    return write_config(f"{run}.toml", **tables)


async def run_then_stop(
    daemon: DaemonProcess, receiver: ChaosReceiver, rng: random.Random, how: signal.Signals
) -> None:
    """Start ``daemon``, let it deliver a little, and stop it at a random moment."""
    before = len(receiver.received)
    await daemon.start(ready_timeout=30)
    # Some request is under way, then a random moment: mid-claim, mid-send, mid-write.
    await receiver.wait_for(lambda: len(receiver.received) > before, 10)
    await asyncio.sleep(rng.uniform(0.0, 0.8))
    code = await daemon.stop(how, timeout=20)
    if how is signal.SIGTERM:
        assert code == 0, daemon.output()[-3000:]


async def drain(
    receiver: ChaosReceiver, url: str, events: list[dict[str, Any]], daemons: list[DaemonProcess]
) -> None:
    """Wait until every pair is accepted and the store owes nothing, then SIGTERM all."""
    expected = expected_pairs(events)
    timeout = 300 if LONG else 90

    def all_accepted() -> bool:
        return expected <= {(r.webhook, r.msg_id) for r in receiver.delivered()}

    assert await receiver.wait_for(all_accepted, timeout), daemons[0].output()[-3000:]
    # Rows a killed instance had claimed wait out their claim on PostgreSQL: let them go
    # too, so the count of duplicates is final and nothing is left dead or owed.
    async with asyncio.timeout(timeout):
        while left := await owed(url):
            await asyncio.sleep(0.2)
    assert not left
    codes = await asyncio.gather(*(d.stop(signal.SIGTERM, timeout=20) for d in daemons))
    assert codes == [0] * len(daemons), [d.output()[-2000:] for d in daemons]


async def test_one_instance_on_sqlite_killed_at_random_moments_loses_nothing(
    simulator: Simulator,
    chaos_receiver: ChaosReceiver,
    write_config: ConfigWriter,
    daemons: Daemons,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed = chaos_seed()
    with capsys.disabled():
        print(f"\nchaos[sqlite] seed={seed} (replay with POLLER_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    chaos_receiver.configure(seed=seed + 2, hang=DELIVERY_TIMEOUT + 1)
    url = f"sqlite+aiosqlite:///{tmp_path / 'poller.db'}"
    tally = Tally("sqlite", seed)

    def run(name: str) -> DaemonProcess:
        # One id for every run, as under systemd: a restart takes the killed run's
        # claims over at once.
        config = chaos_config(simulator, chaos_receiver, url, write_config, "chaos-sqlite", name)
        return daemons(config)

    source = EventSource(simulator, random.Random(seed + 1))
    source.start()
    for n, how in enumerate(SQLITE_FORM.stops(rng)):
        await run_then_stop(run(f"run-{n}"), chaos_receiver, rng, how)
        tally.stopped[f"run-{n}"] = how
    events = await source.stop()
    chaos_receiver.heal_all()
    await drain(chaos_receiver, url, events, [await run("run-last").start()])
    summary = tally.check(chaos_receiver, events)
    with capsys.disabled():
        print(summary)


@pytest.mark.postgres
async def test_three_instances_on_postgres_one_killed_repeatedly_lose_nothing(
    simulator: Simulator,
    chaos_receiver: ChaosReceiver,
    pg_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed = chaos_seed()
    with capsys.disabled():
        print(f"\nchaos[postgres] seed={seed} (replay with POLLER_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    chaos_receiver.configure(seed=seed + 2, hang=DELIVERY_TIMEOUT + 1)

    def instance(instance_id: str) -> DaemonProcess:
        config = chaos_config(
            simulator, chaos_receiver, pg_url, write_config, instance_id, instance_id
        )
        return daemons(config)

    steady = [instance("chaos-a"), instance("chaos-b")]
    await asyncio.gather(*(d.start(ready_timeout=30) for d in steady))
    tally = Tally("postgres", seed)
    source = EventSource(simulator, random.Random(seed + 1))
    source.start()
    for n, how in enumerate(POSTGRES_FORM.stops(rng)):
        # A fresh id per run (as hostname:pid gives), so a restart need not wait out
        # the killed run's heartbeat; its claims and leases wait out their TTLs.
        victim_id = f"chaos-victim-{n}"
        await run_then_stop(instance(victim_id), chaos_receiver, rng, how)
        tally.stopped[victim_id] = how
    events = await source.stop()
    chaos_receiver.heal_all()
    last = await instance("chaos-victim-last").start(ready_timeout=30)
    await drain(chaos_receiver, pg_url, events, [*steady, last])
    summary = tally.check(chaos_receiver, events)
    with capsys.disabled():
        print(summary)


def test_the_check_catches_a_lost_pair_and_a_duplicate_no_stop_explains() -> None:
    # The chaos runs pass when poller is right; this shows their check could fail.
    receiver = ChaosReceiver({str(h["name"]): make_secret() for h in HOOKS})
    event = {"id": "e1", "data": {"room_id": ROOMS[-1]}}  # a room only "all" receives

    def accepted(run: str, at: float) -> Received:
        headers = {RUN_HEADER: run}
        return Received("all", "e1", compact(event), headers, True, 204, at, at)

    tally = Tally("check", seed=0, stopped={"run-0": signal.SIGKILL})
    with pytest.raises(AssertionError):
        tally.check(receiver, [event])  # lost
    receiver.received.extend([accepted("run-0", 1.0), accepted("run-1", 2.0)])
    assert "duplicates=1 " in tally.check(receiver, [event])  # run-0 was killed
    receiver.received.append(accepted("run-1", 3.0))
    with pytest.raises(AssertionError):
        tally.check(receiver, [event])  # run-1 was never stopped
