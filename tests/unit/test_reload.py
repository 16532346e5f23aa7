"""What a reload takes from the re-read config, and what it says changed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from poller.config import Config, RoomConfig, Secret, StoreConfig
from poller.reload import plan
from tests.unit.test_config import FULL, load, load_full


def full(tmp_path: Path) -> Config:
    return load_full(tmp_path)


def test_nothing_changed(tmp_path: Path) -> None:
    running = full(tmp_path)
    reload = plan(running, load(tmp_path, FULL))  # the same file, read again
    assert reload.summary() == {}
    assert reload.needs_restart == ()


def test_rooms_and_webhooks_added_removed_and_changed_by_name(tmp_path: Path) -> None:
    running = full(tmp_path)
    first, second = running.webhooks[:2]
    loaded = dataclasses.replace(
        running,
        rooms=(*running.rooms[1:], RoomConfig(id="room-new")),
        webhooks=(dataclasses.replace(first, max_concurrency=first.max_concurrency + 1),),
        log=dataclasses.replace(
            running.log, level="error" if running.log.level != "error" else "info"
        ),
    )
    reload = plan(running, loaded)
    assert reload.changed
    assert reload.rooms_added == ("room-new",)
    assert reload.rooms_removed == (running.rooms[0].id,)
    assert reload.webhooks_changed == (first.name,)
    assert reload.webhooks_removed == (second.name,)
    assert reload.sections_changed == ("log",)
    summary = str(reload.summary())
    assert first.url not in summary  # names only


def test_the_store_listener_and_instance_id_keep_their_running_values(tmp_path: Path) -> None:
    running = full(tmp_path)
    loaded = dataclasses.replace(
        running,
        store=StoreConfig(url=Secret("sqlite+aiosqlite:////tmp/elsewhere.db")),
        server=None,
        instance_id="renamed",
    )
    reload = plan(running, loaded)
    assert reload.needs_restart == ("store", "server", "instance_id")
    assert (reload.config.store, reload.config.server, reload.config.instance_id) == (
        running.store,
        running.server,
        running.instance_id,
    )
    assert not reload.changed  # nothing else differs: the parts are left running
