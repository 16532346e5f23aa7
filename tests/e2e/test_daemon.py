"""End to end: the real daemon as a subprocess against a fake 100ms API and a receiver.

Everything here is real: ``poller run`` in its own process, signals, SQLite files or
PostgreSQL, HTTP on 127.0.0.1. Nothing sleeps hoping for the best: every wait is on a
condition with a bounded timeout.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook

from poller.receiver import Receiver
from poller.simulator import Simulator
from tests.conftest import APP_SECRET, ConfigWriter, DaemonProcess, daemon_config, make_secret

pytestmark = pytest.mark.e2e

Daemons = Callable[..., DaemonProcess]
Event = dict[str, Any]

BEAM = "beam.recording.success"
SESSION = "track.add.success"


# --- helpers ------------------------------------------------------------------------


def compact(event: Event) -> bytes:
    """The body the contract promises: compact JSON, UTF-8, non-ASCII as raw UTF-8."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def pairs(receiver: Receiver) -> set[tuple[str, str]]:
    """(webhook, event id) of every successful delivery."""
    return {(r.webhook, r.msg_id) for r in receiver.delivered()}


def ids_of(events: Iterable[Event]) -> set[str]:
    return {e["id"] for e in events}


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``predicate()`` holds, checking every 20 ms, for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_delivered(
    receiver: Receiver, expected: set[tuple[str, str]], daemon: DaemonProcess, timeout: float = 15
) -> None:
    ok = await receiver.wait_for(lambda: expected <= pairs(receiver), timeout)
    assert ok, f"missing {expected - pairs(receiver)}\n{daemon.output()}"


async def wait_log(
    daemon: DaemonProcess, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float
) -> None:
    """Wait for a JSON log event of ``daemon`` that satisfies ``predicate``."""
    await eventually(lambda: any(predicate(e) for e in daemon.events()), timeout, what)


async def wait_dead(daemon: DaemonProcess, event_ids: set[str], what: str) -> None:
    """Wait until the daemon logged a dead delivery of each of ``event_ids``."""
    left = set(event_ids)

    def all_dead(log: dict[str, Any]) -> bool:
        if log.get("event") == "delivery_attempt" and log.get("outcome") == "dead":
            left.discard(log.get("event_id", ""))
        return not left

    await wait_log(daemon, all_dead, what, 15)


def polled_ok(room_id: str) -> Callable[[dict[str, Any]], bool]:
    """A complete poll of ``room_id``."""

    def matches(e: dict[str, Any]) -> bool:
        return e.get("event") == "poll" and e.get("room_id") == room_id and e.get("outcome") == "ok"

    return matches


