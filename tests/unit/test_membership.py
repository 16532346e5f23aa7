"""Rendezvous hashing over the live instances: stable, even, and minimal moves."""

from __future__ import annotations

from poller.membership import Membership

ROOMS = [f"room-{i}" for i in range(3000)]


def owners(live: list[str]) -> dict[str, str]:
    m = Membership(live[0])
    m.update(live)
    return {room: m.owner(room) for room in ROOMS}


def test_alone_every_room_is_mine() -> None:
    m = Membership("a")
    assert all(m.is_mine(room) for room in ROOMS[:50])
    assert m.live == ("a",)


def test_update_always_includes_itself_and_says_whether_it_changed() -> None:
    m = Membership("b")
    assert m.update(["a"]) is True
    assert m.live == ("a", "b")
    assert m.update(["b", "a"]) is False  # same set, another order


def test_every_instance_computes_the_same_owner() -> None:
    live = ["a", "b", "c"]
    views = []
    for me in live:
        m = Membership(me)
        m.update(live)
        views.append({room: m.owner(room) for room in ROOMS})
    assert views[0] == views[1] == views[2]
    # Each room is exactly one instance's.
    for room in ROOMS:
        mine = []
        for me in live:
            m = Membership(me)
            m.update(live)
            mine.append(m.is_mine(room))
        assert sum(mine) == 1


def test_rooms_spread_evenly() -> None:
    counts: dict[str, int] = {}
    for owner in owners(["a", "b", "c"]).values():
        counts[owner] = counts.get(owner, 0) + 1
    assert set(counts) == {"a", "b", "c"}
    assert all(800 <= n <= 1200 for n in counts.values()), counts


def test_an_instance_leaving_moves_only_its_rooms() -> None:
    before = owners(["a", "b", "c"])
    after = owners(["a", "b"])
    moved = [room for room in ROOMS if before[room] != after[room]]
    assert moved
    assert all(before[room] == "c" for room in moved)
    assert all(after[room] in {"a", "b"} for room in moved)
