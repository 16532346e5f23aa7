"""Standard Webhooks signatures, cross-checked against the reference `standardwebhooks` library."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from poller.signing import InvalidSecret, InvalidSignature, SigningKey
from tests.conftest import make_secret

MSG_ID = "f3f18235-058c-432b-b8c2-8344c92743f6"
BODY = json.dumps(
    {
        "version": "2.0",
        "id": MSG_ID,
        "timestamp": "2023-01-09T06:18:29.462240675Z",
        "type": "beam.recording.success",
        "data": {"duration": 33, "room_name": "Café Zürich ☕"},
    },
    separators=(",", ":"),
    ensure_ascii=False,
).encode()

# The Standard Webhooks reference test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def reference_headers(secret: str, msg_id: str, body: bytes, ts: int) -> dict[str, str]:
    """Headers signed by the reference library."""
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body.decode()),
    }


# --- secrets -----------------------------------------------------------------------


def test_secret_with_and_without_prefix_decode_to_the_same_key() -> None:
    secret = make_secret()
    with_prefix = SigningKey.from_secret(secret)
    without = SigningKey.from_secret(secret.removeprefix("whsec_"))
    assert with_prefix == without
    assert with_prefix.key == base64.b64decode(secret.removeprefix("whsec_"))


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("whsec_not base64 at all!!", id="spaces"),
        pytest.param("whsec_@@@@@@@@@@@@@@@@@@@@@@@@", id="bad-alphabet"),
        pytest.param("whsec_" + base64.b64encode(bytes(range(24))).decode()[:-3], id="truncated"),
        pytest.param("whsec_" + base64.b64encode(bytes(range(15))).decode(), id="15-bytes"),
        pytest.param("whsec_" + base64.b64encode(bytes(range(8))).decode(), id="8-bytes"),
        pytest.param("whsec_", id="prefix-only"),
        pytest.param("", id="empty"),
    ],
)
def test_invalid_secret_raises_without_echoing_it(secret: str) -> None:
    with pytest.raises(InvalidSecret) as info:
        SigningKey.from_secret(secret)
    assert isinstance(info.value, ValueError)
    payload = secret.removeprefix("whsec_")
    message = str(info.value)
    assert message
    if payload:
        assert payload not in message
    # Not hidden in a chained exception either (a traceback would print it).
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_sixteen_byte_key_is_the_minimum() -> None:
    key = SigningKey.from_secret("whsec_" + base64.b64encode(bytes(range(16))).decode())
    assert key.key == bytes(range(16))


def test_repr_does_not_show_the_key() -> None:
    secret = make_secret()
    key = SigningKey.from_secret(secret)
    assert secret.removeprefix("whsec_") not in repr(key)
    assert repr(key.key) not in repr(key)


# --- signing -----------------------------------------------------------------------


def test_reference_test_vector() -> None:
    key = SigningKey.from_secret(VECTOR_SECRET)
    assert key.signature(VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIG
    headers = key.headers(VECTOR_ID, VECTOR_BODY, timestamp=VECTOR_TS)
    assert headers == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TS),
        "webhook-signature": VECTOR_SIG,
    }
    assert key.verify(headers, VECTOR_BODY, now=VECTOR_TS + 10) == VECTOR_ID


@pytest.mark.parametrize("strip_prefix", [False, True])
def test_our_signature_verifies_with_standardwebhooks(strip_prefix: bool) -> None:
    secret = make_secret()
    key = SigningKey.from_secret(secret.removeprefix("whsec_") if strip_prefix else secret)
    headers = key.headers(MSG_ID, BODY)
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)
    # The reference library also accepts the bare base64 secret.
    assert Webhook(secret.removeprefix("whsec_")).verify(BODY, headers) == json.loads(BODY)


def test_headers_timestamp_defaults_to_now() -> None:
    key = SigningKey.from_secret(make_secret())
    before = int(time.time())
    headers = key.headers(MSG_ID, BODY)
    after = int(time.time())
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == MSG_ID
    assert before <= int(headers["webhook-timestamp"]) <= after
    assert headers["webhook-signature"].startswith("v1,")
    assert len(base64.b64decode(headers["webhook-signature"][3:], validate=True)) == 32


def test_signature_depends_on_every_part() -> None:
    key = SigningKey.from_secret(make_secret())
    base = key.signature(MSG_ID, 1700000000, BODY)
    assert key.signature(MSG_ID, 1700000000, BODY) == base  # deterministic
    assert key.signature(MSG_ID + "x", 1700000000, BODY) != base
    assert key.signature(MSG_ID, 1700000001, BODY) != base
    assert key.signature(MSG_ID, 1700000000, BODY + b" ") != base
    assert SigningKey.from_secret(make_secret()).signature(MSG_ID, 1700000000, BODY) != base


def test_tampered_request_fails_standardwebhooks() -> None:
    secret = make_secret()
    headers = SigningKey.from_secret(secret).headers(MSG_ID, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"33", b"34"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(make_secret()).verify(BODY, headers)


# --- verifying ---------------------------------------------------------------------


@pytest.mark.parametrize("strip_prefix", [False, True])
def test_standardwebhooks_signature_verifies_with_ours(strip_prefix: bool) -> None:
    secret = make_secret()
    ts = int(time.time())
    headers = reference_headers(secret, MSG_ID, BODY, ts)
    key = SigningKey.from_secret(secret.removeprefix("whsec_") if strip_prefix else secret)
    assert key.verify(headers, BODY) == MSG_ID


def test_verify_ignores_header_name_case() -> None:
    secret = make_secret()
    headers = reference_headers(secret, MSG_ID, BODY, int(time.time()))
    mixed = {name.title(): value for name, value in headers.items()}
    assert SigningKey.from_secret(secret).verify(mixed, BODY) == MSG_ID


@pytest.mark.parametrize("part", ["body", "id", "timestamp", "signature"])
def test_tampered_request_is_rejected(part: str) -> None:
    secret = make_secret()
    ts = int(time.time())
    headers = reference_headers(secret, MSG_ID, BODY, ts)
    body = BODY
    if part == "body":
        body = BODY.replace(b'"duration":33', b'"duration":34')
        assert body != BODY
    elif part == "id":
        headers["webhook-id"] = MSG_ID[:-1] + "0"
    elif part == "timestamp":
        headers["webhook-timestamp"] = str(ts - 1)
    else:
        sig = bytearray(base64.b64decode(headers["webhook-signature"][3:]))
        sig[0] ^= 1
        headers["webhook-signature"] = "v1," + base64.b64encode(bytes(sig)).decode()
    with pytest.raises(InvalidSignature):
        SigningKey.from_secret(secret).verify(headers, body)


def test_wrong_key_is_rejected() -> None:
    headers = reference_headers(make_secret(), MSG_ID, BODY, int(time.time()))
    with pytest.raises(InvalidSignature):
        SigningKey.from_secret(make_secret()).verify(headers, BODY)


@pytest.mark.parametrize(
    "drop_or_break",
    [
        {"drop": "webhook-id"},
        {"drop": "webhook-timestamp"},
        {"drop": "webhook-signature"},
        {"webhook-timestamp": "yesterday"},
        {"webhook-timestamp": ""},
        {"webhook-signature": ""},
        {"webhook-signature": "v2," + "A" * 44},
    ],
)
def test_missing_or_malformed_headers_are_rejected(drop_or_break: dict[str, str]) -> None:
    secret = make_secret()
    headers = reference_headers(secret, MSG_ID, BODY, int(time.time()))
    if "drop" in drop_or_break:
        del headers[drop_or_break["drop"]]
    else:
        headers.update(drop_or_break)
    with pytest.raises(InvalidSignature):
        SigningKey.from_secret(secret).verify(headers, BODY)


def test_tolerance() -> None:
    secret = make_secret()
    key = SigningKey.from_secret(secret)
    ts = 1_700_000_000
    headers = reference_headers(secret, MSG_ID, BODY, ts)
    # Default: five minutes either way, inclusive.
    assert key.verify(headers, BODY, now=ts + 300) == MSG_ID
    assert key.verify(headers, BODY, now=ts - 300) == MSG_ID
    with pytest.raises(InvalidSignature, match="tolerance"):
        key.verify(headers, BODY, now=ts + 301)
    with pytest.raises(InvalidSignature, match="tolerance"):
        key.verify(headers, BODY, now=ts - 301)
    # A custom tolerance.
    assert key.verify(headers, BODY, tolerance=10, now=ts + 10) == MSG_ID
    with pytest.raises(InvalidSignature):
        key.verify(headers, BODY, tolerance=10, now=ts + 11)
    with pytest.raises(InvalidSignature):
        key.verify(headers, BODY, tolerance=10, now=ts - 11)


def test_stale_signature_is_rejected_against_the_clock() -> None:
    secret = make_secret()
    headers = reference_headers(secret, MSG_ID, BODY, int(time.time()) - 3600)
    with pytest.raises(InvalidSignature):
        SigningKey.from_secret(secret).verify(headers, BODY)


def test_multiple_space_separated_signatures() -> None:
    secret = make_secret()
    ts = int(time.time())
    good = reference_headers(secret, MSG_ID, BODY, ts)["webhook-signature"]
    rotated_out = reference_headers(make_secret(), MSG_ID, BODY, ts)["webhook-signature"]
    key = SigningKey.from_secret(secret)
    base = {"webhook-id": MSG_ID, "webhook-timestamp": str(ts)}
    for signatures in (f"{rotated_out} {good}", f"{good} {rotated_out}", f"v1a,xyz {good}"):
        headers = {**base, "webhook-signature": signatures}
        assert key.verify(headers, BODY) == MSG_ID
        # The reference library agrees on the header format.
        assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)
    with pytest.raises(InvalidSignature):
        key.verify({**base, "webhook-signature": f"{rotated_out} {rotated_out}"}, BODY)