async def poller_cli(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    """Run ``python -m poller ARGS`` without blocking the loop that serves the receiver."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "poller",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class TrackingReceiver(Receiver):
    """A receiver that also notes each request when it arrives, before any ``hang``.

    The plain receiver records a request only once it has answered it, so a hanging
    request is invisible until then; these tests need to know it is in flight.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.arrivals: list[tuple[str, str]] = []  # (webhook, webhook-id)

    def app(self) -> web.Application:
        app = super().app()

        @web.middleware
        async def track(request: web.Request, handler: Any) -> web.StreamResponse:
            name = request.path.rsplit("/", 1)[-1]
            self.arrivals.append((name, request.headers.get("webhook-id", "")))
            assert self._changed is not None
            async with self._changed:
                self._changed.notify_all()
            response: web.StreamResponse = await handler(request)
            return response

        app.middlewares.append(track)
        return app


@pytest.fixture
async def tracking() -> AsyncIterator[TrackingReceiver]:
    """A receiver with webhook ``all`` that sees requests as they arrive."""
    rcv = TrackingReceiver({"all": make_secret(), "filtered": make_secret()})
    await rcv.start()
    yield rcv
    await rcv.stop()


# --- 1. the main flow -----------------------------------------------------------------


@dataclass(frozen=True)
class _Hook:
    name: str
    event_types: frozenset[str] | None = None
    rooms: frozenset[str] | None = None

    def matches(self, event: Event) -> bool:
        return (self.event_types is None or event["type"] in self.event_types) and (
            self.rooms is None or event["data"]["room_id"] in self.rooms
        )


async def test_main_flow_filters_paging_exact_signed_bodies_exactly_once(
    simulator: Simulator,
    receiver: Receiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
) -> None:
    rooms = ["room-a", "room-b", "room-c"]
    hooks = [
        _Hook("all", event_types=frozenset({BEAM})),
        _Hook("filtered", rooms=frozenset({"room-b", "room-c"})),
    ]
    backlog = [
        simulator.add_event(rooms[i % 3], SESSION if i % 4 == 0 else BEAM) for i in range(24)
    ]
    # Non-ASCII text must arrive as raw UTF-8; 33 must stay 33 (never 33.0), 0.5 stays 0.5.
    special = simulator.add_event(
        "room-b", BEAM, note="Grüße aus 東京 ✓ — «ok»", duration=33, size=15316104, ratio=0.5
    )
    backlog.append(special)
    # A type the daemon does not ask the API for is never delivered.
    ignored = simulator.add_event("room-a", "peer.join.success")
    interval = 0.3
    config = write_config(
        **daemon_config(
            simulator,
            receiver,
            store_url,
            rooms=rooms,
            webhooks=[
                {"name": "all", "event_types": [BEAM]},
                {"name": "filtered", "rooms": ["room-b", "room-c"]},
            ],
            hms={"event_types": [BEAM, SESSION]},
            poll={"interval": f"{interval}s", "page_size": 3},
        )
    )

    def expected_for(events: Iterable[Event]) -> set[tuple[str, str]]:
        return {(h.name, e["id"]) for e in events for h in hooks if h.matches(e)}

    daemon = await daemons(config).start()
    await wait_delivered(receiver, expected_for(backlog), daemon)

    # Events published while running arrive within two poll intervals.
    late: list[Event] = []
    for i, (room, kind) in enumerate([("room-a", BEAM), ("room-b", SESSION), ("room-c", BEAM)]):
        event = simulator.add_event(room, kind, sequence=i)
        added_at = time.time()
        late.append(event)
        await wait_delivered(receiver, expected_for(late), daemon, timeout=10)
        first = min(r.at for r in receiver.delivered() if r.msg_id == event["id"])
        assert first - added_at <= 2 * interval + 1.5, f"{event['id']} took {first - added_at}s"

    assert await daemon.stop(signal.SIGTERM) == 0

    events = backlog + late
    expected = expected_for(events)
    assert {"all", "filtered"} == {w for w, _ in expected}
    # Exactly once: no failed or repeated request, nothing that was not owed.
    assert all(r.ok for r in receiver.received), [r for r in receiver.received if not r.ok]
    counts = Counter((r.webhook, r.msg_id) for r in receiver.received)
    assert set(counts) == expected
    assert set(counts.values()) == {1}
    assert ignored["id"] not in {r.msg_id for r in receiver.received}
    # The poller walked several pages, passing `next` back as `start`.
    assert any(k == "start" for req in simulator.requests for k, _ in req["query"])

    by_id = {e["id"]: e for e in events}
    for r in receiver.received:
        event = by_id[r.msg_id]
        assert r.body == compact(event)
        assert json.loads(r.body) == event
        Webhook(receiver.secrets[r.webhook]).verify(r.body, dict(r.headers))
        assert r.headers["webhook-id"] == event["id"]
        assert r.headers["User-Agent"].startswith("poller/")
        assert r.headers["Content-Type"] == "application/json"
    special_body = next(r.body for r in receiver.received if r.msg_id == special["id"])
    assert "Grüße aus 東京 ✓ — «ok»".encode() in special_body
    assert b"\\u" not in special_body
    assert b'"duration":33,' in special_body
    data = json.loads(special_body)["data"]
    assert type(data["duration"]) is int
    assert type(data["size"]) is int
    assert data["ratio"] == 0.5


# --- 2. kill -9 ------------------------------------------------------------------------


async def test_kill_9_during_deliveries_then_restart_delivers_everything(
    simulator: Simulator,
    tracking: TrackingReceiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
) -> None:
    receiver = tracking
    rooms = ["room-a", "room-b"]
    config = write_config(
        **daemon_config(
            simulator,
            receiver,
            store_url,
            rooms=rooms,
            delivery={"timeout": "1s", "retry_schedule": ["100ms", "200ms", "500ms", "1s", "1s"]},
            # Short room leases: on PostgreSQL the killed instance's leases must expire.
            poll={"lease_ttl": "3s"},
        )
    )
    before = [simulator.add_event(rooms[i % 2]) for i in range(6)]
    daemon = await daemons(config).start()
    await wait_delivered(receiver, {("all", e["id"]) for e in before}, daemon)

    # The receiver stops answering: deliveries of new events hang in flight.
    receiver.fail("all", times=None, hang=30)
    during = [simulator.add_event(rooms[i % 2]) for i in range(6)]
    during_ids = ids_of(during)
    arrived = await receiver.wait_for(
        lambda: any(i in during_ids for _, i in receiver.arrivals), 10
    )
    assert arrived, daemon.output()
    await daemon.kill()
    assert daemon.proc is not None
    assert daemon.proc.returncode == -signal.SIGKILL
    delivered_before_kill = {r.msg_id for r in receiver.delivered()}
    in_flight = {i for _, i in receiver.arrivals} - delivered_before_kill
    assert in_flight

    receiver.heal("all")
    while_down = [simulator.add_event(room) for room in rooms]
    all_ids = ids_of(before + during + while_down)
    restarted = await daemons(config).start()
    if store_url.startswith("sqlite"):
        # One instance per SQLite file: what the killed run held (delivery claims,
        # room leases) is the new run's at once, so polling resumes right away.
        for room in rooms:
            await wait_log(
                restarted,
                polled_ok(room),
                f"a poll of {room} after the restart (still leased by the killed run?)",
                5,
            )
        timeout = 10.0
    else:
        # On PostgreSQL the dead instance's claims and room leases may belong to a live
        # instance for all we know: they are taken over when they expire (claims after
        # 2 * delivery.timeout + 5 s, leases after poll.lease_ttl).
        timeout = 30.0
    await wait_delivered(receiver, {("all", i) for i in all_ids}, restarted, timeout=timeout)
    assert await restarted.stop(signal.SIGTERM) == 0

    counts = Counter(r.msg_id for r in receiver.delivered())
    assert set(counts) == all_ids
    duplicates = {i for i, n in counts.items() if n > 1}
    # At least once: only what was on the wire at the kill may be delivered twice.
    assert duplicates <= in_flight, duplicates - in_flight
    for r in receiver.delivered():
        Webhook(receiver.secrets["all"]).verify(r.body, dict(r.headers))


# --- 3. receiver outage -----------------------------------------------------------------


async def test_receiver_outage_then_recovery_retries_with_the_same_webhook_id(
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
            rooms=["room-a", "room-b"],
            delivery={"timeout": "2s", "retry_schedule": ["200ms", "300ms"] + ["500ms"] * 20},
        )
    )
    warmup = simulator.add_event("room-a")
    daemon = await daemons(config).start()
    await wait_delivered(receiver, {("all", warmup["id"])}, daemon)

    port = int(receiver.base_url.rsplit(":", 1)[1])
    await receiver.stop()
    piled = [simulator.add_event(room) for room in ("room-a", "room-b", "room-a", "room-b")]
    piled_ids = ids_of(piled)

    def refused() -> set[str]:
        return {
            e["event_id"]
            for e in daemon.events()
            if e.get("event") == "delivery_attempt"
            and e.get("outcome") == "retry"
            and "connection" in str(e.get("error"))
        }

    # Every piled-up event has met the closed port at least once.
    await eventually(lambda: piled_ids <= refused(), 10, "refused attempts")
    assert receiver.delivered()
    assert not any(r.msg_id in piled_ids for r in receiver.received)

    # Back, but still refusing a few with 503 before it accepts.
    receiver.fail("all", times=3, status=503)
    await receiver.start(port=port)
    await wait_delivered(receiver, {("all", i) for i in piled_ids}, daemon)
    assert await daemon.stop(signal.SIGTERM) == 0

    attempts: defaultdict[str, list[dict[str, str]]] = defaultdict(list)
    for r in receiver.received:
        assert r.valid
        Webhook(receiver.secrets["all"]).verify(r.body, dict(r.headers))
        attempts[json.loads(r.body)["id"]].append(dict(r.headers))
    assert set(attempts) == piled_ids | {warmup["id"]}
    for event_id, headers in attempts.items():
        # Every attempt of one event is the same message: same webhook-id and body.
        assert {h["webhook-id"] for h in headers} == {event_id}
    assert sum(len(h) for h in attempts.values()) == len(attempts) + 3
    assert Counter(r.msg_id for r in receiver.delivered()) == Counter(attempts.keys())
    # Bodies of repeated attempts are identical.
    bodies: defaultdict[str, set[bytes]] = defaultdict(set)
    for r in receiver.received:
        bodies[r.msg_id].add(r.body)
    assert all(len(b) == 1 for b in bodies.values())


