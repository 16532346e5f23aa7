"""Config loading: values, defaults, durations, secret sources and error messages."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from poller.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    DeliveryConfig,
    DiscoveryConfig,
    HmsConfig,
    LogConfig,
    PollConfig,
    RoomConfig,
    Secret,
    ServerConfig,
    StoreConfig,
    WebhookConfig,
    describe,
    format_duration,
    load_config,
    parse_duration,
    resolve_config_path,
)
from poller.config.model import Proxy, Route, TlsConfig
from poller.config.values import stored_length
from poller.errors import ConfigError
from poller.events import KNOWN_EVENT_TYPES
from poller.redaction import secrets_of
from poller.signing import InvalidSecret, SigningKey
from poller.store.models import deliveries, events, instances, rooms
from tests.pki import Pki

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"another-webhook-key-of-32-bytes!").decode()
APP_SECRET = "app-secret-Zq8sT1vW"
MANAGEMENT_TOKEN = "mgmt-token-Xy7QrR2e"
HEADER_VALUE = "hdr-value-K9pLm3"
DB_PASSWORD = "db-pass-W4nQz8"
BAD_WEBHOOK_SECRET = "whsec_not!base64-Jd82"
SHORT_WEBHOOK_SECRET = "whsec_c2hvcnQta2V5"  # 9 bytes
PROXY_PASSWORD = "proxy-pass-T6wXc2"
# Everything a test config here ever holds in a secret position.
SECRETS = (
    WEBHOOK_SECRET,
    WEBHOOK_SECRET.removeprefix("whsec_"),
    OTHER_WEBHOOK_SECRET,
    APP_SECRET,
    MANAGEMENT_TOKEN,
    HEADER_VALUE,
    DB_PASSWORD,
    BAD_WEBHOOK_SECRET,
    SHORT_WEBHOOK_SECRET,
    PROXY_PASSWORD,
)

HMS = f"""
[hms]
access_key = "ak-1"
app_secret = "{APP_SECRET}"
"""
ROOMS = """
[[rooms]]
id = "room-a"

[[rooms]]
id = "room-b"
"""
WEBHOOK = f"""
[[webhooks]]
name = "recordings"
url = "https://example.com/hook"
secret = "{WEBHOOK_SECRET}"
"""


def toml(
    *, top: str = "", hms: str = HMS, tables: str = "", rooms: str = ROOMS, webhooks: str = WEBHOOK
) -> str:
    """A config text; each part replaces one section of a minimal valid config."""
    return "\n".join([top, hms, tables, rooms, webhooks])


def write(directory: Path, text: str, name: str = "config.toml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ or {})


def load_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ)
    return info.value


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# --- valid configs -----------------------------------------------------------------------

FULL = f"""
shutdown_grace = "15s"
instance_id = "poller-1"

[hms]
base_url = "https://hms.example.com/v2/"
access_key = "ak-1"
app_secret = "{APP_SECRET}"
event_types = ["beam.recording.success", "track.add.success"]
request_timeout = 5
ca_file = "pki/ca.pem"
proxy = "http://poller:{PROXY_PASSWORD}@proxy.example.com:3128"

[poll]
interval = "1m"
page_size = 50
backfill = false
max_concurrency = 3
lease_ttl = "2m"
max_pages = 500
max_page_bytes = 2048
max_page_events = 200
adaptive = true
idle_interval = "15m"
active_window = "90m"
sessions_interval = "45s"

[store]
url = "postgresql://poller:{DB_PASSWORD}@db.example.com:5432/poller"

[delivery]
timeout = "2.5s"
retry_schedule = ["250ms", 30, "1h"]
max_concurrency = 2
breaker_after = "1h"
probe_interval = "1m"

[server]
listen = "[::1]:9100"
status_page = false

[log]
level = "DEBUG"
format = "json"

[[rooms]]
id = "room-a"

[[rooms]]
id = "room-b"

[[webhooks]]
name = "recordings"
url = "https://example.com/hook"
secret = "{WEBHOOK_SECRET}"
event_types = ["beam.recording.success"]
rooms = ["room-a"]
headers = {{ "X-Api-Key" = "{HEADER_VALUE}", "X-Env" = "prod" }}
max_concurrency = 6
rate_limit = 2.5
ca_file = "pki/ca.pem"
client_cert = "pki/client-cert.pem"
client_key = "pki/client-key.pem"
proxy = "http://proxy.example.com:3128"

