"""Secret sources: inline, ``<key>_file`` (systemd credentials, Docker secrets) or environment."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from poller.config.messages import Loc, Source, key_path
from poller.config.model import Secret
from poller.config.values import text_problem

__all__ = ["Sourced", "config_file_path", "read_secret"]

_CREDENTIALS_DIRECTORY = re.compile(
    r"\$(?:\{CREDENTIALS_DIRECTORY\}|CREDENTIALS_DIRECTORY(?![A-Za-z0-9_]))"
)


@dataclass(frozen=True, slots=True)
class Sourced:
    """A secret plus where it came from; ``origin`` is safe to show, the value is not."""

    secret: Secret
    origin: str | None  # None: inline; else "$VAR" or "file /path"

    def via(self) -> str:
        """`` (from $VAR)`` or `` (from file /path)`` for messages; empty when inline."""
        return f" (from {self.origin})" if self.origin else ""


def read_secret(
    src: Source, table: Loc, name: str, inline: str | None, file: str | None, env_var: str
) -> Sourced | None:
    """The secret ``name`` of ``table`` from the one source given, or None when none is."""
    file_name = f"{name}_file"
    # Empty counts as absent: `Environment=VAR=` is the usual way to unset one.
    from_env = src.environ.get(env_var) or None
    if inline is not None and file is not None:
        raise src.error((*table, name), f"given both inline and as {file_name}; give only one")
    if from_env is not None and (inline is not None or file is not None):
        given = (*table, name if inline is not None else file_name)
        raise src.error(
            given, f"{env_var} is set and {key_path(given)} is also given; give only one"
        )
    if inline is not None:
        return Sourced(Secret(inline), None)
    if file is not None:
        return _from_file(src, (*table, file_name), file)
    if from_env is not None:
        if found := text_problem(from_env):
            raise src.error((*table, name), f"${env_var} {found}")
        return Sourced(Secret(from_env), f"${env_var}")
    return None


def config_file_path(src: Source, loc: Loc, raw: str) -> Path:
    """The file a ``*_file`` key names: ``${CREDENTIALS_DIRECTORY}`` expanded, and relative
    to the config file."""
    if _CREDENTIALS_DIRECTORY.search(raw):
        directory = src.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            problem = (
                "uses $CREDENTIALS_DIRECTORY but it is not set "
                "(systemd sets it for units with LoadCredential=)"
            )
            raise src.error(loc, problem)
        raw = _CREDENTIALS_DIRECTORY.sub(lambda _: directory, raw)
    # Relative to the config file, not the working directory, which differs between
    # an interactive `check-config` and the service; an absolute path wins the join.
    return src.path.parent / raw


def _from_file(src: Source, loc: Loc, raw: str) -> Sourced:
    path = config_file_path(src, loc, raw)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise src.error(loc, f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise src.error(loc, f"{path} is not UTF-8 text") from None
    except ValueError:  # open() refuses a path with NUL in it before asking the OS
        raise src.error(loc, "a file name may not contain NUL characters") from None
    # Files written by `echo` or editors end in a newline that is not part of the secret.
    value = text.strip()
    if not value:
        raise src.error(loc, f"{path} is empty")
    if found := text_problem(value):
        raise src.error(loc, f"{path} {found}")
    return Sourced(Secret(value), f"file {path}")
