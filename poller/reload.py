"""What a reload (SIGHUP) takes from a re-read config, and what it says changed.

The daemon applies a reload by rebuilding its parts from the new config on the same store
(``poller.app``): rooms, webhooks, intervals, discovery, the API settings and the log
level all change that way, through the same code that starts them. Three things cannot
change under a running process: the store it holds, the address it listens on, and the
id it is known by. Those keep their running values, and the reload says a restart is
needed for them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from poller.config import Config

__all__ = ["Reload", "plan"]

# Config fields that only a restart changes (the running value is kept).
_NEEDS_RESTART = ("store", "server", "instance_id")
# Sections compared as wholes, for the "changed" list of the log line.
_SECTIONS = ("hms", "poll", "delivery", "discovery", "log", "shutdown_grace")


@dataclass(frozen=True, slots=True)
class Reload:
    """The config to run from now on, and what changed against the running one."""

    config: Config
    rooms_added: tuple[str, ...] = ()
    rooms_removed: tuple[str, ...] = ()
    webhooks_added: tuple[str, ...] = ()
    webhooks_removed: tuple[str, ...] = ()
    webhooks_changed: tuple[str, ...] = ()
    sections_changed: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether anything the reload applies differs (else the parts are left running)."""
        return bool(
            self.rooms_added
            or self.rooms_removed
            or self.webhooks_added
            or self.webhooks_removed
            or self.webhooks_changed
            or self.sections_changed
        )

    def summary(self) -> dict[str, object]:
        """The changes, for one log line (names only: never a URL, header or secret)."""
        fields = {
            "rooms_added": self.rooms_added,
            "rooms_removed": self.rooms_removed,
            "webhooks_added": self.webhooks_added,
            "webhooks_removed": self.webhooks_removed,
            "webhooks_changed": self.webhooks_changed,
            "changed": self.sections_changed,
        }
        return {k: list(v) for k, v in fields.items() if v}


def plan(running: Config, loaded: Config) -> Reload:
    """What reloading ``loaded`` over ``running`` does: ``loaded`` with the values only a
    restart changes taken from ``running``, and what differs."""
    needs_restart = tuple(
        name for name in _NEEDS_RESTART if getattr(running, name) != getattr(loaded, name)
    )
    config = dataclasses.replace(
        loaded, **{name: getattr(running, name) for name in _NEEDS_RESTART}
    )
    old_rooms = [r.id for r in running.rooms]
    new_rooms = [r.id for r in config.rooms]
    old_set, new_set = set(old_rooms), set(new_rooms)
    old_hooks = {w.name: w for w in running.webhooks}
    new_hooks = {w.name: w for w in config.webhooks}
    return Reload(
        config=config,
        rooms_added=tuple(r for r in new_rooms if r not in old_set),
        rooms_removed=tuple(r for r in old_rooms if r not in new_set),
        webhooks_added=tuple(n for n in new_hooks if n not in old_hooks),
        webhooks_removed=tuple(n for n in old_hooks if n not in new_hooks),
        webhooks_changed=tuple(
            n for n, w in new_hooks.items() if n in old_hooks and old_hooks[n] != w
        ),
        sections_changed=tuple(
            name for name in _SECTIONS if getattr(running, name) != getattr(config, name)
        ),
        needs_restart=needs_restart,
    )
