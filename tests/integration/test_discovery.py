"""Discovery against the simulator's GET /rooms and a real store: which rooms get polled."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import pytest
from structlog.testing import capture_logs

from poller.config import DiscoveryConfig
from poller.discovery import Discovery, DiscoveryOutcome
from poller.hms.client import HmsClient
from poller.hms.token import MintedTokens
from poller.rooms import Origin, PolledRooms
from poller.schedule import Scheduler
from poller.simulator import Simulator
from poller.store.repo import Store
from tests.conftest import ACCESS_KEY, APP_SECRET
from tests.storeops import elapse, engine_of

MakeDiscovery = Callable[..., tuple[Discovery, PolledRooms]]


async def no_poll(_room_id: str) -> None:
    """The rooms' jobs never fire here: the scheduler is not started."""


@pytest.fixture
def make_discovery(
    simulator: Simulator, store: Store, session: aiohttp.ClientSession
) -> MakeDiscovery:
    client = HmsClient(
        session,
        simulator.base_url,
        MintedTokens(ACCESS_KEY, APP_SECRET),
        max_attempts=1,
    )

    def make(
        *,
        configured: tuple[str, ...] = (),
        outcomes: list[DiscoveryOutcome] | None = None,
        **kw: object,
    ) -> tuple[Discovery, PolledRooms]:
        polled = PolledRooms(Scheduler(), no_poll, interval=30.0, timeout=60.0)
        polled.add_all(list(configured), Origin.CONFIG)
        config = DiscoveryConfig(enabled=True, **kw)  # type: ignore[arg-type]
        discovery = Discovery(
            client,
            store,
            config,
            polled,
            configured=configured,
            on_walk=(outcomes.append if outcomes is not None else None),
        )
        return discovery, polled

    return make


async def test_listed_rooms_are_polled_with_the_configs_filters(
    simulator: Simulator, make_discovery: MakeDiscovery
) -> None:
    simulator.add_room("math-1", name="class-math-1", template_id="t-class")
    simulator.add_room("math-2", name="class-math-2", template_id="t-webinar")
    simulator.add_room("off", name="class-off", template_id="t-class", enabled=False)
    simulator.add_room("lobby", name="lobby", template_id="t-class")
    discovery, polled = make_discovery(name_prefix="class-", template_ids=frozenset({"t-class"}))

    outcome = await discovery.walk()

    assert (outcome.ok, outcome.listed) == (True, 1)
    assert set(polled.ids) == {"math-1"}
    assert polled.origin("math-1") is Origin.DISCOVERY


async def test_disabled_rooms_only_with_include_disabled(
    simulator: Simulator, make_discovery: MakeDiscovery
) -> None:
    simulator.add_room("on")
    simulator.add_room("off", enabled=False)
    discovery, polled = make_discovery(include_disabled=True)
    await discovery.walk()
    assert set(polled.ids) == {"on", "off"}


async def test_rooms_come_and_go_and_config_rooms_stay_config_rooms(
    simulator: Simulator, store: Store, make_discovery: MakeDiscovery
) -> None:
    simulator.add_room("cfg")
    simulator.add_room("a")
    discovery, polled = make_discovery(configured=("cfg",), keep=60.0)
    await discovery.walk()
    assert {r: polled.origin(r) for r in polled.ids} == {
        "cfg": Origin.CONFIG,
        "a": Origin.DISCOVERY,
    }

    simulator.add_room("b")  # a room created while running
    simulator.set_room("a", enabled=False)  # leaves the listing
    simulator.set_room("cfg", enabled=False)  # a config room is polled whatever the API says
    with capture_logs() as logs:
        await discovery.walk()
    assert set(polled.ids) == {"cfg", "a", "b"}  # "a" is kept for a while
    (said,) = [e for e in logs if e["event"] == "rooms_discovered"]
    assert (said["added"], said["left"], said["retired"]) == (1, 2, 0)

    await elapse(engine_of(store), 61)
    await discovery.walk()
    assert set(polled.ids) == {"cfg", "b"}
    assert polled.origin("cfg") is Origin.CONFIG


async def test_a_failed_walk_changes_nothing(
    simulator: Simulator, make_discovery: MakeDiscovery
) -> None:
    simulator.add_room("a")
    outcomes: list[DiscoveryOutcome] = []
    discovery, polled = make_discovery(keep=0.0, outcomes=outcomes)
    await discovery.walk()
    await simulator.stop()  # the API goes away: nothing is retired for that
    with capture_logs() as logs:
        outcome = await discovery.walk()
    assert not outcome.ok
    assert outcome.error is not None
    assert "GET /rooms" in outcome.error
    assert set(polled.ids) == {"a"}
    assert [o.ok for o in outcomes] == [True, False]
    assert any(e["event"] == "discovery_failed" for e in logs)


async def test_a_restart_polls_what_was_found_before_any_walk(
    simulator: Simulator, make_discovery: MakeDiscovery
) -> None:
    simulator.add_room("a")
    simulator.add_room("b")
    first, _ = make_discovery()
    await first.walk()

    again, polled = make_discovery(configured=("b",))
    assert await again.restore() == 1
    assert {r: polled.origin(r) for r in polled.ids} == {
        "b": Origin.CONFIG,
        "a": Origin.DISCOVERY,
    }
