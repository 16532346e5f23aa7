"""Domain values shared by the source, the store and delivery."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    """One 100ms event, with its body kept exactly as the API sent it.

    ``body`` is the event object re-serialised as compact UTF-8 JSON (values
    and their JSON types unchanged); it is what every webhook receives.
    """

    id: str
    type: str
    timestamp: str
    room_id: str
    body: str
