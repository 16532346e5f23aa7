"""Store failures on SQLite and PostgreSQL: one line of the driver's words, nothing it quoted."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import traceback

import pytest
import structlog

from poller import log
from poller.errors import StoreError
from poller.events import Event
from poller.store.db import create_engine, migrate
from poller.store.repo import Store
from tests.storeops import REJECTED, engine_of, reject_events_containing

ROOM = "639924066893d18d47c86935"
# Stands for a presigned recording URL's signature: not a configured secret, so only
# hidden parameters and an unchained error keep it out (the redactor cannot know it).
MARKER = "XAmzSignature7f3a9c"

pytestmark = pytest.mark.usefixtures("restore_logging")


def marked_event() -> Event:
    event_id, kind, timestamp = (
        "f3f18235-058c-432b-b8c2-8344c92743f6",
        "beam.recording.success",
        "2023-01-09T06:18:29.462240675Z",
    )
    url = f"https://s3/x.mp4?X-Amz-Signature={MARKER}"
    body = {"id": event_id, "type": kind, "data": {"recording_presigned_url": url}}
    return Event(event_id, kind, timestamp, ROOM, json.dumps(body, separators=(",", ":")))


async def refused(store: Store) -> StoreError:
    await reject_events_containing(engine_of(store), MARKER)
    with pytest.raises(StoreError) as caught:
        await store.record_page(
            ROOM, [marked_event()], [], deliver=True, now=dt.datetime.now(dt.UTC)
        )
    return caught.value


async def test_a_refused_statement_is_one_line_without_the_row(store: Store) -> None:
    error = await refused(store)

    assert REJECTED in str(error)
    assert "\n" not in str(error)
    assert MARKER not in str(error)
    # Not chained: a rendered traceback would show the driver's error in full.
    assert error.__cause__ is None
    assert error.__suppress_context__
    rendered = "".join(traceback.format_exception(error))
    assert MARKER not in rendered
    assert "record_page" in rendered  # where it failed is still there


@pytest.mark.parametrize("fmt", ["json", "console"])
async def test_a_logged_store_error_shows_no_parameter_nor_detail(store: Store, fmt: str) -> None:
    error = await refused(store)
    out = io.StringIO()
    log.configure("info", fmt, stream=out)

    try:
        raise error
    except StoreError:
        structlog.get_logger("poller.poll").exception("poll_failed", room_id=ROOM)

    text = out.getvalue()
    assert REJECTED in text
    assert MARKER not in text
    assert "[SQL:" not in text
    assert "[parameters:" not in text


@pytest.mark.postgres
async def test_an_argument_the_driver_cannot_encode_is_not_quoted(pg_url: str) -> None:
    engine = create_engine(pg_url)
    try:
        await migrate(engine)
        store = Store(engine, instance_id="test")
        with pytest.raises(StoreError) as caught:
            await store.retry(ids=[2**70], now=dt.datetime.now(dt.UTC))
    finally:
        await engine.dispose()

    message = str(caught.value)
    assert re.search(
        r"invalid input for query argument \$\d+ \(value out of int64 range\)$", message
    )
    assert str(2**70) not in message
