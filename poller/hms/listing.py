"""The API's listings: ``GET /rooms`` (the app's rooms) and ``GET /sessions``, parsed.

A listing page is ``{"limit", "data": [...], "last"}``; the next page is asked for with
``start`` = that ``last``. Only the fields poller uses are read; every other value is
skipped by the typed decode.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

from poller.hms.page import MalformedPage

T = TypeVar("T")

__all__ = ["ListingPage", "RoomInfo", "SessionInfo", "parse_rooms", "parse_sessions"]


class RoomInfo(msgspec.Struct, frozen=True):
    """One room of ``GET /rooms``."""

    id: str
    name: str = ""
    enabled: bool = True
    template_id: str = ""


class SessionInfo(msgspec.Struct, frozen=True):
    """One session of ``GET /sessions``: when it began, and whether it is still live."""

    id: str
    room_id: str
    active: bool = False
    created_at: str = ""
    updated_at: str = ""


class ListingPage(msgspec.Struct, Generic[T], frozen=True):
    """One page of a listing: its items, and the ``start`` of the next (empty: none)."""

    data: list[T] | None = None
    last: str | None = None


_ROOMS = msgspec.json.Decoder(ListingPage[RoomInfo])
_SESSIONS = msgspec.json.Decoder(ListingPage[SessionInfo])


def parse_rooms(body: bytes) -> ListingPage[RoomInfo]:
    """A page of ``GET /rooms``; MalformedPage when it is not one."""
    return _decode(_ROOMS, body)


def parse_sessions(body: bytes) -> ListingPage[SessionInfo]:
    """A page of ``GET /sessions``; MalformedPage when it is not one."""
    return _decode(_SESSIONS, body)


def _decode(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise MalformedPage(str(exc)[:200]) from None
