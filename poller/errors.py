"""User-facing errors: each becomes one line on stderr and exit status 2."""

from __future__ import annotations

import datetime as dt
from pathlib import Path


class UserError(Exception):
    """An error caused by the user's input or environment, not by a bug."""


class ConfigError(UserError):
    """A config problem, naming the file, the key (``webhooks[0].url``) and what is wrong."""

    def __init__(self, path: Path | str, key: str | None, problem: str) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(printable(f"{where}: {problem}"))


def printable(text: str) -> str:
    """``text`` with control and other unprintable characters escaped, so it is one line.

    Why: a message quotes the user's names (a file path, an unknown key, a secret file's
    name), and a newline or NUL in one must not break "one line on stderr".
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def one_line(exc: BaseException, *, limit: int = 300) -> str:
    """An exception as one bounded line, ``Type: first line of its message``."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text[:limit]


def openssl_reason(error: BaseException) -> str:
    """OpenSSL's text of an ``ssl.SSLError`` without its brackets and source location:
    ``[SSL: KEY_VALUES_MISMATCH] key values mismatch (_ssl.c:4041)`` -> ``key values
    mismatch``."""
    args = error.args
    text = args[1] if len(args) > 1 and isinstance(args[1], str) else str(error)
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.rsplit(" (_ssl.c:", 1)[0]


class StoreError(UserError):
    """The store cannot be reached or used (the URL is printed with its password masked)."""


class InstanceIdInUse(UserError):
    """Another process holds this instance's id: its heartbeat is younger than the TTL.

    ``heartbeat_at`` is that heartbeat by the store's clock: seen to move on, the other
    process is alive (not a crashed earlier run of this one).
    """

    def __init__(self, instance_id: str, *, heartbeat_at: dt.datetime, age: float) -> None:
        self.instance_id = instance_id
        self.heartbeat_at = heartbeat_at
        self.age = age
        super().__init__(
            f"instance id {instance_id!r} is in use by another running process "
            f"(its last heartbeat {max(0.0, age):.1f}s ago)"
        )