# --- 4. dead deliveries and manual retry ----------------------------------------------------


async def test_always_failing_receiver_makes_a_dead_delivery_that_can_be_retried(
    simulator: Simulator,
    receiver: Receiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
) -> None:
    schedule = ["100ms", "200ms", "300ms"]
    config = write_config(
        **daemon_config(
            simulator,
            receiver,
            store_url,
            rooms=["room-a"],
            delivery={"timeout": "2s", "retry_schedule": schedule},
        )
    )
    receiver.fail("all", times=None, status=500)
    event = simulator.add_event("room-a")
    daemon = await daemons(config).start()

    def is_dead(e: dict[str, Any]) -> bool:
        return (
            e.get("event") == "delivery_attempt"
            and e.get("event_id") == event["id"]
            and e.get("outcome") == "dead"
        )

    await wait_log(daemon, is_dead, "the delivery to die", 15)
    tries = [r for r in receiver.received if r.msg_id == event["id"]]
    assert len(tries) == len(schedule) + 1
    assert {r.status for r in tries} == {500}

    code, out, err = await poller_cli("deliveries", "--state", "dead", "-c", str(config))
    assert code == 0, err
    rows = [line for line in out.splitlines() if event["id"] in line]
    assert len(rows) == 1, out
    assert " dead " in rows[0]
    assert f" {len(schedule) + 1} " in rows[0]
    # Dead means no more attempts.
    assert len([r for r in receiver.received if r.msg_id == event["id"]]) == len(schedule) + 1

    receiver.heal("all")
    code, out, err = await poller_cli("deliveries", "retry", "--dead", "-c", str(config))
    assert code == 0, err
    assert "1 dead deliveries" in out
    await wait_delivered(receiver, {("all", event["id"])}, daemon, timeout=10)
    assert await daemon.stop(signal.SIGTERM) == 0

    code, out, err = await poller_cli("deliveries", "--state", "dead", "-c", str(config))
    assert code == 0, err
    assert event["id"] not in out
    assert len(receiver.delivered()) == 1


