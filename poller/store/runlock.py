"""One daemon per SQLite file, proved by an OS lock rather than by heartbeats.

Why: a SQLite store has one host and one instance by nature, so a daemon starting on it
takes over at once whatever a killed run left (claims, leases, its instance row). That is
only safe when no other daemon runs on the file, whatever its ``instance_id``. An
advisory ``flock`` on a file beside the store says so for certain: the kernel drops it
when its holder dies, ``kill -9`` included, so a restart never waits for a heartbeat to
go stale, and a second daemon on the same file is refused before it touches anything.

The lock file is separate from the database: closing any descriptor of the database file
would drop the POSIX locks SQLite itself holds on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from poller.errors import UserError

__all__ = ["StoreInUse", "lock_path", "run_lock", "sqlite_file"]


class StoreInUse(UserError):
    """Another live process runs a daemon on this SQLite file."""

    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        who = f"pid {holder}" if holder else "another process"
        super().__init__(f"the store file {path} is in use by another poller daemon ({who})")


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite store URL; None for PostgreSQL or an in-memory one."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if parsed.query.get("uri") == "true" and database.startswith("file:"):
        # sqlite3's URI form: file:path?mode=...; the query is SQLite's, not the file's.
        database = database.removeprefix("file:").partition("?")[0]
    if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
        return None
    return Path(database)


def lock_path(database: Path) -> Path:
    """The lock file that guards ``database``: beside it, named after it."""
    return database.with_name(database.name + ".poller-lock")


@contextlib.contextmanager
def run_lock(database: Path) -> Iterator[None]:
    """Hold the run lock of ``database`` for the block; raise StoreInUse if it is held."""
    path = lock_path(database)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UserError(f"cannot open the lock file {path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise StoreInUse(database, holder) from None
        # The pid is for the message a second daemon prints; the lock is what counts.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
