"""structlog set-up: JSON lines off a TTY, console on one; stdlib loggers share the renderer."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

from poller.config import Config
from poller.redaction import Redactor, secrets_of

# Loggers that speak at INFO about their own plumbing (every job run, every
# SQL statement, every access) would drown the poll and delivery events.
_CHATTY = ("apscheduler", "sqlalchemy.engine", "aiohttp.access", "alembic.runtime.migration")
# APScheduler warns once per skipped or late run: under overload that was a line per
# room per interval. poller.schedule.Lateness reports it instead, once per interval.
_LATENESS_LOGGERS = ("apscheduler.scheduler", "apscheduler.executors")


def configure_logs(config: Config) -> None:
    """Configure logging as ``config`` says, masking every secret it holds."""
    configure(config.log.level, config.log.format, secrets=secrets_of(config))


def configure(
    level: str = "info",
    fmt: str = "auto",
    *,
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Route structlog and stdlib logging through one renderer on ``stream``."""
    out = sys.stderr if stream is None else stream
    levelno = logging.getLevelNamesMapping()[level.upper()]
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    redact = Redactor(secrets)
    renderer: Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer()
        # Frames' local variables may hold tokens or secrets: never render them.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        tail: list[Processor] = [tracebacks, renderer]
    else:
        tail = [
            structlog.dev.ConsoleRenderer(
                colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
            )
        ]
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        _RedactingFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=shared,
                processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
            ),
            redact,
        )
    )
    # Why: our own events (one per poll and per delivery attempt) are rendered by the
    # same processors but written straight to the stream, not through a stdlib
    # LogRecord, handler and formatter: that detour was about a sixth of the CPU of
    # a poll (BENCHMARKS.md). Stdlib loggers still go through ``handler``.
    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(levelno),
        logger_factory=_LineLoggerFactory(handler, out, redact),
        # Why: otherwise every call through a module's lazy logger assembles a new
        # logger first (a few percent of a delivery). The daemon configures logging
        # once, before it builds anything.
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(levelno)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(levelno, logging.WARNING))
    for name in _LATENESS_LOGGERS:
        logging.getLogger(name).setLevel(max(levelno, logging.ERROR))
    # Why: Python writes an uncaught exception's traceback and a warning straight to
    # stderr, past the redactor (and as lines that are not JSON); either can quote a
    # secret as well as a log line can.
    sys.excepthook = _log_uncaught
    logging.captureWarnings(True)


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("poller").critical("uncaught_exception", exc_info=(kind, exc, tb))


class _RedactingFormatter(logging.Formatter):
    """Redacts what another formatter rendered: stdlib records, their tracebacks included."""

    def __init__(self, inner: logging.Formatter, redact: Callable[[str], str]) -> None:
        super().__init__()
        self._inner = inner
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(self._inner.format(record))


class _LineLogger:
    """structlog's final logger: one rendered event, one line, under the handler's lock
    (stdlib records from other threads share the stream)."""

    __slots__ = ("_handler", "_redact", "_stream", "name")

    def __init__(
        self, name: str, handler: logging.Handler, stream: TextIO, redact: Callable[[str], str]
    ) -> None:
        self.name = name  # for add_logger_name
        self._handler = handler
        self._stream = stream
        self._redact = redact

    def msg(self, message: str) -> None:
        # Redacted here, once rendered: the exception and its traceback are part of it.
        line = self._redact(message)
        # As with logging.Handler, a broken or closed stream never fails the caller.
        with (
            self._handler.lock or contextlib.nullcontext(),
            contextlib.suppress(OSError, ValueError),
        ):
            self._stream.write(line + "\n")
            self._stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _LineLoggerFactory:
    def __init__(
        self, handler: logging.Handler, stream: TextIO, redact: Callable[[str], str]
    ) -> None:
        self._handler = handler
        self._stream = stream
        self._redact = redact

    def __call__(self, *args: Any) -> _LineLogger:
        name = args[0] if args and isinstance(args[0], str) else _caller_module()
        return _LineLogger(name, self._handler, self._stream, self._redact)


def _caller_module() -> str:
    """The module that asked for an unnamed logger, as stdlib's LoggerFactory names it."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        ("structlog", __name__)
    ):
        frame = frame.f_back
    return str(frame.f_globals.get("__name__", "root"))
