"""Log set-up: JSON lines, console output, stdlib routing, secret redaction."""

from __future__ import annotations

import io
import json
import logging
import sys
import warnings
from collections.abc import Callable

import pytest
import structlog

from poller import log

pytestmark = pytest.mark.usefixtures("restore_logging")


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_event_level_logger_and_timestamp() -> None:
    out = io.StringIO()
    log.configure("info", "json", stream=out)
    structlog.get_logger("poller.poll").info("poll", room_id="r1", new=2)
    structlog.get_logger("poller.poll").debug("hidden")

    [entry] = lines(out)
    assert entry["event"] == "poll"
    assert entry["level"] == "info"
    assert entry["room_id"] == "r1"
    assert entry["new"] == 2
    assert entry["logger"] == "poller.poll"
    assert str(entry["timestamp"]).endswith("Z")


def test_stdlib_loggers_share_the_renderer_and_chatty_ones_are_quiet() -> None:
    out = io.StringIO()
    log.configure("info", "json", stream=out)
    logging.getLogger("aiohttp.client").warning("connection reset by %s", "peer")
    logging.getLogger("apscheduler.executors.default").info("Running job ...")

    [entry] = lines(out)
    assert entry["event"] == "connection reset by peer"
    assert entry["level"] == "warning"
    assert entry["logger"] == "aiohttp.client"


def test_auto_format_is_json_off_a_tty_and_console_is_readable() -> None:
    out = io.StringIO()
    log.configure("info", "auto", stream=out)
    structlog.get_logger().info("started", rooms=3)
    assert json.loads(out.getvalue())["rooms"] == 3

    out = io.StringIO()
    log.configure("info", "console", stream=out)
    structlog.get_logger().info("started", rooms=3)
    text = out.getvalue()
    assert "started" in text
    assert "rooms=3" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_known_secrets_are_masked_everywhere_in_an_event() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    out = io.StringIO()
    log.configure("info", "json", stream=out, secrets=[secret, "app-secret-value", "short"])
    logger = structlog.get_logger()
    logger.info("oops", detail=f"key={secret}", nested={"a": ["x", "app-secret-value"]})
    logging.getLogger("aiohttp").error("header was %s", secret)

    text = out.getvalue()
    assert secret not in text
    assert "app-secret-value" not in text
    first, second = lines(out)
    assert first["detail"] == "key=***"
    assert first["nested"] == {"a": ["x", "***"]}
    assert second["event"] == "header was ***"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_exceptions_are_rendered_without_local_variables(fmt: str) -> None:
    out = io.StringIO()
    log.configure("info", fmt, stream=out)
    token = "eyJhbGciOiJIUzI1NiJ9.local-variable-token"
    try:
        raise RuntimeError("boom" if token else "")
    except RuntimeError:
        structlog.get_logger("poller.test").exception("failed")
    text = out.getvalue()
    assert "RuntimeError" in text
    assert token not in text
    if fmt == "json":
        [entry] = lines(out)
        assert entry["event"] == "failed"


# --- secrets inside exceptions: rendered after the processors ------------------------------

ODD_SECRET = 'app-sé"cr\\et-0123'  # JSON and repr both escape it
SECRETS = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", ODD_SECRET, "hdr-token-Q1w2e3"]


class LeakyError(Exception):
    """Carries secrets in its message and args, as a driver's or client's error may."""


def raise_leaky() -> None:
    raise LeakyError(f"rejected {SECRETS[0]}", {"header": SECRETS[2], "odd": ODD_SECRET})


def spellings(secret: str) -> set[str]:
    return {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        json.dumps(repr(secret)[1:-1])[1:-1],
    }


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        for spelling in spellings(secret):
            assert spelling not in text, f"{spelling!r} in:\n{text}"


def log_leaky(fmt: str, report: Callable[[LeakyError], None]) -> io.StringIO:
    """Configure logging with SECRETS, raise a LeakyError and let ``report`` log it."""
    out = io.StringIO()
    log.configure("info", fmt, stream=out, secrets=SECRETS)
    try:
        raise_leaky()
    except LeakyError as exc:
        report(exc)
    assert_no_secret(out.getvalue())
    return out


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_secret_in_a_logged_exception_is_masked_in_message_and_traceback(fmt: str) -> None:
    out = log_leaky(fmt, lambda _: structlog.get_logger("poller.test").exception("failed"))

    text = out.getvalue()
    assert "LeakyError" in text
    assert "rejected ***" in text
    assert "raise_leaky" in text  # the traceback is there, only masked
    if fmt == "json":
        [entry] = lines(out)  # still one valid JSON line
        assert entry["event"] == "failed"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_secret_in_a_stdlib_record_and_its_traceback_is_masked(fmt: str) -> None:
    def report(_: LeakyError) -> None:
        logging.getLogger("aiohttp.client").exception("request to %s failed", SECRETS[2])
        logging.getLogger("asyncio").error("Task exception was never retrieved: %r", SECRETS)

    out = log_leaky(fmt, report)

    assert "LeakyError" in out.getvalue()
    assert "request to *** failed" in out.getvalue()
    if fmt == "json":
        assert len(lines(out)) == 2


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_an_uncaught_exception_is_logged_masked_instead_of_printed(fmt: str) -> None:
    out = log_leaky(fmt, lambda exc: sys.excepthook(type(exc), exc, exc.__traceback__))

    assert "uncaught_exception" in out.getvalue()
    assert "rejected ***" in out.getvalue()


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_warning_is_logged_masked_instead_of_printed(fmt: str) -> None:
    out = log_leaky(fmt, lambda _: warnings.warn(f"weak key {SECRETS[0]}", stacklevel=1))

    assert "weak key ***" in out.getvalue()
    assert "py.warnings" in out.getvalue()


def test_a_secret_in_a_value_of_any_type_is_masked() -> None:
    out = io.StringIO()
    log.configure("info", "json", stream=out, secrets=SECRETS)
    structlog.get_logger().info("oops", args=(ODD_SECRET,), exc=LeakyError(SECRETS), n=3)

    assert_no_secret(out.getvalue())
    assert lines(out)[0]["n"] == 3
