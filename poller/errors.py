"""User-facing errors: each becomes one line on stderr and exit status 2."""

from __future__ import annotations

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
        super().__init__(f"{where}: {problem}")


class StoreError(UserError):
    """The store cannot be reached or used (the URL is printed with its password masked)."""
