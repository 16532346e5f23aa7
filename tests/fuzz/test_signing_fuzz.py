"""The signer against the reference ``standardwebhooks`` package, for any body, id and time."""

from __future__ import annotations

import base64
import datetime as dt
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from poller.signing import InvalidSignature, SigningKey

# Standard Webhooks keys are 24 to 64 bytes in practice; poller accepts 16 and up.
KEYS = st.binary(min_size=16, max_size=64)
# Bodies are UTF-8 JSON in poller, and the reference library decodes them as UTF-8.
BODIES = st.text(st.characters(exclude_categories=["Cs"])).map(str.encode)
MSG_IDS = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=80)
# Any instant datetime can hold, for signatures computed without the library's clock check.
ANY_TIME = st.integers(min_value=0, max_value=253402300799)


def secret_of(key: bytes, *, padded: bool) -> str:
    encoded = base64.b64encode(key).decode()
    return "whsec_" + (encoded if padded else encoded.rstrip("="))


@given(key=KEYS, padded=st.booleans(), body=BODIES, msg_id=MSG_IDS, skew=st.integers(-240, 240))
def test_headers_verify_with_the_reference_library(
    key: bytes, padded: bool, body: bytes, msg_id: str, skew: int
) -> None:
    secret = secret_of(key, padded=padded)
    headers = SigningKey.from_secret(secret).headers(msg_id, body, int(time.time()) + skew)
    Webhook(secret).verify(body, headers, json_parse=False)


@given(key=KEYS, body=BODIES, msg_id=MSG_IDS, timestamp=ANY_TIME)
def test_signature_matches_the_reference_library_at_any_time(
    key: bytes, body: bytes, msg_id: str, timestamp: int
) -> None:
    secret = secret_of(key, padded=True)
    ours = SigningKey.from_secret(secret).signature(msg_id, timestamp, body)
    at = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    assert ours == Webhook(secret).sign(msg_id, at, body.decode())


@given(key=KEYS, body=BODIES.filter(bool), msg_id=MSG_IDS, data=st.data())
def test_a_flipped_body_byte_fails_verification(
    key: bytes, body: bytes, msg_id: str, data: st.DataObject
) -> None:
    secret = secret_of(key, padded=True)
    signer = SigningKey.from_secret(secret)
    headers = signer.headers(msg_id, body)
    index = data.draw(st.integers(0, len(body) - 1))
    bit = data.draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]))
    tampered = bytearray(body)
    tampered[index] ^= bit
    # A flip may also break the UTF-8, which the reference library decodes first.
    with pytest.raises((WebhookVerificationError, UnicodeDecodeError)):
        Webhook(secret).verify(bytes(tampered), headers, json_parse=False)
    with pytest.raises(InvalidSignature):
        signer.verify(headers, bytes(tampered))
    assert signer.verify(headers, body) == msg_id


@given(key=KEYS, body=BODIES, msg_id=MSG_IDS, other=MSG_IDS, delta=st.integers(1, 200))
def test_another_id_or_timestamp_fails_verification(
    key: bytes, body: bytes, msg_id: str, other: str, delta: int
) -> None:
    secret = secret_of(key, padded=True)
    headers = SigningKey.from_secret(secret).headers(msg_id, body)
    if other != msg_id:
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(body, {**headers, "webhook-id": other}, json_parse=False)
    moved = str(int(headers["webhook-timestamp"]) - delta)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-timestamp": moved}, json_parse=False)


@given(key=KEYS, wrong=KEYS, body=BODIES, msg_id=MSG_IDS)
def test_another_key_fails_verification(key: bytes, wrong: bytes, body: bytes, msg_id: str) -> None:
    headers = SigningKey.from_secret(secret_of(key, padded=True)).headers(msg_id, body)
    if wrong != key:
        with pytest.raises(WebhookVerificationError):
            Webhook(secret_of(wrong, padded=True)).verify(body, headers, json_parse=False)
