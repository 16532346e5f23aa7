"""Which live instance polls which room: rendezvous hashing over the instances' ids."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _weight(room_id: str, instance: str) -> bytes:
    # A stable hash (unlike hash()): every process must reach the same answer.
    return hashlib.blake2b(f"{instance}\0{room_id}".encode(), digest_size=8).digest()


class Membership:
    """The live instances as last seen in the store; rooms spread evenly over them.

    Rendezvous hashing moves only the rooms of an instance that joins or leaves,
    and every instance computes the same owner without talking to the others.
    """

    def __init__(self, me: str) -> None:
        self.me = me
        self.live: tuple[str, ...] = (me,)

    def update(self, live: Iterable[str]) -> bool:
        """Replace the live set (always including ourselves); True when it changed."""
        new = tuple(sorted({*live, self.me}))
        changed = new != self.live
        self.live = new
        return changed

    def owner(self, room_id: str) -> str:
        """The instance that should poll ``room_id``."""
        if len(self.live) == 1:
            return self.live[0]
        return max(self.live, key=lambda instance: _weight(room_id, instance))

    def is_mine(self, room_id: str) -> bool:
        return self.owner(room_id) == self.me