# --- 5. API faults -----------------------------------------------------------------------------


async def test_api_faults_are_survived_and_every_event_delivered(
    simulator: Simulator,
    receiver: Receiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
) -> None:
    rooms = ["room-a", "room-b", "room-c"]
    config = write_config(**daemon_config(simulator, receiver, store_url, rooms=rooms))
    events = [simulator.add_event(rooms[i % 3]) for i in range(6)]
    simulator.inject("429", 3, retry_after=0.2)
    simulator.inject("500", 3)
    simulator.inject("bad_json", 3)
    daemon = await daemons(config).start()
    # Faults are served first in, first out: a delivery means they were all consumed.
    await wait_delivered(receiver, {("all", e["id"]) for e in events}, daemon, timeout=20)
    statuses = Counter(r["status"] for r in simulator.requests)
    assert statuses[429] == 3
    assert statuses[500] == 3

    # A second bout while running.
    simulator.inject("500", 2)
    simulator.inject("bad_json", 2)
    simulator.inject("429", 2, retry_after=0.2)
    more = [simulator.add_event(room) for room in rooms]
    await wait_delivered(receiver, {("all", e["id"]) for e in events + more}, daemon, timeout=20)
    assert daemon.proc is not None
    assert daemon.proc.poll() is None, daemon.output()
    assert await daemon.stop(signal.SIGTERM) == 0
    assert Counter(r.msg_id for r in receiver.delivered()) == Counter(ids_of(events + more))
    assert any(e.get("event") == "hms.retry" for e in daemon.events())


