"""The command line: exit statuses, one-line errors without secrets, config lookup.

Pure parsing and validation run in-process (``poller.cli.main``); anything that opens a
store, configures logging or must prove "no traceback" runs ``python -m poller``.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from poller import __version__
from poller.cli import main
from poller.receiver import Receiver
from poller.simulator import Simulator
from tests.conftest import ConfigWriter, DaemonProcess, daemon_config

APP_SECRET = "app-secret-Vq81LmZp"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WEBHOOK_KEY = WEBHOOK_SECRET.removeprefix("whsec_")
HEADER_VALUE = "header-value-Tq27Wx"
DB_PASSWORD = "db-password-Hn42Rk"
SECRETS = (APP_SECRET, WEBHOOK_SECRET, WEBHOOK_KEY, HEADER_VALUE, DB_PASSWORD)


def valid_tables(store_url: str) -> dict[str, Any]:
    return {
        "hms": {"access_key": "access-key-1", "app_secret": APP_SECRET},
        "poll": {"interval": "30s"},
        "store": {"url": store_url},
        "delivery": {"retry_schedule": ["1s", "5s"]},
        "rooms": [{"id": "room-one"}, {"id": "room-two"}],
        "webhooks": [
            {
                "name": "recordings",
                "url": "https://hooks.example.com/100ms",
                "secret": WEBHOOK_SECRET,
                "headers": {"X-Api-Key": HEADER_VALUE},
            },
            {
                "name": "room-two-only",
                "url": "https://other.example.com/hook",
                "secret": WEBHOOK_SECRET,
                "rooms": ["room-two"],
            },
        ],
    }


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'state' / 'poller.db'}"


@pytest.fixture
def config_path(tmp_path: Path, sqlite_url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(valid_tables(sqlite_url)))
    return path


def write(path: Path, tables: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(tables))
    return path


def run_cli(*args: str, timeout: float = 30, env: dict[str, str] | None = None) -> Any:
    """``python -m poller ARGS`` as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "poller", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    """The contract's user error: one stderr line, naming what it must, leaking nothing."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    for secret in SECRETS:
        assert secret not in stderr


def closed_port() -> int:
    """A local TCP port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- check-config --------------------------------------------------------------------------


def test_check_config_prints_a_summary_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"postgresql+asyncpg://poller:{DB_PASSWORD}@db.example.com:5432/poller"
    path = write(tmp_path / "config.toml", valid_tables(store))
    assert main(["check-config", "-c", str(path)], {}) == 0
    out, err = capsys.readouterr()
    assert err == ""
    for expected in (str(path), "room-one", "room-two", "recordings", "room-two-only"):
        assert expected in out
    assert "postgresql+asyncpg://poller:***@db.example.com:5432/poller" in out
    assert "X-Api-Key" in out
    for secret in SECRETS:
        assert secret not in out


def test_check_config_as_a_process_exits_0(config_path: Path) -> None:
    result = run_cli("check-config", "-c", str(config_path))
    assert result.returncode == 0, result.stderr
    assert "room-one" in result.stdout
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "{path}", "check-config"],
        ["check-config", "-c", "{path}"],
        ["--config", "{path}", "check-config"],
        ["check-config", "--config={path}"],
    ],
    ids=["-c before", "-c after", "--config before", "--config= after"],
)
def test_config_option_is_accepted_before_and_after_the_command(
    argv: list[str], config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.replace("{path}", str(config_path)) for a in argv]
    assert main(args, {}) == 0
    assert str(config_path) in capsys.readouterr().out


def test_poller_config_variable_is_used_without_c(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config"], {"POLLER_CONFIG": str(config_path)}) == 0
    assert str(config_path) in capsys.readouterr().out
    # -c wins over the variable.
    elsewhere = {"POLLER_CONFIG": str(tmp_path / "missing.toml")}
    assert main(["check-config", "-c", str(config_path)], elsewhere) == 0
    assert str(config_path) in capsys.readouterr().out


def test_missing_config_file_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["check-config", "-c", str(missing)], {}) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_line_error(err, str(missing), "not found")
    # Through $POLLER_CONFIG as well.
    assert main(["check-config"], {"POLLER_CONFIG": str(missing)}) == 2
    assert_one_line_error(capsys.readouterr().err, str(missing))


