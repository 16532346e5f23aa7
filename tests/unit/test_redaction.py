"""Redaction: URL origins and secret parts, a secret's rendered spellings, a config's secrets."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import tomli_w
import yarl

from poller.config import identifier_hint, load_config, url_origin, url_secrets
from poller.redaction import Redactor, redactor_of, secrets_of

# --- url_origin ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://example.com/hooks/100ms", "https://example.com:443"),
        ("http://Example.COM/x", "http://example.com:80"),
        (
            "https://user:pass@hooks.example.com:8443/a/b?token=t#f",
            "https://hooks.example.com:8443",
        ),
        ("http://[::1]:9000/hooks", "http://[::1]:9000"),
        ("https://api.100ms.live/v2", "https://api.100ms.live:443"),
        ("http://host:99999/", "<invalid URL>"),
    ],
)
def test_url_origin_is_scheme_host_and_port_only(url: str, origin: str) -> None:
    assert url_origin(url) == origin


# --- url_secrets --------------------------------------------------------------------------

TOKEN_URL = (
    "https://hook-user:hook-pass-9f3Q@hooks.example.com:8443"
    "/api/webhooks/123456789/tok-EN_9x8Yz%7E%C3%A9?key=query-value-77&flag#frag-ment-5"
)


def test_url_secrets_are_userinfo_token_segments_query_values_and_fragment() -> None:
    found = url_secrets(TOKEN_URL)

    assert {"hook-user", "hook-pass-9f3Q", "123456789", "query-value-77", "frag-ment-5"} <= found
    assert "tok-EN_9x8Yz%7E%C3%A9" in found  # as written
    assert "tok-EN_9x8Yz~é" in found  # percent-decoded
    assert "flag" in found  # a bare query item may be a token too


def test_route_words_and_the_origin_are_not_secrets() -> None:
    found = url_secrets(TOKEN_URL)

    # Masking these would blot out the words wherever they appear in a log line.
    assert not found & {"api", "webhooks", "hooks.example.com", "https", "8443", "key"}


@pytest.mark.parametrize(
    "rendering",
    [
        pytest.param(lambda u: u, id="as configured"),
        pytest.param(lambda u: str(yarl.URL(u)), id="yarl"),
        pytest.param(lambda u: str(yarl.URL(u, encoded=True)), id="yarl encoded"),
        pytest.param(lambda u: repr(yarl.URL(u)), id="yarl repr"),
        pytest.param(lambda u: yarl.URL(u).human_repr(), id="yarl human"),
        pytest.param(lambda u: json.dumps(yarl.URL(u).human_repr()), id="json of yarl human"),
    ],
)
def test_a_url_as_aiohttp_renders_it_is_masked_down_to_its_origin_and_route(
    rendering: Callable[[str], str],
) -> None:
    redact = Redactor(url_secrets(TOKEN_URL))

    shown = redact(f"Cannot connect to {rendering(TOKEN_URL)}: refused")

    for part in ("hook-pass", "tok-EN", "9x8Yz", "query-value", "frag-ment", "123456789"):
        assert part not in shown, shown
    assert "hooks.example.com:8443" in shown
    assert "/api/webhooks/" in shown


def test_identifier_hint_shows_at_most_four_characters() -> None:
    assert identifier_hint("63bbb18fac740d9e9da5b4e9") == "63bb***"
    assert identifier_hint("ak-1") == "ak***"  # never more than half of a short one
    assert identifier_hint("") == "***"


# --- Redactor -----------------------------------------------------------------------------

ODD_SECRET = "sé\"cr\\et'-\u2603-\x07"


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(ODD_SECRET, id="raw"),
        pytest.param(json.dumps(ODD_SECRET)[1:-1], id="json"),
        pytest.param(json.dumps(ODD_SECRET, ensure_ascii=False)[1:-1], id="json-utf8"),
        pytest.param(repr(ODD_SECRET)[1:-1], id="repr"),
        pytest.param(repr((ODD_SECRET,)), id="repr-in-tuple"),
        pytest.param(repr({"k": ODD_SECRET}), id="repr-in-dict"),
        pytest.param(json.dumps(repr(ODD_SECRET))[1:-1], id="json-of-repr"),
        pytest.param(json.dumps({"exc": str(ValueError(ODD_SECRET, 1))}), id="json-of-exc-args"),
    ],
)
def test_every_rendered_spelling_of_a_secret_is_masked(spelling: str) -> None:
    shown = Redactor([ODD_SECRET])(f"before {spelling} after")

    assert "cr" not in shown.replace("before", "").replace("after", ""), shown
    assert "***" in shown
    assert shown.startswith("before ")
    assert shown.endswith(" after")


def test_masking_keeps_a_json_line_valid() -> None:
    line = json.dumps({"event": "x", "detail": f"key={ODD_SECRET}", "n": [ODD_SECRET]})

    assert json.loads(Redactor([ODD_SECRET])(line)) == {
        "event": "x",
        "detail": "key=***",
        "n": ["***"],
    }


def test_the_longer_of_two_overlapping_secrets_wins() -> None:
    redact = Redactor(["abcdef", "abcdefghij"])

    assert redact("x abcdefghij y abcdef") == "x *** y ***"


def test_short_values_and_no_secrets_leave_lines_alone() -> None:
    assert Redactor(["short", ""])("a short line") == "a short line"
    assert Redactor([])("anything") == "anything"


# --- secrets_of ---------------------------------------------------------------------------

WEBHOOK_KEY = b"\x00\x01webhook-signing-key-bytes\xff\xfe"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()
APP_SECRET = "app-secret-Zq8sT1vW"
MANAGEMENT_TOKEN = "mgmt-token-Xy7QrR2e"
ACCESS_KEY = "63bbb18fac740d9e9da5b4e9"
HEADER_TOKEN = "hdr-token-K9pLm3"
DB_PASSWORD = "db-pass/Wq4&x"
URL_TOKEN = "UrlTok3n-Abc"


def write(tmp_path: Path, hms: dict[str, str], url: str) -> Path:
    path = tmp_path / "config.toml"
    tables = {
        "hms": hms,
        "store": {"url": url},
        "rooms": [{"id": "room-a"}],
        "webhooks": [
            {
                "name": "recordings",
                "url": f"https://u:pw-{URL_TOKEN}@hooks.example.com/api/webhooks/{URL_TOKEN}",
                "secret": WEBHOOK_SECRET,
                "headers": {"X-Api-Key": HEADER_TOKEN},
            }
        ],
    }
    path.write_text(tomli_w.dumps(tables))
    return path


@pytest.fixture
def minted(tmp_path: Path) -> Path:
    pg = f"postgresql+asyncpg://poller:{DB_PASSWORD.replace('/', '%2F').replace('&', '%26')}@db/p"
    return write(tmp_path, {"access_key": ACCESS_KEY, "app_secret": APP_SECRET}, pg)


def test_secrets_of_holds_every_configured_secret_in_each_spelling(minted: Path) -> None:
    found = set(secrets_of(load_config(minted, {})))

    assert {WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_")} <= found
    assert {WEBHOOK_KEY.hex(), WEBHOOK_KEY.decode("latin-1"), repr(WEBHOOK_KEY)[2:-1]} <= found
    assert {APP_SECRET, ACCESS_KEY, HEADER_TOKEN, URL_TOKEN, f"pw-{URL_TOKEN}"} <= found
    assert {DB_PASSWORD, "db-pass%2FWq4%26x"} <= found


def test_secrets_of_keeps_out_what_the_config_names_in_logs(minted: Path) -> None:
    found = set(secrets_of(load_config(minted, {})))

    assert not found & {"recordings", "room-a", "beam.recording.success", "webhooks"}


def test_secrets_of_a_fixed_management_token(tmp_path: Path) -> None:
    path = write(tmp_path, {"management_token": MANAGEMENT_TOKEN}, "sqlite+aiosqlite:///p.db")

    assert MANAGEMENT_TOKEN in secrets_of(load_config(path, {}))


def test_redactor_of_a_config_masks_a_line_quoting_all_of_them(minted: Path) -> None:
    config = load_config(minted, {})
    webhook = config.webhooks[0]
    line = json.dumps(
        {
            "a": [APP_SECRET, ACCESS_KEY, HEADER_TOKEN, DB_PASSWORD, WEBHOOK_SECRET],
            "key": repr(WEBHOOK_KEY),
            "url": str(yarl.URL(webhook.url)),
        }
    )

    shown = redactor_of(config)(line)

    for secret in (APP_SECRET, ACCESS_KEY, HEADER_TOKEN, DB_PASSWORD, URL_TOKEN, "webhook-signing"):
        assert secret not in shown
    assert "hooks.example.com" in shown