# --- 6. signals ------------------------------------------------------------------------------


async def test_sigint_exits_0(
    simulator: Simulator,
    receiver: Receiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
) -> None:
    config = write_config(**daemon_config(simulator, receiver, store_url, rooms=["room-a"]))
    event = simulator.add_event("room-a")
    daemon = await daemons(config).start()
    await wait_delivered(receiver, {("all", event["id"])}, daemon)
    assert await daemon.stop(signal.SIGINT) == 0
    assert any(e.get("event") == "stopped" for e in daemon.events()), daemon.output()


async def test_sigterm_with_a_hanging_receiver_exits_within_grace_and_redelivers(
    simulator: Simulator,
    tracking: TrackingReceiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
) -> None:
    receiver = tracking
    grace = 2.0
    config = write_config(
        **daemon_config(
            simulator,
            receiver,
            store_url,
            rooms=["room-a"],
            delivery={"timeout": "20s"},
        )
        | {"shutdown_grace": f"{grace:g}s"}
    )
    receiver.fail("all", times=None, hang=30)
    event = simulator.add_event("room-a")
    daemon = await daemons(config).start()
    assert await receiver.wait_for(lambda: ("all", event["id"]) in receiver.arrivals, 10)

    started = time.monotonic()
    assert await daemon.stop(signal.SIGTERM, timeout=grace + 5) == 0
    elapsed = time.monotonic() - started
    assert elapsed <= grace + 2, f"took {elapsed:.2f}s to stop"
    assert not receiver.delivered()

    receiver.heal("all")
    restarted = await daemons(config).start()
    await wait_delivered(receiver, {("all", event["id"])}, restarted)
    assert await restarted.stop(signal.SIGTERM) == 0
    assert [r.msg_id for r in receiver.delivered()] == [event["id"]]


# --- 7. backfill = false ---------------------------------------------------------------------


async def test_no_backfill_skips_what_was_there_first_but_not_what_came_while_down(
    simulator: Simulator,
    receiver: Receiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
) -> None:
    def config_for(rooms: list[str]) -> Path:
        return write_config(
            **daemon_config(simulator, receiver, store_url, rooms=rooms, poll={"backfill": False})
        )

    old_a = [simulator.add_event("room-a") for _ in range(3)]
    old_z = [simulator.add_event("room-z") for _ in range(3)]  # not configured yet
    config = config_for(["room-a"])

    first = await daemons(config).start()
    await wait_log(first, polled_ok("room-a"), "the first poll of room-a", 10)
    new_a = simulator.add_event("room-a")
    await wait_delivered(receiver, {("all", new_a["id"])}, first)
    assert await first.stop(signal.SIGTERM) == 0

    down = [simulator.add_event("room-a") for _ in range(2)]
    second = await daemons(config).start()
    await wait_delivered(receiver, {("all", e["id"]) for e in down}, second)
    assert await second.stop(signal.SIGTERM) == 0

    # room-z joins the config with events already in it: those are skipped.
    config = config_for(["room-a", "room-z"])
    third = await daemons(config).start()
    await wait_log(third, polled_ok("room-z"), "the first poll of room-z", 10)
    new_z = simulator.add_event("room-z")
    new_a2 = simulator.add_event("room-a")
    await wait_delivered(receiver, {("all", new_z["id"]), ("all", new_a2["id"])}, third)
    assert await third.stop(signal.SIGTERM) == 0

    counts = Counter(r.msg_id for r in receiver.received)
    assert counts == Counter(ids_of([new_a, *down, new_z, new_a2]))
    assert not ids_of(old_a + old_z) & set(counts)


# --- 8. a webhook added later -------------------------------------------------------------------


