"""The store's fault record: spells of failure per operation, and the file's identity."""

from __future__ import annotations

import os
from pathlib import Path

from poller.store.faults import Fault, Faults, StoreFile


def test_a_spell_starts_at_the_first_failure_and_ends_at_the_next_success() -> None:
    faults = Faults()
    seen: list[tuple[str, int, bool]] = []
    faults.listen(lambda fault, first: seen.append((fault.operation, fault.failures, first)))
    faults.succeeded("claim")  # nothing failing: nothing to do
    faults.failed("claim", "OperationalError: database or disk is full")
    faults.failed("claim", "OperationalError: database or disk is full")
    faults.failed("heartbeat", "OperationalError: database is locked")
    assert seen == [("claim", 1, True), ("claim", 2, False), ("heartbeat", 1, True)]
    (claim,) = [f for f in faults.current(within=60) if f.operation == "claim"]
    assert isinstance(claim, Fault)
    assert claim.failures == 2
    assert claim.since <= claim.last

    faults.succeeded("claim")
    assert [f.operation for f in faults.current(within=60)] == ["heartbeat"]
    # A failure older than the window no longer counts (an operation not called again).
    assert faults.current(within=-1) == []


def test_the_store_file_is_missed_when_deleted_or_replaced(tmp_path: Path) -> None:
    path = tmp_path / "poller.db"
    path.write_bytes(b"x")
    # Held open, as SQLite holds it: its inode cannot be reused by the replacement.
    held = path.open("rb")
    file, faults = StoreFile(path), Faults()
    file.check(faults)
    assert file.problem() is None
    assert faults.current(within=60) == []

    path.unlink()
    assert file.problem() == f"the store file {path} was deleted while in use"
    file.check(faults)
    assert [f.operation for f in faults.current(within=60)] == ["store_file"]

    other = tmp_path / "other.db"
    other.write_bytes(b"y")
    os.replace(other, path)
    assert file.problem() == f"the store file {path} was replaced while in use"
    held.close()