def _set(tables: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b[0].c`` in nested tables; ``...`` as value deletes the key."""
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", dotted)
    node: Any = tables
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
    last = parts[-1]
    if value is ...:
        del node[last]
    else:
        node[last] = value


@pytest.mark.parametrize(
    ("dotted", "value", "key", "problem"),
    [
        ("webhooks[0].url", "ftp://hooks.example.com/x", "webhooks[0].url", "http"),
        ("webhooks[1].url", ..., "webhooks[1].url", "required"),
        ("webhooks[0].secret", "whsec_!!not-base64!!Zx", "webhooks[0].secret", "base64"),
        ("webhooks[0].name", "Bad Name", "webhooks[0].name", "lowercase"),
        ("webhooks[1].rooms", ["room-three"], "webhooks[1].rooms[0]", "room-three"),
        ("webhooks[0].headers", {"webhook-id": "x"}, "webhooks[0].headers.webhook-id", "poller"),
        ("poll.intervall", "5s", "poll.intervall", "unknown key"),
        ("extra", 1, "extra", "unknown key"),
        ("poll.interval", "5 parsecs", "poll.interval", "duration"),
        ("poll.page_size", 500, "poll.page_size", "100"),
        ("delivery.retry_schedule", ["1s", "soon"], "delivery.retry_schedule[1]", "duration"),
        ("hms.management_token", "mgmt-token-Zx9", "hms.management_token", "only one"),
        ("hms.app_secret", ..., "hms.app_secret", "required"),
        ("hms.app_secret_file", "/nonexistent/app-secret", "hms.app_secret_file", "cannot read"),
        ("rooms", ..., "rooms", "required"),
        ("store.url", "mysql://u:" + DB_PASSWORD + "@h/db", "store.url", "driver"),
        # issue #10: each of these passed check-config and failed at run time
        ("poll.interval", "100000000h", "poll.interval", "at most 24h"),
        ("delivery.retry_schedule", ["100000000h"], "delivery.retry_schedule[0]", "720h (30 days)"),
        ("webhooks[0].headers", {"X-Api-Key": HEADER_VALUE + "\x01"}, "X-Api-Key", "U+0001"),
        ("webhooks[0].url", f"https://{'h' * 64}.example.com/x", "webhooks[0].url", "63"),
        ("rooms[0].id", "r" * 300, "rooms[0].id", "at most 255 characters"),
        ("webhooks[0].name", "w" * 70, "webhooks[0].name", "at most 64 characters"),
        ("instance_id", "i" * 300, "instance_id", "at most 255 characters"),
    ],
)
def test_bad_config_exits_2_with_one_line_naming_file_key_and_problem(
    dotted: str,
    value: Any,
    key: str,
    problem: str,
    tmp_path: Path,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tables = valid_tables(sqlite_url)
    if dotted == "hms.app_secret_file":
        del tables["hms"]["app_secret"]
    _set(tables, dotted, value)
    path = write(tmp_path / "bad.toml", tables)
    assert main(["check-config", "-c", str(path)], {}) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_line_error(err, str(path), key, problem)
    assert err.startswith("poller: error: ")


def test_bad_config_as_a_process_has_no_traceback(tmp_path: Path, sqlite_url: str) -> None:
    tables = valid_tables(sqlite_url)
    tables["webhooks"][0]["url"] = "not a url"
    path = write(tmp_path / "bad.toml", tables)
    for args in (("check-config", "-c", str(path)), ("run", "-c", str(path))):
        result = run_cli(*args)
        assert result.returncode == 2
        assert result.stdout == ""
        assert_one_line_error(result.stderr, str(path), "webhooks[0].url")


def test_invalid_toml_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(f'[hms]\napp_secret = "{APP_SECRET}"\nthis is not toml\n')
    assert main(["check-config", "-c", str(path)], {}) == 2
    assert_one_line_error(capsys.readouterr().err, str(path), "TOML")


# --- migrate and the store ---------------------------------------------------------------


def test_migrate_exits_0_and_is_idempotent(config_path: Path, sqlite_url: str) -> None:
    first = run_cli("migrate", "-c", str(config_path))
    assert first.returncode == 0, first.stderr
    revision = re.search(r"schema revision (\S+)", first.stdout)
    assert revision, first.stdout
    assert revision.group(1) != "None"
    assert Path(sqlite_url.removeprefix("sqlite+aiosqlite:///")).is_file()
    again = run_cli("-c", str(config_path), "migrate")
    assert again.returncode == 0, again.stderr
    assert f"schema revision {revision.group(1)}" in again.stdout


@pytest.mark.parametrize("command", ["migrate", "run", "status", "deliveries"])
def test_unusable_sqlite_store_exits_2_naming_store_url(
    command: str, tmp_path: Path, sqlite_url: str
) -> None:
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    tables = valid_tables(f"sqlite+aiosqlite:///{not_a_dir / 'poller.db'}")
    path = write(tmp_path / "config.toml", tables)
    result = run_cli(command, "-c", str(path))
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr, str(path), "store.url")


@pytest.mark.parametrize("command", ["migrate", "run"])
def test_unreachable_postgresql_exits_2_without_the_password(command: str, tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://poller:{DB_PASSWORD}@127.0.0.1:{closed_port()}/poller"
    path = write(tmp_path / "config.toml", valid_tables(url))
    result = run_cli(command, "-c", str(path))
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr, str(path), "store.url")
    assert DB_PASSWORD not in result.stdout


# --- status after a run ------------------------------------------------------------------


async def test_status_after_a_run_shows_rooms_and_delivery_counts(
    simulator: Simulator,
    receiver: Receiver,
    tmp_path: Path,
    write_config: ConfigWriter,
    daemons: Callable[..., DaemonProcess],
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'poller.db'}"
    rooms = ["room-a", "room-b", "room-never"]
    events = [simulator.add_event(r) for r in ("room-a", "room-b", "room-b")]
    config = write_config(
        **daemon_config(
            simulator,
            receiver,
            url,
            rooms=rooms,
            webhooks=[{"name": "all"}, {"name": "filtered", "rooms": ["room-b"]}],
        )
    )
    daemon = await daemons(config).start()
    ok = await receiver.wait_for(lambda: len(receiver.delivered()) == 5, 15)
    assert ok, daemon.output()
    assert await daemon.stop(signal.SIGTERM) == 0
    assert {r.msg_id for r in receiver.delivered()} == {e["id"] for e in events}

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "poller",
        "status",
        "-c",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out_b, err_b = await proc.communicate()
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    for room in rooms:
        assert any(line.strip().startswith(f"{room}:") for line in lines), out
    assert any("room-a:" in line and "last success" in line for line in lines), out
    # pending / delivered / dead per webhook, and its state
    assert "  all: 0 / 3 / 0, active" in lines, out
    assert "  filtered: 0 / 2 / 0, active" in lines, out


# --- version and demo --------------------------------------------------------------------


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"poller {__version__}"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([], {})
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_demo_delivers_everything() -> None:
    result = run_cli("demo", "--events", "4", "--timeout", "30", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.search(r"(\d+)/(\d+) deliveries arrived", result.stdout)
    assert summary, result.stdout
    assert summary.group(1) == summary.group(2)
    assert int(summary.group(2)) > 0
    assert "0 with an invalid signature" in result.stdout
    # A room created while it runs is found by discovery; its recording arrives.
    assert re.search(r"recordings +event \w+ +demo-room-new attempt 1 .* delivered", result.stdout)