async def test_webhook_added_later_gets_only_events_first_seen_after_it(
    simulator: Simulator,
    receiver: Receiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
) -> None:
    early = [simulator.add_event("room-a") for _ in range(2)]
    config = write_config(**daemon_config(simulator, receiver, store_url, rooms=["room-a"]))
    first = await daemons(config).start()
    await wait_delivered(receiver, {("all", e["id"]) for e in early}, first)
    assert await first.stop(signal.SIGTERM) == 0

    while_down = simulator.add_event("room-a")
    config = write_config(
        **daemon_config(
            simulator,
            receiver,
            store_url,
            rooms=["room-a"],
            webhooks=[{"name": "all"}, {"name": "filtered"}],
        )
    )
    second = await daemons(config).start()
    late = simulator.add_event("room-a")
    expected = {(w, e["id"]) for w in ("all", "filtered") for e in (while_down, late)}
    await wait_delivered(receiver, expected, second)
    assert await second.stop(signal.SIGTERM) == 0

    got = Counter((r.webhook, r.msg_id) for r in receiver.delivered())
    assert set(got) == expected | {("all", e["id"]) for e in early}
    assert set(got.values()) == {1}


# --- 9. logs ------------------------------------------------------------------------------------


async def test_logs_are_json_events_without_secrets(
    simulator: Simulator,
    receiver: Receiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
) -> None:
    header_value = "static-header-value-Qm93Kx"
    config = write_config(
        **daemon_config(
            simulator,
            receiver,
            store_url,
            rooms=["room-a", "room-b"],
            webhooks=[
                {"name": "all", "headers": {"X-Api-Key": header_value}},
                {"name": "filtered", "rooms": ["room-b"]},
            ],
        )
    )
    events = [simulator.add_event(room) for room in ("room-a", "room-b", "room-b")]
    # Some failures, so that warnings and error paths are logged too.
    receiver.fail("all", times=2, status=500)
    receiver.fail("filtered", times=1, status=503, retry_after="0")
    simulator.inject("401", 1)
    simulator.inject("500", 1)
    daemon = await daemons(config).start()
    expected = {("all", e["id"]) for e in events} | {
        ("filtered", e["id"]) for e in events if e["data"]["room_id"] == "room-b"
    }
    await wait_delivered(receiver, expected, daemon)
    assert await daemon.stop(signal.SIGTERM) == 0
    assert all(
        r.headers.get("X-Api-Key") == header_value for r in receiver.received if r.webhook == "all"
    )

    output = daemon.output()
    forbidden = {"app secret": APP_SECRET, "header": header_value}
    for name, secret in receiver.secrets.items():
        forbidden[f"{name} secret"] = secret
        forbidden[f"{name} key"] = secret.removeprefix("whsec_")
    for what, value in forbidden.items():
        assert value not in output, f"the {what} is in the logs"
    assert "Bearer" not in output
    assert "eyJ" not in output  # the start of every JWT: no token is logged

    logged: list[dict[str, Any]] = []
    for line in output.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)  # every line is one JSON event
        assert isinstance(entry, dict)
        assert "event" in entry, line
        assert "level" in entry, line
        logged.append(entry)

    polls = [e for e in logged if e["event"] == "poll"]
    assert {e["room_id"] for e in polls} >= {"room-a", "room-b"}
    attempts = [e for e in logged if e["event"] == "delivery_attempt"]
    for e in attempts:
        for key in ("webhook", "event_id", "attempt", "status", "duration_ms"):
            assert key in e, e
    seen = {(e["webhook"], e["event_id"], e["attempt"], e["status"]) for e in attempts}
    assert any(s[3] == 500 for s in seen)
    assert any(s[3] == 503 for s in seen)
    assert {(w, i) for w, i, _, status in seen if status == 204} == expected
    assert any(e["attempt"] > 1 for e in attempts)


# --- systemd notify protocol ----------------------------------------------------------


async def test_notify_protocol_ready_status_watchdog_and_stopping(
    simulator: Simulator,
    receiver: Receiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
) -> None:
    config = write_config(**daemon_config(simulator, receiver, store_url, rooms=["room-a"]))
    # WATCHDOG_USEC of 0.4 s: the daemon must ping every 0.2 s while healthy.
    daemon = await daemons(config, env={"WATCHDOG_USEC": "400000"}).start()
    ready = next(n for n in daemon.notifications if "READY=1" in n)
    assert "STATUS=polling 1 rooms" in ready
    await daemon.wait_notification("WATCHDOG=1", 10)
    await daemon.wait_notification("WATCHDOG=1", 10)
    daemon.send(signal.SIGTERM)
    stopping = await daemon.wait_notification("STOPPING=1", 10)
    assert "STATUS=stopping" in stopping
    assert await daemon.stop() == 0
