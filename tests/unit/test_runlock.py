"""The run lock of a SQLite store: one daemon per file, released by the kernel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from poller.errors import UserError
from poller.store.runlock import StoreInUse, lock_path, run_lock, sqlite_file


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite+aiosqlite:////var/lib/poller/poller.db", Path("/var/lib/poller/poller.db")),
        ("sqlite+aiosqlite:///poller.db", Path("poller.db")),
        ("sqlite+aiosqlite:///file:/srv/p.db?mode=rwc&uri=true", Path("/srv/p.db")),
        ("sqlite+aiosqlite://", None),
        ("sqlite+aiosqlite:///:memory:", None),
        ("sqlite+aiosqlite:///file:mem?mode=memory&uri=true", None),
        ("postgresql+asyncpg://u:p@db/poller", None),
    ],
)
def test_sqlite_file_finds_the_database_file_of_a_url(url: str, expected: Path | None) -> None:
    assert sqlite_file(url) == expected


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    database = tmp_path / "poller.db"
    with run_lock(database):
        assert lock_path(database).read_text() == f"{os.getpid()}\n"
        # flock belongs to an open file description: a second open conflicts even here.
        with pytest.raises(StoreInUse) as refused, run_lock(database):
            pass
        assert str(refused.value) == (
            f"the store file {database} is in use by another poller daemon (pid {os.getpid()})"
        )
    with run_lock(database):  # released on leaving the block
        pass


def test_the_lock_dies_with_its_holder_even_on_kill_9(tmp_path: Path) -> None:
    database = tmp_path / "poller.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib\n"
            "from poller.store.runlock import run_lock\n"
            "with run_lock(pathlib.Path(sys.argv[1])):\n"
            "    print('held', flush=True)\n"
            "    sys.stdin.read()\n",
            str(database),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(StoreInUse, match=f"pid {holder.pid}"), run_lock(database):
            pass
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with run_lock(database):
        pass


def test_a_lock_file_that_cannot_be_created_is_a_user_error(tmp_path: Path) -> None:
    database = tmp_path / "missing" / "poller.db"
    with (
        pytest.raises(UserError, match=r"cannot open the lock file .*No such file"),
        run_lock(database),
    ):
        pass