[[webhooks]]
name = "audit-log"
url = "http://audit.internal:8080/in"
secret_file = "audit.secret"
"""


def load_full(tmp_path: Path) -> Config:
    write(tmp_path, f"{OTHER_WEBHOOK_SECRET}\n", "audit.secret")
    Pki(tmp_path / "pki")
    return load(tmp_path, FULL)


def test_full_config_loads_every_key(tmp_path: Path) -> None:
    config = load_full(tmp_path)

    assert config == Config(
        path=tmp_path / "config.toml",
        hms=HmsConfig(
            base_url="https://hms.example.com/v2",
            event_types=("beam.recording.success", "track.add.success"),
            access_key="ak-1",
            app_secret=Secret(APP_SECRET),
            management_token=None,
            request_timeout=5.0,
            tls=TlsConfig(ca_file=tmp_path / "pki" / "ca.pem"),
            route=Route(
                Proxy(
                    "http://proxy.example.com:3128",
                    "proxy",
                    username="poller",
                    password=Secret(PROXY_PASSWORD),
                )
            ),
        ),
        poll=PollConfig(
            interval=60.0,
            page_size=50,
            backfill=False,
            max_concurrency=3,
            lease_ttl=120.0,
            max_pages=500,
            max_page_bytes=2048,
            max_page_events=200,
            adaptive=True,
            idle_interval=900.0,
            active_window=5400.0,
            sessions_interval=45.0,
        ),
        store=StoreConfig(
            url=Secret(f"postgresql+asyncpg://poller:{DB_PASSWORD}@db.example.com:5432/poller")
        ),
        delivery=DeliveryConfig(
            timeout=2.5,
            retry_schedule=(0.25, 30.0, 3600.0),
            max_concurrency=2,
            breaker_after=3600.0,
            probe_interval=60.0,
        ),
        server=ServerConfig(host="::1", port=9100, status_page=False),
        log=LogConfig(level="debug", format="json"),
        rooms=(RoomConfig("room-a"), RoomConfig("room-b")),
        webhooks=(
            WebhookConfig(
                name="recordings",
                url="https://example.com/hook",
                secret=Secret(WEBHOOK_SECRET),
                event_types=frozenset({"beam.recording.success"}),
                rooms=frozenset({"room-a"}),
                headers=(("X-Api-Key", HEADER_VALUE), ("X-Env", "prod")),
                max_concurrency=6,
                rate_limit=2.5,
                tls=TlsConfig(
                    ca_file=tmp_path / "pki" / "ca.pem",
                    client_cert=tmp_path / "pki" / "client-cert.pem",
                    client_key=tmp_path / "pki" / "client-key.pem",
                ),
                route=Route(Proxy("http://proxy.example.com:3128", "proxy")),
            ),
            WebhookConfig(
                name="audit-log",
                url="http://audit.internal:8080/in",
                secret=Secret(OTHER_WEBHOOK_SECRET),
                event_types=None,
                rooms=None,
                headers=(),
                max_concurrency=2,
            ),
        ),
        shutdown_grace=15.0,
        instance_id="poller-1",
    )


def test_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, toml())

    assert config.hms == HmsConfig(
        base_url="https://api.100ms.live/v2",
        event_types=("beam.recording.success",),
        access_key="ak-1",
        app_secret=Secret(APP_SECRET),
        management_token=None,
        request_timeout=10.0,
    )
    assert config.poll == PollConfig(
        interval=30.0,
        page_size=100,
        backfill=True,
        max_concurrency=8,
        lease_ttl=90.0,
        max_pages=10_000,
        max_page_bytes=16 * 1024 * 1024,
        max_page_events=1_000,
        adaptive=False,
        idle_interval=600.0,
        active_window=7200.0,
        sessions_interval=30.0,
    )
    assert config.store.url.reveal() == "sqlite+aiosqlite:////var/lib/poller/poller.db"
    assert config.delivery == DeliveryConfig(
        timeout=10.0,
        retry_schedule=(5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0),
        max_concurrency=4,
    )
    assert config.server is None
    assert config.log == LogConfig(level="info", format="auto")
    assert config.shutdown_grace == 10.0
    assert config.instance_id is None
    (webhook,) = config.webhooks
    assert (webhook.event_types, webhook.rooms, webhook.headers) == (None, None, ())
    assert webhook.max_concurrency == 4


def test_webhook_max_concurrency_defaults_to_delivery_setting(tmp_path: Path) -> None:
    config = load(tmp_path, toml(tables="[delivery]\nmax_concurrency = 7\n"))
    assert config.webhooks[0].max_concurrency == 7


def test_server_table_without_listen_uses_default_address(tmp_path: Path) -> None:
    config = load(tmp_path, toml(tables="[server]\n"))
    assert config.server == ServerConfig(host="127.0.0.1", port=9464, status_page=True)


def test_status_page_is_on_by_default_and_check_config_says_so(tmp_path: Path) -> None:
    text = describe(load(tmp_path, toml(tables="[server]\n")))
    assert "server:      127.0.0.1:9464 (/healthz, /readyz, /metrics; status page at /)" in text
    off = load(tmp_path, toml(tables="[server]\nstatus_page = false\n"))
    assert off.server == ServerConfig(host="127.0.0.1", port=9464, status_page=False)


def test_empty_retry_schedule_means_one_attempt(tmp_path: Path) -> None:
    config = load(tmp_path, toml(tables="[delivery]\nretry_schedule = []\n"))
    assert config.delivery.retry_schedule == ()


def test_management_token_mode(tmp_path: Path) -> None:
    config = load(tmp_path, toml(hms=f'[hms]\nmanagement_token = "{MANAGEMENT_TOKEN}"\n'))
    assert config.hms.management_token == Secret(MANAGEMENT_TOKEN)
    assert (config.hms.access_key, config.hms.app_secret) == (None, None)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:////data/p.db", "sqlite+aiosqlite:////data/p.db"),
        ("sqlite+aiosqlite:///relative.db", "sqlite+aiosqlite:///relative.db"),
        ("postgres://u:pw@h/db", "postgresql+asyncpg://u:pw@h/db"),
        (
            "postgresql://u:pw@h:5433/db?ssl=require",
            "postgresql+asyncpg://u:pw@h:5433/db?ssl=require",
        ),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_store_url_gets_the_async_driver(tmp_path: Path, given: str, expected: str) -> None:
    config = load(tmp_path, toml(tables=f'[store]\nurl = "{given}"\n'))
    assert config.store.url.reveal() == expected


def test_load_config_accepts_str_path_and_defaults_to_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLLER_HMS_MANAGEMENT_TOKEN", MANAGEMENT_TOKEN)
    path = write(tmp_path, toml(hms=""))
    config = load_config(str(path))
    assert config.hms.management_token == Secret(MANAGEMENT_TOKEN)
    assert config.path == path


# --- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (0, 0.0),
        (0.5, 0.5),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1.5s", 1.5),
        ("0.5m", 30.0),
        (".5h", 1800.0),
        ("1h30m", 5400.0),
        (" 10s ", 10.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("30", "expected a number of seconds or a string like '30s'"),
        ("", "expected a number of seconds or a string like '30s'"),
        ("5 s", "invalid duration"),
        ("5sec", "invalid duration"),
        ("5S", "invalid duration"),
        ("1e3s", "invalid duration"),
        ("1.s", "invalid duration"),
        ("-5s", "must not be negative"),
        (-1, "must not be negative"),
        (-0.5, "must not be negative"),
        (True, "got a boolean"),
        (False, "got a boolean"),
        (None, "expected a number of seconds"),
        (["5s"], "got an array"),
        (math.inf, "finite"),
        (math.nan, "finite"),
    ],
)
def test_parse_duration_rejects(value: object, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (30, "30s"),
        (90, "1m30s"),
        (300, "5m"),
        (5400, "1h30m"),
        (7200, "2h"),
        (36000, "10h"),
    ],
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_every_duration_may_reach_its_bound(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        toml(
            top='shutdown_grace = "1h"',
            hms=HMS + 'request_timeout = "1h"\n',
            tables=(
                '[poll]\ninterval = "24h"\nlease_ttl = "168h"\n'
                '[delivery]\ntimeout = "1h"\nretry_schedule = ["0s", "720h"]\n'
            ),
        ),
    )
    assert (config.shutdown_grace, config.hms.request_timeout) == (3600, 3600)
    assert (config.poll.interval, config.poll.lease_ttl) == (86400, 7 * 86400)
    assert (config.delivery.timeout, config.delivery.retry_schedule) == (3600, (0, 30 * 86400))


# --- values the store keeps, hosts, headers ----------------------------------------------------


def test_store_bound_strings_may_fill_their_columns(tmp_path: Path) -> None:
    room, name, instance = "r" * 255, "w" * 64, "i" * 255
    config = load(
        tmp_path,
        toml(
            top=f'instance_id = "{instance}"',
            rooms=f'[[rooms]]\nid = "{room}"\n',
            webhooks=WEBHOOK.replace('name = "recordings"', f'name = "{name}"'),
        ),
    )
    assert (config.rooms[0].id, config.webhooks[0].name, config.instance_id) == (
        room,
        name,
        instance,
    )


def test_store_bounds_are_the_models_column_lengths() -> None:
    # One source of truth: a migration that widens a column widens what the config takes.
    assert stored_length("rooms.id", "events.room_id") == rooms.c.id.type.length == 255
    assert stored_length("deliveries.webhook") == deliveries.c.webhook.type.length == 64
    assert stored_length("instances.id", "rooms.lease_owner", "deliveries.claimed_by") == min(
        instances.c.id.type.length, rooms.c.lease_owner.type.length
    )
    assert stored_length("events.type") == events.c.type.type.length
    with pytest.raises(TypeError, match="not a column of bounded length"):
        stored_length("events.body")


def test_config_does_not_import_the_store_until_it_loads() -> None:
    # `poller --help` and `config-schema` need no SQLAlchemy (a fifth of a second).
    code = "import sys, poller.cli; print('sqlalchemy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "url",
    [
        "http://my_receiver:8080/hook",  # Docker service names
        "https://exämple.com/hook",
        "https://a_b.exämple.com/hook",
        "https://☃.net/hook",  # IDNA 2003, as the HTTP client encodes it
        "https://example.com./hook",
        f"https://{'a' * 63}.example.com/hook",
        "http://127.0.0.1:8080/hook",
        "http://[::1]:8080/hook",
    ],
)
def test_hosts_the_http_client_can_reach_are_accepted(tmp_path: Path, url: str) -> None:
    config = load(tmp_path, toml(webhooks=WEBHOOK.replace("https://example.com/hook", url)))
    assert config.webhooks[0].url == url


@pytest.mark.parametrize("value", ["", "a b\tc", "Bearer x.y-z~", "Café ☕", "!#$%&'*+"])
def test_header_values_within_rfc_9110_are_accepted(tmp_path: Path, value: str) -> None:
    headers = f"headers = {{ X-Api = {json.dumps(value, ensure_ascii=True)} }}\n"
    config = load(tmp_path, toml(webhooks=WEBHOOK + headers))
    assert config.webhooks[0].headers == (("X-Api", value),)


# --- config path -------------------------------------------------------------------------


def test_resolve_config_path_prefers_cli_then_env_then_default() -> None:
    env = {"POLLER_CONFIG": "/env/config.toml"}
    assert resolve_config_path("/cli.toml", env) == Path("/cli.toml")
    assert resolve_config_path(None, env) == Path("/env/config.toml")
    assert resolve_config_path(None, {}) == DEFAULT_CONFIG_PATH == Path("/etc/poller/config.toml")
    assert resolve_config_path(None, {"POLLER_CONFIG": ""}) == DEFAULT_CONFIG_PATH


# --- errors ------------------------------------------------------------------------------

ERROR_CASES = [
    # internal receivers and corporate networks
    pytest.param(
        toml(webhooks=WEBHOOK + f'proxy = "https://u:{PROXY_PASSWORD}@proxy.corp:3128"\n'),
        "webhooks[0].proxy",
        "only http:// proxies are supported, got https://",
        id="proxy-https",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'proxy = "socks5://proxy.corp:1080"\n'),
        "webhooks[0].proxy",
        "only http:// proxies are supported, got socks5://",
        id="proxy-socks",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'proxy = "proxy.corp:3128"\n'),
        "webhooks[0].proxy",
        "expected http://host:port or http://user:password@host:port",
        id="proxy-no-scheme",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + f'proxy = "http://u:{PROXY_PASSWORD}@proxy.corp:3128/x"\n'),
        "webhooks[0].proxy",
        "without a path, query or fragment",
        id="proxy-path",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'proxy = "http://proxy.corp:99999"\n'),
        "webhooks[0].proxy",
        "with a valid port",
        id="proxy-port",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'proxy = "http://u:p@:3128"\n'),
        "webhooks[0].proxy",
        "got no host",
        id="proxy-no-host",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + "proxy = 3128\n"),
        "webhooks[0].proxy",
        "expected a string, got an integer",
        id="proxy-integer",
    ),
    pytest.param(
        toml(hms=HMS + 'proxy = "ftp://proxy.corp:21"\n'),
        "hms.proxy",
        "only http:// proxies are supported, got ftp://",
        id="hms-proxy-scheme",
    ),
    pytest.param(
        toml(hms=HMS + 'proxy = ""\n'),
        "hms.proxy",
        "must not be empty",
        id="hms-proxy-empty",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'ca_file = ""\n'),
        "webhooks[0].ca_file",
        "must not be empty",
        id="ca-file-empty",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + "ca_file = true\n"),
        "webhooks[0].ca_file",
        "expected a string, got a boolean",
        id="ca-file-boolean",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'ca_file = "/nonexistent/ca.pem"\n'),
        "webhooks[0].ca_file",
        "cannot read /nonexistent/ca.pem: No such file or directory",
        id="ca-file-missing",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'client_cert = "/nonexistent/client.pem"\n'),
        "webhooks[0].client_cert",
        "cannot read /nonexistent/client.pem: No such file or directory",
        id="client-cert-missing",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'client_key = "/etc/poller/client.key"\n'),
        "webhooks[0].client_key",
        "is only used with client_cert; give client_cert too",
        id="client-key-without-cert",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK.replace("https://", "http://") + 'client_cert = "/etc/c.pem"\n'),
        "webhooks[0].client_cert",
        "url is not an https:// URL, so no TLS is used to reach it; "
        "remove client_cert or use https://",
        id="client-cert-on-http",
    ),
    pytest.param(
        toml(hms=HMS + 'base_url = "http://hms.corp/v2"\nca_file = "/etc/ca.pem"\n'),
        "hms.ca_file",
        "base_url is not an https:// URL, so no TLS is used to reach it",
        id="hms-ca-file-on-http",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'client_certificate = "/etc/c.pem"\n'),
        "webhooks[0].client_certificate",
        "unknown key (did you mean 'client_cert'?)",
        id="client-cert-typo",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + "tls_verify = false\n"),
        "webhooks[0].tls_verify",
        "unknown key",
        id="no-tls-verify-switch",
    ),
    # receiver protection
    pytest.param(
        toml(webhooks=WEBHOOK + "rate_limit = 0\n"),
        "webhooks[0].rate_limit",
        "greater than 0",
        id="rate-limit-zero",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'rate_limit = "5/s"\n'),
        "webhooks[0].rate_limit",
        "expected a number, got a string",
        id="rate-limit-string",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + "rate_limit = inf\n"),
        "webhooks[0].rate_limit",
        "finite number",
        id="rate-limit-inf",
    ),
    pytest.param(
        toml(hms=HMS + "max_requests_per_second = 0\n"),
        "hms.max_requests_per_second",
        "greater than 0",
        id="request-budget-zero",
    ),
    pytest.param(
        toml(hms=HMS + "max_requests_per_second = 20000\n"),
        "hms.max_requests_per_second",
        "10000",
        id="request-budget-too-high",
    ),
    pytest.param(
        toml(hms=HMS + "max_requests_per_second = nan\n"),
        "hms.max_requests_per_second",
        "finite number",
        id="request-budget-nan",
    ),
    pytest.param(
        toml(tables='[delivery]\nbreaker_after = "0s"\n'),
        "delivery.breaker_after",
        "greater than 0 and at most 720h",
        id="breaker-after-zero",
    ),
    pytest.param(
        toml(tables='[delivery]\nprobe_interval = "25h"\n'),
        "delivery.probe_interval",
        "at most 24h",
        id="probe-interval-too-long",
    ),
    # unknown keys
    pytest.param(toml(top='colour = "red"'), "colour", "unknown key", id="unknown-top-level"),
    pytest.param(
        toml(tables="[webhook]\n"), "webhook", "did you mean 'webhooks'?", id="unknown-table-hint"
    ),
    pytest.param(
        toml(hms=f'[hms]\nacess_key = "ak"\napp_secret = "{APP_SECRET}"\n'),
        "hms.acess_key",
        "unknown key (did you mean 'access_key'?)",
        id="unknown-hms-key-hint",
    ),
    pytest.param(
        toml(tables='[poll]\nintervall = "5s"\n'),
        "poll.intervall",
        "did you mean 'interval'?",
        id="unknown-poll-key-hint",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + "zzz = 1\n"), "webhooks[0].zzz", "unknown key", id="unknown-webhook"
    ),
    pytest.param(
        toml(rooms=ROOMS + 'name = "b"\n'), "rooms[1].name", "unknown key", id="unknown-room-key"
    ),
    # wrong types
    pytest.param(
        toml(tables='[poll]\npage_size = "100"\n'),
        "poll.page_size",
        "expected an integer, got a string",
        id="page-size-string",
    ),
    pytest.param(
        toml(tables="[poll]\npage_size = 10.0\n"),
        "poll.page_size",
        "expected an integer, got a float",
        id="page-size-float",
    ),
    pytest.param(
        toml(tables="[poll]\npage_size = true\n"),
        "poll.page_size",
        "expected an integer, got a boolean",
        id="page-size-bool",
    ),
    pytest.param(
        toml(tables="[poll]\npage_size = 0\n"),
        "poll.page_size",
        "must be from 1 to 100, got 0",
        id="page-size-0",
    ),
    pytest.param(
        toml(tables="[poll]\npage_size = 101\n"),
        "poll.page_size",
        "must be from 1 to 100, got 101",
        id="page-size-101",
    ),
    pytest.param(
        toml(tables='[poll]\nbackfill = "yes"\n'),
        "poll.backfill",
        "expected a boolean",
        id="backfill-string",
    ),
    pytest.param(
        toml(tables="[poll]\nmax_concurrency = 0\n"),
        "poll.max_concurrency",
        "must be at least 1",
        id="poll-concurrency-0",
    ),
    pytest.param(toml(top='hms = "x"', hms=""), "hms", "expected a table", id="hms-not-a-table"),
    pytest.param(
        toml(hms=HMS + 'event_types = "beam.recording.success"\n'),
        "hms.event_types",
        "expected an array of strings, got a string",
        id="event-types-string",
    ),
    pytest.param(
        toml(hms=HMS + "event_types = [1]\n"),
        "hms.event_types[0]",
        "expected a string, got an integer",
        id="event-types-int-item",
    ),
    pytest.param(
        toml(hms=HMS + "event_types = []\n"),
        "hms.event_types",
        "must not be empty",
        id="event-types-empty",
    ),
    pytest.param(
        toml(hms=HMS + 'event_types = ["a", "b", "a"]\n'),
        "hms.event_types[2]",
        "duplicate 'a' (also hms.event_types[0])",
        id="event-types-duplicate",
    ),
    pytest.param(
        toml(top='instance_id = ""'), "instance_id", "must not be empty", id="instance-id-empty"
    ),
    # durations
    pytest.param(
        toml(tables='[poll]\ninterval = "0s"\n'),
        "poll.interval",
        "must be greater than 0",
        id="interval-zero",
    ),
    pytest.param(
        toml(tables='[poll]\ninterval = "-5s"\n'),
        "poll.interval",
        "must not be negative",
        id="interval-negative",
    ),
    pytest.param(
        toml(tables='[delivery]\ntimeout = "30"\n'),
        "delivery.timeout",
        "expected a number of seconds or a string like '30s'",
        id="timeout-bare-number-string",
    ),
    pytest.param(
        toml(hms=HMS + "request_timeout = true\n"),
        "hms.request_timeout",
        "got a boolean",
        id="request-timeout-bool",
    ),
    pytest.param(
        toml(tables='[delivery]\nretry_schedule = ["5s", "soon"]\n'),
        "delivery.retry_schedule[1]",
        "invalid duration 'soon'",
        id="retry-schedule-item",
    ),
    pytest.param(
        toml(top="shutdown_grace = -1"), "shutdown_grace", "must not be negative", id="grace"
    ),
    # base_url
    pytest.param(
        toml(hms=HMS + 'base_url = "ftp://api.100ms.live/v2"\n'),
        "hms.base_url",
        "expected an http:// or https:// URL with a host, got scheme 'ftp'",
        id="base-url-scheme",
    ),
    pytest.param(
        toml(hms=HMS + 'base_url = "https:///v2"\n'),
        "hms.base_url",
        "got no host",
        id="base-url-no-host",
    ),
    pytest.param(
        toml(hms=HMS + 'base_url = "api.100ms.live/v2"\n'),
        "hms.base_url",
        "expected an http:// or https:// URL",
        id="base-url-no-scheme",
    ),
    pytest.param(
        toml(hms=HMS + 'base_url = "https://api.100ms.live/v2?x=1"\n'),
        "hms.base_url",
        "must not have a query",
        id="base-url-query",
    ),
    # auth modes
    pytest.param(
        toml(hms=HMS + f'management_token = "{MANAGEMENT_TOKEN}"\n'),
        "hms.management_token",
        "management_token and access_key + app_secret are both given",
        id="both-auth-modes",
    ),
    pytest.param(
        toml(hms="[hms]\n"),
        "hms",
        "give either access_key + app_secret (tokens are minted) or management_token",
        id="neither-auth-mode",
    ),
    pytest.param(toml(hms=""), "hms", "give either access_key + app_secret", id="no-hms-table"),
    pytest.param(
        toml(hms='[hms]\naccess_key = "ak-1"\n'),
        "hms.app_secret",
        "is required with access_key",
        id="access-key-without-app-secret",
    ),
    pytest.param(
        toml(hms=f'[hms]\napp_secret = "{APP_SECRET}"\n'),
        "hms.access_key",
        "is required with app_secret",
        id="app-secret-without-access-key",
    ),
    pytest.param(
        toml(hms='[hms]\naccess_key = "ak-1"\napp_secret = ""\n'),
        "hms.app_secret",
        "must not be empty",
        id="empty-inline-secret",
    ),
    pytest.param(
        toml(hms='[hms]\naccess_key = "ak-1"\napp_secret = 12345\n'),
        "hms.app_secret",
        "expected a string, got an integer",
        id="secret-wrong-type",
    ),
    pytest.param(
        toml(hms=HMS + 'app_secret_file = "/run/secret"\n'),
        "hms.app_secret",
        "given both inline and as app_secret_file",
        id="secret-inline-and-file",
    ),
    # adaptive polling
    pytest.param(
        toml(tables='[poll]\nadaptive = true\nidle_interval = "10s"\n'),
        "poll.idle_interval",
        "must be at least poll.interval (30s): idle rooms are polled less often than active ones",
        id="adaptive-idle-faster-than-active",
    ),
    pytest.param(
        toml(tables='[poll]\nidle_interval = "0s"\n'),
        "poll.idle_interval",
        "greater than 0",
        id="adaptive-idle-interval-zero",
    ),
    pytest.param(
        toml(tables='[poll]\nidle_interval = "25h"\n'),
        "poll.idle_interval",
        "24h",
        id="adaptive-idle-interval-too-long",
    ),
    pytest.param(
        toml(tables='[poll]\nsessions_interval = "0s"\n'),
        "poll.sessions_interval",
        "greater than 0",
        id="adaptive-sessions-interval-zero",
    ),
    pytest.param(
        toml(tables='[poll]\nactive_window = "745h"\n'),
        "poll.active_window",
        "720h",
        id="adaptive-window-too-long",
    ),
    pytest.param(
        toml(tables='[poll]\nactive_window = "-1s"\n'),
        "poll.active_window",
        "must not be negative, got '-1s'",
        id="adaptive-window-negative",
    ),
    pytest.param(
        toml(tables='[poll]\nadaptive = "yes"\n'),
        "poll.adaptive",
        "expected a boolean",
        id="adaptive-not-a-boolean",
    ),
    pytest.param(
        toml(tables="[poll]\nadaptiv = true\n"),
        "poll.adaptiv",
        "unknown key (did you mean 'adaptive'?)",
        id="adaptive-typo",
    ),
    # rooms
    pytest.param(
        toml(tables='[discovery]\ninterval = "0s"\n'),
        "discovery.interval",
        "greater than 0",
        id="discovery-interval-zero",
    ),
    pytest.param(
        toml(tables='[discovery]\nkeep = "745h"\n'),
        "discovery.keep",
        "must be from 0s to 720h (30 days), got '745h'",
        id="discovery-keep-too-long",
    ),
    pytest.param(
        toml(tables='[discovery]\ntemplate_ids = ["t1", "t2", "t1"]\n'),
        "discovery.template_ids[2]",
        "duplicate 't1'",
        id="discovery-template-twice",
    ),
    pytest.param(
        toml(tables="[discovery]\nenabeld = true\n"),
        "discovery.enabeld",
        "did you mean 'enabled'",
        id="discovery-typo",
    ),
    pytest.param(toml(rooms=""), "rooms", "at least one [[rooms]] is required", id="no-rooms"),
    pytest.param(
        toml(top="rooms = []", rooms=""),
        "rooms",
        "at least one [[rooms]] is required",
        id="empty-rooms",
    ),
    pytest.param(
        toml(top='rooms = ["room-a"]', rooms=""),
        "rooms[0]",
        "expected a table ([[rooms]]), got a string",
        id="rooms-as-strings",
    ),
    pytest.param(
        toml(rooms=ROOMS + '\n[[rooms]]\nid = "room-a"\n'),
        "rooms[2].id",
        "duplicate room id 'room-a' (also rooms[0].id)",
        id="duplicate-room",
    ),
    pytest.param(toml(rooms="[[rooms]]\n"), "rooms[0].id", "is required", id="room-without-id"),
    # webhooks
    pytest.param(
        toml(webhooks=""), "webhooks", "at least one [[webhooks]] is required", id="no-webhooks"
    ),
    pytest.param(
        toml(webhooks=WEBHOOK.replace("[[webhooks]]", "[webhooks]")),
        "webhooks",
        "expected an array of tables ([[webhooks]]), got a table",
        id="webhooks-single-table",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + WEBHOOK),
        "webhooks[1].name",
        "duplicate webhook name 'recordings' (also webhooks[0].name)",
        id="duplicate-webhook-name",
    ),
    pytest.param(
        toml(
            webhooks=WEBHOOK.replace('"recordings"', '"a-b"')
            + WEBHOOK.replace('"recordings"', '"a_b"')
        ),
        "webhooks[1].name",
        "share $POLLER_WEBHOOK_A_B_SECRET",
        id="webhook-names-share-env-var",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK.replace('"recordings"', '"Recordings"')),
        "webhooks[0].name",
        "may only contain lowercase letters, digits, '_' and '-'",
        id="webhook-name-uppercase",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK.replace('"recordings"', '"rec ordings"')),
        "webhooks[0].name",
        "may only contain",
        id="webhook-name-space",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK.replace('name = "recordings"', "")),
        "webhooks[0].name",
        "is required",
        id="webhook-without-name",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK.replace("https://example.com/hook", "ftp://example.com/hook")),
        "webhooks[0].url",
        "expected an http:// or https:// URL with a host, got scheme 'ftp'",
        id="webhook-url-scheme",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK.replace("https://example.com/hook", "example.com/hook")),
        "webhooks[0].url",
        "expected an http:// or https:// URL",
        id="webhook-url-no-scheme",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK.replace("https://example.com/hook", "https://example.com:99999/")),
        "webhooks[0].url",
        "valid port",
        id="webhook-url-bad-port",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK.replace('url = "https://example.com/hook"', "")),
        "webhooks[0].url",
        "is required",
        id="webhook-without-url",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK.replace(WEBHOOK_SECRET, BAD_WEBHOOK_SECRET)),
        "webhooks[0].secret",
        "not a base64 Standard Webhooks secret",
        id="webhook-secret-not-base64",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK.replace(WEBHOOK_SECRET, SHORT_WEBHOOK_SECRET)),
        "webhooks[0].secret",
        "shorter than 16 bytes",
        id="webhook-secret-short",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK.replace(f'secret = "{WEBHOOK_SECRET}"', "")),
        "webhooks[0].secret",
        "is required (inline, as secret_file or through $POLLER_WEBHOOK_RECORDINGS_SECRET)",
        id="webhook-without-secret",
    ),
    pytest.param(
        toml(hms=HMS + 'event_types = ["beam.recording.sucess"]\n'),
        "hms.event_types[0]",
        "'beam.recording.sucess' is not an event type of the analytics events API "
        "(did you mean 'beam.recording.success'?); "
        "a type newer than poller goes in hms.extra_event_types too",
        id="event-type-typo",
    ),
    pytest.param(
        toml(hms=HMS + 'event_types = ["beam.recording.success", "zzz"]\n'),
        "hms.event_types[1]",
        "'zzz' is not an event type of the analytics events API; known: "
        "beam.recording.success, track.add.success",
        id="event-type-unknown-lists-known",
    ),
    pytest.param(
        toml(
            hms=HMS
            + 'event_types = ["beam.recording.success"]\n'
            + 'extra_event_types = ["track.add.success"]\n'
        ),
        "hms.extra_event_types[0]",
        "'track.add.success' is a type poller knows: list it in hms.event_types alone",
        id="extra-event-type-known",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'event_types = ["client.join.faild"]\n'),
        "webhooks[0].event_types[0]",
        "(did you mean 'client.join.failed'?)",
        id="webhook-event-type-typo",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'event_types = ["client.join.failed"]\n'),
        "webhooks[0].event_types[0]",
        "'client.join.failed' is not in hms.event_types, so it would never match",
        id="webhook-event-type-not-polled",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'rooms = ["room-a", "room-z"]\n'),
        "webhooks[0].rooms[1]",
        "'room-z' is not in the [[rooms]] ids, so it would never match",
        id="webhook-room-not-configured",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + "rooms = []\n"),
        "webhooks[0].rooms",
        "must not be empty (omit it to receive all",
        id="webhook-rooms-empty",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + "max_concurrency = 0\n"),
        "webhooks[0].max_concurrency",
        "must be at least 1",
        id="webhook-concurrency-0",
    ),
    # headers
    *(
        pytest.param(
            toml(webhooks=WEBHOOK + f'headers = {{ "{name}" = "{HEADER_VALUE}" }}\n'),
            f"webhooks[0].headers.{name}",
            "is set by poller itself",
            id=f"forbidden-header-{name}",
        )
        for name in (
            "Content-Type",
            "content-type",
            "CONTENT-TYPE",
            "User-Agent",
            "user-agent",
            "webhook-id",
            "Webhook-Signature",
            "WEBHOOK-TIMESTAMP",
            "webhook-anything",
            "Content-Length",
        )
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + f'headers = {{ "X Api" = "{HEADER_VALUE}" }}\n'),
        "webhooks[0].headers",
        "'X Api' is not a valid HTTP header name",
        id="header-name-invalid",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + f'headers = {{ "X-Api" = "{HEADER_VALUE}\\r\\nX-Evil: 1" }}\n'),
        "webhooks[0].headers.X-Api",
        "must not contain CR, LF or NUL",
        id="header-value-crlf",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'headers = { "X-Api" = 1 }\n'),
        "webhooks[0].headers.X-Api",
        "expected a string, got an integer",
        id="header-value-int",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + f'headers = {{ "X-Api" = "{HEADER_VALUE}", "x-api" = "2" }}\n'),
        "webhooks[0].headers.x-api",
        "duplicate header (also webhooks[0].headers.X-Api",
        id="header-duplicate-case-insensitive",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'headers = "X-Api: 1"\n'),
        "webhooks[0].headers",
        "expected a table, got a string",
        id="headers-not-a-table",
    ),
    # server
    *(
        pytest.param(
            toml(tables=f'[server]\nlisten = "{listen}"\n'),
            "server.listen",
            problem,
            id=f"listen-{listen}",
        )
        for listen, problem in (
            ("localhost", "expected host:port"),
            (":9464", "expected host:port"),
            ("::1:9464", "put an IPv6 address in brackets"),
            ("[::1]9464", "expected host:port"),
            ("[nope]:9464", "'nope' is not an IPv6 address"),
            ("127.0.0.1:99999", "port must be a number from 0 to 65535, got '99999'"),
            ("127.0.0.1:http", "port must be a number"),
            ("127.0.0.1:", "port must be a number"),
        )
    ),
    # log
    pytest.param(
        toml(tables='[log]\nlevel = "verbose"\n'),
        "log.level",
        "must be one of debug, info, warning, error; got 'verbose'",
        id="log-level",
    ),
    pytest.param(
        toml(tables='[log]\nformat = "xml"\n'),
        "log.format",
        "must be one of auto, json, console",
        id="log-format",
    ),
    # store
    pytest.param(
        toml(tables=f'[store]\nurl = "mysql://poller:{DB_PASSWORD}@db/poller"\n'),
        "store.url",
        "unsupported driver 'mysql'; use sqlite+aiosqlite or postgresql+asyncpg",
        id="store-driver-mysql",
    ),
    pytest.param(
        toml(tables=f'[store]\nurl = "postgresql+psycopg2://u:{DB_PASSWORD}@db/poller"\n'),
        "store.url",
        "unsupported driver 'postgresql+psycopg2'",
        id="store-driver-psycopg2",
    ),
    pytest.param(
        toml(tables=f'[store]\nurl = "not a url {DB_PASSWORD}"\n'),
        "store.url",
        "not a valid SQLAlchemy URL",
        id="store-url-unparsable",
    ),
    pytest.param(
        toml(tables=f'[store]\nurl = "postgresql://u:{DB_PASSWORD}@db:port/poller"\n'),
        "store.url",
        "not a valid SQLAlchemy URL",
        id="store-url-bad-port",
    ),
    # shapes the cases above do not reach
    pytest.param(
        toml(top="webhooks = [1]", webhooks=""),
        "webhooks[0]",
        "expected a table ([[webhooks]]), got an integer",
        id="webhooks-item-not-a-table",
    ),
    pytest.param(
        toml(tables='[delivery]\nretry_schedule = "5s"\n'),
        "delivery.retry_schedule",
        "expected an array of durations, got a string",
        id="retry-schedule-string",
    ),
    pytest.param(
        toml(tables="[poll]\ninterval = 2024-01-01\n"),
        "poll.interval",
        "expected a number of seconds or a string like '30s' (units: ms, s, m, h), got a date/time",
        id="interval-date",
    ),
    pytest.param(
        toml(tables='[poll]\nlease_ttl = "0s"\n'),
        "poll.lease_ttl",
        "must be greater than 0",
        id="lease-ttl-zero",
    ),
    pytest.param(
        toml(tables="[poll]\nmax_page_bytes = 10\n"),
        "poll.max_page_bytes",
        "must be at least 1024, got 10",
        id="max-page-bytes-small",
    ),
    pytest.param(
        toml(tables="[log]\nlevel = 3\n"),
        "log.level",
        "expected a string, got an integer",
        id="log-level-int",
    ),
    pytest.param(
        toml(tables="[server]\nlisten = 9464\n"),
        "server.listen",
        "expected a string, got an integer",
        id="listen-int",
    ),
    pytest.param(
        toml(tables='[server]\nstatus_page = "yes"\n'),
        "server.status_page",
        "expected a boolean",
        id="status-page-string",
    ),
    pytest.param(
        toml(tables="[server]\nstatus_page = 1\n"),
        "server.status_page",
        "expected a boolean",
        id="status-page-int",
    ),
    pytest.param(
        toml(tables="[server]\nstatus-page = true\n"),
        "server.status-page",
        "status_page",
        id="status-page-typo",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'headers = { "X-Api" = ["1"] }\n'),
        "webhooks[0].headers.X-Api",
        "expected a string, got an array",
        id="header-value-array",
    ),
    # header values: RFC 9110 field values
    *(
        pytest.param(
            toml(webhooks=WEBHOOK + f'headers = {{ "X-Api" = "{value}" }}\n'),
            "webhooks[0].headers.X-Api",
            problem,
            id=f"header-value-{case}",
        )
        for case, value, problem in (
            ("control", f"{HEADER_VALUE}\\u0001", "U+0001 at position 16 is not one"),
            ("del", f"{HEADER_VALUE}\\u007f", "U+007F"),
            ("c1-control", f"{HEADER_VALUE}\\u0085", "U+0085"),
            ("zero-width-space", f"{HEADER_VALUE}\\u200b", "U+200B"),
            ("leading-space", f" {HEADER_VALUE}", "must not begin or end with a space or tab"),
            ("trailing-tab", f"{HEADER_VALUE}\\t", "must not begin or end with a space or tab"),
            ("nul", f"{HEADER_VALUE}\\u0000", "must not contain CR, LF or NUL"),
        )
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + f'headers = {{ "Host" = "{HEADER_VALUE}" }}\n'),
        "webhooks[0].headers.Host",
        "is set by poller itself",
        id="forbidden-header-host",
    ),
    # host names, as the resolver would take them at the first delivery
    *(
        pytest.param(
            toml(webhooks=WEBHOOK.replace("https://example.com/hook", url)),
            "webhooks[0].url",
            problem,
            id=f"webhook-url-{case}",
        )
        for case, url, problem in (
            (
                "label-over-63",
                f"https://{'a' * 64}.example.com/hook",
                "host name label 1 is 64 characters long in ASCII; at most 63 are allowed",
            ),
            (
                "idna-label-over-63",
                f"https://{'ä' * 60}.example.com/hook",
                "not a valid internationalized domain name (IDNA: Label too long)",
            ),
            (
                "name-over-253",
                "https://" + ("a" * 60 + ".") * 5 + "com/hook",
                "host name is 308 characters long in ASCII; at most 253 are allowed",
            ),
            ("empty-label", "https://example..com/hook", "empty label"),
            ("bad-character", "https://exa!mple.com/hook", "may only hold letters, digits"),
            ("port-0", "https://example.com:0/hook", "valid port (1 to 65535)"),
        )
    ),
    pytest.param(
        toml(hms=HMS + f'base_url = "https://{"b" * 64}.100ms.live/v2"\n'),
        "hms.base_url",
        "at most 63 are allowed",
        id="base-url-label-over-63",
    ),
    # durations: bounded, and the message says the range
    *(
        pytest.param(
            toml(top=top, tables=tables),
            key,
            problem,
            id=f"duration-{key}",
        )
        for top, tables, key, problem in (
            (
                "",
                '[poll]\ninterval = "100000000h"\n',
                "poll.interval",
                "must be greater than 0 and at most 24h, got '100000000h'",
            ),
            ("", "[poll]\ninterval = 1e12\n", "poll.interval", "at most 24h, got 1000000000000.0"),
            ("", "[poll]\ninterval = 0\n", "poll.interval", "greater than 0 and at most 24h"),
            (
                "",
                '[poll]\nlease_ttl = "169h"\n',
                "poll.lease_ttl",
                "greater than 0 and at most 168h (7 days), got '169h'",
            ),
            (
                "",
                '[delivery]\nretry_schedule = ["5s", "100000000h"]\n',
                "delivery.retry_schedule[1]",
                "must be from 0s to 720h (30 days), got '100000000h'",
            ),
            ("", '[delivery]\ntimeout = "61m"\n', "delivery.timeout", "at most 1h, got '61m'"),
            ('shutdown_grace = "2h"', "", "shutdown_grace", "must be from 0s to 1h, got '2h'"),
        )
    ),
    pytest.param(
        toml(hms=HMS + 'request_timeout = "2h"\n'),
        "hms.request_timeout",
        "greater than 0 and at most 1h, got '2h'",
        id="duration-hms.request_timeout",
    ),
    # values the store keeps: no longer than its columns, and text every backend holds
    pytest.param(
        toml(rooms=f'[[rooms]]\nid = "{"r" * 256}"\n'),
        "rooms[0].id",
        "must be at most 255 characters (the store keeps it in rooms.id), got 256",
        id="room-id-too-long",
    ),
    pytest.param(
        toml(rooms='[[rooms]]\nid = "room\\u0000a"\n'),
        "rooms[0].id",
        "must not contain NUL characters",
        id="room-id-nul",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK.replace('name = "recordings"', f'name = "{"w" * 65}"')),
        "webhooks[0].name",
        "must be at most 64 characters (the store keeps it in deliveries.webhook), got 65",
        id="webhook-name-too-long",
    ),
    pytest.param(
        toml(top=f'instance_id = "{"i" * 256}"'),
        "instance_id",
        "must be at most 255 characters (the store keeps it in instances.id), got 256",
        id="instance-id-too-long",
    ),
    pytest.param(
        toml(top='instance_id = "host\\u0000"'),
        "instance_id",
        "must not contain NUL characters",
        id="instance-id-nul",
    ),
    pytest.param(
        toml(hms=HMS + f'event_types = ["{"t" * 256}"]\n'),
        "hms.event_types[0]",
        "must be at most 255 characters (the store keeps it in events.type)",
        id="event-type-too-long",
    ),
    pytest.param(
        toml(hms=HMS.replace(APP_SECRET, APP_SECRET + "\\u0000")),
        "hms.app_secret",
        "must not contain NUL characters",
        id="secret-nul",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + "max_concurency = 3\n"),
        "webhooks[0].max_concurency",
        "unknown key (did you mean 'max_concurrency'?)",
        id="unknown-webhook-key-hint",
    ),
    pytest.param(
        toml(webhooks=WEBHOOK + 'secrets = "x"\n'),
        "webhooks[0].secrets",
        "unknown key (did you mean 'secret'?)",
        id="unknown-webhook-secret-key-hint",
    ),
]


@pytest.mark.parametrize(("text", "key", "problem"), ERROR_CASES)
def test_config_error_names_file_key_and_problem(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    error = load_error(tmp_path, text)

    assert error.path == str(tmp_path / "config.toml")
    assert error.key == key
    assert problem in error.problem
    assert str(error) == f"{tmp_path / 'config.toml'}: {key}: {error.problem}"


@pytest.mark.parametrize(("text", "key", "problem"), ERROR_CASES)
def test_config_error_never_shows_a_secret(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    assert_no_secret(str(load_error(tmp_path, text)))


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, f'[hms]\napp_secret = "{APP_SECRET}" oops\n')

    assert error.key is None
    assert str(error).startswith(f"{tmp_path / 'config.toml'}: invalid TOML: ")
    assert "line 2" in str(error)
    assert_no_secret(str(error))


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, {})

    assert info.value.key is None
    assert (
        str(info.value) == f"{path}: config file not found (choose one with -c or $POLLER_CONFIG)"
    )


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path, {})


def test_config_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'instance_id = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, {})


# --- secret sources ----------------------------------------------------------------------


def test_secret_file_relative_to_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    write(etc, f"{APP_SECRET}\n", "secrets/app")
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    hms = '[hms]\naccess_key = "ak-1"\napp_secret_file = "secrets/app"\n'

    config = load_config(write(etc, toml(hms=hms)), {})

    assert config.hms.app_secret == Secret(APP_SECRET)


@pytest.mark.parametrize("variable", ["$CREDENTIALS_DIRECTORY", "${CREDENTIALS_DIRECTORY}"])
def test_secret_file_in_credentials_directory(tmp_path: Path, variable: str) -> None:
    creds = tmp_path / "creds"
    write(creds, f"  {MANAGEMENT_TOKEN}\n\n", "hms-token")
    hms = f'[hms]\nmanagement_token_file = "{variable}/hms-token"\n'

    config = load(tmp_path, toml(hms=hms), {"CREDENTIALS_DIRECTORY": str(creds)})

    assert config.hms.management_token == Secret(MANAGEMENT_TOKEN)


def test_secret_file_credentials_directory_not_set(tmp_path: Path) -> None:
    hms = '[hms]\nmanagement_token_file = "$CREDENTIALS_DIRECTORY/hms-token"\n'
    error = load_error(tmp_path, toml(hms=hms), {"CREDENTIALS_DIRECTORY": ""})

    assert error.key == "hms.management_token_file"
    assert "$CREDENTIALS_DIRECTORY but it is not set" in error.problem


def test_webhook_secret_file_absolute_path(tmp_path: Path) -> None:
    secret_path = write(tmp_path / "elsewhere", WEBHOOK_SECRET, "hook")
    webhooks = WEBHOOK.replace(f'secret = "{WEBHOOK_SECRET}"', f'secret_file = "{secret_path}"')

    config = load(tmp_path / "etc", toml(webhooks=webhooks))

    assert config.webhooks[0].secret == Secret(WEBHOOK_SECRET)


def test_missing_secret_file_names_key_and_path(tmp_path: Path) -> None:
    hms = '[hms]\naccess_key = "ak-1"\napp_secret_file = "missing/app"\n'
    error = load_error(tmp_path, toml(hms=hms))

    assert error.key == "hms.app_secret_file"
    assert error.problem == f"cannot read {tmp_path / 'missing/app'}: No such file or directory"
    assert f"{tmp_path / 'config.toml'}: hms.app_secret_file: cannot read" in str(error)


def test_empty_secret_file(tmp_path: Path) -> None:
    write(tmp_path, "\n  \n", "app")
    hms = '[hms]\naccess_key = "ak-1"\napp_secret_file = "app"\n'
    error = load_error(tmp_path, toml(hms=hms))

    assert (error.key, error.problem) == ("hms.app_secret_file", f"{tmp_path / 'app'} is empty")


def test_invalid_webhook_secret_from_file_names_source_not_value(tmp_path: Path) -> None:
    write(tmp_path, BAD_WEBHOOK_SECRET, "hook")
    webhooks = WEBHOOK.replace(f'secret = "{WEBHOOK_SECRET}"', 'secret_file = "hook"')
    error = load_error(tmp_path, toml(webhooks=webhooks))

    assert error.key == "webhooks[0].secret"
    assert error.problem == (
        f"not a base64 Standard Webhooks secret (from file {tmp_path / 'hook'})"
    )


def test_secrets_from_environment(tmp_path: Path) -> None:
    webhooks = WEBHOOK.replace('"recordings"', '"recordings-clip"').replace(
        f'secret = "{WEBHOOK_SECRET}"', ""
    )
    environ = {
        "POLLER_HMS_APP_SECRET": APP_SECRET,
        "POLLER_WEBHOOK_RECORDINGS_CLIP_SECRET": WEBHOOK_SECRET,
    }

    config = load(tmp_path, toml(hms='[hms]\naccess_key = "ak-1"\n', webhooks=webhooks), environ)

    assert config.hms.app_secret == Secret(APP_SECRET)
    assert config.webhooks[0].secret == Secret(WEBHOOK_SECRET)


def test_management_token_from_environment(tmp_path: Path) -> None:
    config = load(tmp_path, toml(hms=""), {"POLLER_HMS_MANAGEMENT_TOKEN": MANAGEMENT_TOKEN})
    assert config.hms.management_token == Secret(MANAGEMENT_TOKEN)


def test_empty_environment_variable_counts_as_absent(tmp_path: Path) -> None:
    environ = {"POLLER_HMS_APP_SECRET": "", "POLLER_WEBHOOK_RECORDINGS_SECRET": ""}
    config = load(tmp_path, toml(), environ)
    assert config.hms.app_secret == Secret(APP_SECRET)


def test_environment_token_conflicts_with_configured_key_pair(tmp_path: Path) -> None:
    error = load_error(tmp_path, toml(), {"POLLER_HMS_MANAGEMENT_TOKEN": MANAGEMENT_TOKEN})

    assert error.key == "hms.management_token"
    assert "(from $POLLER_HMS_MANAGEMENT_TOKEN)" in error.problem
    assert_no_secret(str(error))


@pytest.mark.parametrize(
    ("hms", "environ", "key", "problem"),
    [
        pytest.param(
            HMS,
            {"POLLER_HMS_APP_SECRET": APP_SECRET},
            "hms.app_secret",
            "POLLER_HMS_APP_SECRET is set and hms.app_secret is also given",
            id="env-and-inline",
        ),
        pytest.param(
            '[hms]\naccess_key = "ak-1"\napp_secret_file = "app"\n',
            {"POLLER_HMS_APP_SECRET": APP_SECRET},
            "hms.app_secret_file",
            "POLLER_HMS_APP_SECRET is set and hms.app_secret_file is also given",
            id="env-and-file",
        ),
        pytest.param(
            HMS + 'app_secret_file = "app"\n',
            {},
            "hms.app_secret",
            "given both inline and as app_secret_file",
            id="inline-and-file",
        ),
        pytest.param(
            f'[hms]\nmanagement_token = "{MANAGEMENT_TOKEN}"\n',
            {"POLLER_HMS_MANAGEMENT_TOKEN": MANAGEMENT_TOKEN},
            "hms.management_token",
            "POLLER_HMS_MANAGEMENT_TOKEN is set and hms.management_token is also given",
            id="token-env-and-inline",
        ),
    ],
)
def test_two_secret_sources_are_an_error(
    tmp_path: Path, hms: str, environ: dict[str, str], key: str, problem: str
) -> None:
    write(tmp_path, APP_SECRET, "app")
    error = load_error(tmp_path, toml(hms=hms), environ)

    assert (error.key, error.problem) == (key, f"{problem}; give only one")
    assert_no_secret(str(error))


def test_webhook_env_secret_and_inline_is_an_error(tmp_path: Path) -> None:
    environ = {"POLLER_WEBHOOK_RECORDINGS_SECRET": OTHER_WEBHOOK_SECRET}
    error = load_error(tmp_path, toml(), environ)

    assert error.key == "webhooks[0].secret"
    assert "POLLER_WEBHOOK_RECORDINGS_SECRET is set and webhooks[0].secret is also given" in str(
        error
    )
    assert_no_secret(str(error))


def test_a_secret_from_the_environment_must_be_text(tmp_path: Path) -> None:
    # os.environ decodes bytes that are not UTF-8 as lone surrogates.
    environ = {"POLLER_HMS_APP_SECRET": APP_SECRET + "\udcff"}
    error = load_error(tmp_path, toml(hms='[hms]\naccess_key = "ak-1"\n'), environ)
    assert error.key == "hms.app_secret"
    assert error.problem.startswith("$POLLER_HMS_APP_SECRET must be valid Unicode text")
    assert_no_secret(str(error))


def test_a_secret_file_must_not_hold_nul(tmp_path: Path) -> None:
    write(tmp_path, f"{APP_SECRET}\0\n", "app_secret")
    hms = '[hms]\naccess_key = "ak-1"\napp_secret_file = "app_secret"\n'
    error = load_error(tmp_path, toml(hms=hms))
    assert error.key == "hms.app_secret_file"
    assert error.problem == f"{tmp_path / 'app_secret'} must not contain NUL characters"


# --- the webhook's signing key -----------------------------------------------------------


def test_webhook_signing_key_is_decoded_at_load(tmp_path: Path) -> None:
    (webhook,) = load(tmp_path, toml()).webhooks

    assert webhook.signing_key.current == SigningKey.from_secret(WEBHOOK_SECRET)
    assert "signing_key" not in repr(webhook)


def test_webhook_config_refuses_a_secret_that_is_no_key(tmp_path: Path) -> None:
    (webhook,) = load(tmp_path, toml()).webhooks

    with pytest.raises(InvalidSecret, match="not a base64 Standard Webhooks secret"):
        dataclasses.replace(webhook, secret=Secret(BAD_WEBHOOK_SECRET))


def test_config_does_not_import_delivery() -> None:
    # The package cycle this removed: config validated secrets through poller.delivery.
    code = (
        "import sys, poller.config; "
        "print(sorted(m for m in sys.modules if m.startswith('poller.delivery')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- never showing secrets ---------------------------------------------------------------


def test_repr_and_str_never_show_a_secret(tmp_path: Path) -> None:
    config = load_full(tmp_path)
    token_config = load(tmp_path, toml(hms=f'[hms]\nmanagement_token = "{MANAGEMENT_TOKEN}"\n'))

    for text in (repr(config), str(config), repr(token_config), str(token_config)):
        assert_no_secret(text)
    assert "'X-Api-Key', '***'" in repr(config.webhooks[0])


def test_describe(tmp_path: Path) -> None:
    text = describe(load_full(tmp_path))

    assert_no_secret(text)
    assert f"config:      {tmp_path / 'config.toml'}" in text
    assert "https://hms.example.com:443 (minted tokens for access key ak***;" in text
    assert "beam.recording.success, track.add.success" in text
    assert "every 1m, page size 50, backfill off" in text
    assert "postgresql+asyncpg://poller:***@db.example.com:5432/poller" in text
    assert "timeout 2.5s, retries after 250ms, 30s, 1h (up to 4 attempts)" in text
    assert "server:      [::1]:9100 (/healthz, /readyz, /metrics; no status page)" in text
    assert "rooms (2):   room-a, room-b" in text
    assert "recordings: https://example.com:443\n" in text
    assert "event types: beam.recording.success; rooms: room-a" in text
    assert "headers: X-Api-Key: ***, X-Env: ***" in text
    assert "audit-log: http://audit.internal:8080\n" in text
    assert "event types: all; rooms: all" in text
    assert f"api network: tls CAs of {tmp_path / 'pki' / 'ca.pem'} only (1 certificate: " in text
    assert "proxy http://proxy.example.com:3128 (from proxy key, with credentials)" in text
    assert f"    tls: CAs of {tmp_path / 'pki' / 'ca.pem'} only (1 certificate: " in text
    assert "    proxy: http://proxy.example.com:3128 (from proxy key)\n" in text
    assert (
        "adaptive:    on: rooms with a live session or one that ended within 1h30m every 1m, "
        "the others every 15m; GET /sessions every 45s" in text
    )
    assert (
        "API budget:  50 requests/s; 2 rooms ask 0.0467/s all idle (0% of it), 0.0778/s all "
        "active (0%), at one page a poll, two GET /sessions listings a walk" in text
    )


def test_describe_does_the_request_arithmetic_against_the_budget(tmp_path: Path) -> None:
    rooms = "".join(f'[[rooms]]\nid = "room-{i:02}"\n' for i in range(60))
    hms = HMS + "max_requests_per_second = 0.5\n"
    text = describe(load(tmp_path, toml(hms=hms, rooms=rooms, tables='[poll]\ninterval = "1m"\n')))

    assert "API budget:  0.5 requests/s; 60 rooms every 1m ask 1/s at one page a poll (200%" in text
    assert "over the budget: polls wait their turn, each room about every 2m" in text


def test_describe_adaptive_arithmetic_all_idle_and_all_active(tmp_path: Path) -> None:
    rooms = "".join(f'[[rooms]]\nid = "room-{i:04}"\n' for i in range(1200))
    tables = '[poll]\nadaptive = true\ninterval = "30s"\nidle_interval = "10m"\n'
    text = describe(load(tmp_path, toml(rooms=rooms, tables=tables)))

    # 1200 / 600 + 2 / 30 idle; 1200 / 30 + 2 / 30 active, against the default 50/s.
    assert "1200 rooms ask 2.07/s all idle (4% of it), 40.1/s all active (80%)" in text
    assert "over the budget" not in text
    text = describe(load(tmp_path, toml(rooms=rooms, tables=tables.replace("30s", "20s"))))
    assert "60.1/s all active (120%)" in text
    assert (
        "over the budget when all are active: polls wait their turn, each room about every 24s"
        in text
    )


def test_adaptive_defaults_to_discovery(tmp_path: Path) -> None:
    assert not load(tmp_path, toml()).poll.adaptive
    assert "adaptive:    off (every room every 30s)" in describe(load(tmp_path, toml()))
    found = load(tmp_path, toml(tables="[discovery]\nenabled = true\n"))
    assert found.poll.adaptive
    assert (found.poll.idle_interval, found.poll.sessions_interval) == (600.0, 30.0)
    off = load(tmp_path, toml(tables="[poll]\nadaptive = false\n[discovery]\nenabled = true\n"))
    assert not off.poll.adaptive
    # A long interval raises the default idle interval with it: never an error by default.
    slow = load(tmp_path, toml(tables='[poll]\ninterval = "1h"\nadaptive = true\n'))
    assert slow.poll.idle_interval == 3600.0
    # Only live sessions count with a window of 0.
    live = load(tmp_path, toml(tables='[poll]\nadaptive = true\nactive_window = "0s"\n'))
    assert live.poll.active_window == 0.0


def test_describe_defaults_and_fixed_token(tmp_path: Path) -> None:
    hms = f'[hms]\nmanagement_token = "{MANAGEMENT_TOKEN}"\n'
    text = describe(load(tmp_path, toml(hms=hms, tables="[delivery]\nretry_schedule = []\n")))

    assert_no_secret(text)
    assert "(fixed management token;" in text
    assert "no retries (1 attempt)" in text
    assert "server:      disabled" in text
    assert "sqlite+aiosqlite:////var/lib/poller/poller.db" in text
    assert "api network: tls system CAs; proxy none\n" in text
    assert "    tls:" not in text
    assert "    proxy:" not in text


def test_describe_shows_a_webhook_url_as_its_origin_only(tmp_path: Path) -> None:
    url = f"https://user:{HEADER_VALUE}@example.com/hook?token={HEADER_VALUE}"
    webhooks = WEBHOOK.replace("https://example.com/hook", url)
    config = load(tmp_path, toml(webhooks=webhooks))

    text = describe(config)

    assert "recordings: https://example.com:443\n" in text
    assert "/hook" not in text
    assert_no_secret(text)
    assert_no_secret(repr(config))
    assert config.webhooks[0].url == url


def test_describe_lists_at_most_ten_rooms(tmp_path: Path) -> None:
    rooms = "".join(f'[[rooms]]\nid = "room-{i:02}"\n' for i in range(13))
    text = describe(load(tmp_path, toml(rooms=rooms)))

    shown = ", ".join(f"room-{i:02}" for i in range(10))
    assert f"rooms (13):  {shown} ... and 3 more" in text
    assert "room-10" not in text


# --- secret rotation -----------------------------------------------------------------------


def test_previous_secrets_sign_alongside_the_current_one_and_are_secrets(
    tmp_path: Path,
) -> None:
    text = toml(webhooks=WEBHOOK + f'previous_secrets = ["{OTHER_WEBHOOK_SECRET}"]\n')
    (webhook,) = load(tmp_path, text).webhooks
    assert [p.reveal() for p in webhook.previous_secrets] == [OTHER_WEBHOOK_SECRET]
    signature = webhook.signing_key.headers("msg", b"{}", timestamp=1)["webhook-signature"]
    current = SigningKey.from_secret(WEBHOOK_SECRET).signature("msg", 1, b"{}")
    previous = SigningKey.from_secret(OTHER_WEBHOOK_SECRET).signature("msg", 1, b"{}")
    assert signature == f"{current} {previous}"
    assert OTHER_WEBHOOK_SECRET in secrets_of(load(tmp_path, text))
    assert OTHER_WEBHOOK_SECRET not in repr(webhook)
    assert "1 previous" in describe(load(tmp_path, text))
    assert OTHER_WEBHOOK_SECRET not in describe(load(tmp_path, text))
    assert load(tmp_path, toml()).webhooks[0].previous_secrets == ()


@pytest.mark.parametrize(
    ("value", "key", "problem"),
    [
        (f'["{OTHER_WEBHOOK_SECRET}", "{BAD_WEBHOOK_SECRET}"]', "previous_secrets[1]", "base64"),
        (f'["{SHORT_WEBHOOK_SECRET}"]', "previous_secrets[0]", "shorter than 16 bytes"),
        (f'"{OTHER_WEBHOOK_SECRET}"', "previous_secrets", "an array of strings"),
    ],
)
def test_a_bad_previous_secret_is_named_by_its_index_and_never_shown(
    tmp_path: Path, value: str, key: str, problem: str
) -> None:
    error = load_error(tmp_path, toml(webhooks=WEBHOOK + f"previous_secrets = {value}\n"))
    assert error.key == f"webhooks[0].{key}"
    assert problem in error.problem
    assert_no_secret(str(error))


def test_every_event_type_the_api_serves_and_extra_ones_are_accepted(tmp_path: Path) -> None:
    types = [*KNOWN_EVENT_TYPES, "room.future.event"]
    config = load(
        tmp_path,
        toml(
            hms=HMS
            + f"event_types = {json.dumps(types)}\n"
            + 'extra_event_types = ["room.future.event"]\n',
            webhooks=WEBHOOK + 'event_types = ["room.future.event", "client.disconnected"]\n',
        ),
    )
    assert config.hms.event_types == tuple(types)
    assert config.hms.extra_event_types == ("room.future.event",)
    (webhook,) = config.webhooks
    assert webhook.event_types == {"room.future.event", "client.disconnected"}


def test_discovery_needs_no_rooms_and_lets_webhooks_name_any_room(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        toml(
            tables='[discovery]\nenabled = true\nname_prefix = "class-"\n'
            'template_ids = ["t1"]\nkeep = "2h"\n',
            rooms="",
            webhooks=WEBHOOK + 'rooms = ["found-later"]\n',
        ),
    )
    assert config.rooms == ()
    assert config.discovery == DiscoveryConfig(
        enabled=True, name_prefix="class-", template_ids=frozenset({"t1"}), keep=7200.0
    )
    assert config.discovery.wants("class-7", "t1")
    assert not config.discovery.wants("lobby", "t1")
    assert not config.discovery.wants("class-7", "t2")
    (webhook,) = config.webhooks
    assert webhook.rooms == {"found-later"}
    text = describe(config)
    assert (
        "discovery:   GET /rooms every 5m: enabled rooms, named 'class-'..., of templates t1; "
        "a room that leaves the listing is polled 2h more" in text
    )
