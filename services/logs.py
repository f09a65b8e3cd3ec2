"""Structured logs: one JSON object per line in production, readable lines in a terminal."""

from __future__ import annotations

import atexit
import contextlib
import logging
import sys
import threading
from typing import IO, Any

import orjson
import structlog

FLUSH_INTERVAL_S = 0.2
BUFFER_BYTES = 1 << 20


class BufferedLineLogger:
    """Writes JSON lines to a binary stream without a flush per line: at thousands of requests a second a
    write syscall per line is a large share of the work. A daemon thread flushes every 0.2 s, and at exit."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        threading.Thread(target=self._flush_forever, name="log-flusher", daemon=True).start()
        atexit.register(self.flush)

    def msg(self, message: bytes) -> None:
        with self._lock:
            self._stream.write(message + b"\n")

    log = debug = info = warn = warning = error = critical = exception = fatal = msg

    def flush(self) -> None:
        with self._lock, contextlib.suppress(ValueError):  # ValueError: closed at interpreter exit
            self._stream.flush()

    def _flush_forever(self) -> None:
        stop = threading.Event()
        while not stop.wait(FLUSH_INTERVAL_S):
            self.flush()


def _stdout_bytes() -> IO[bytes]:
    """Stdout's descriptor with a buffer of our own: stdout's 8 KiB one made a write call every ~30 lines,
    a share of each request at thousands a second (where stdout has no descriptor, its own buffer)."""
    try:
        descriptor = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):
        return sys.stdout.buffer
    sys.stdout.flush()
    return open(descriptor, "wb", buffering=BUFFER_BYTES, closefd=False)


def configure_logging(log_format: str | None, level: str = "info") -> None:
    """JSON when not on a TTY (or when asked), the console renderer otherwise; always to stdout."""
    as_json = log_format == "json" or (log_format is None and not sys.stdout.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if as_json:
        shared = BufferedLineLogger(_stdout_bytes())
        processors.append(structlog.processors.JSONRenderer(serializer=orjson.dumps))
        factory: Any = lambda *args: shared  # noqa: E731
    else:
        processors.append(structlog.dev.ConsoleRenderer())
        factory = structlog.WriteLoggerFactory(sys.stdout)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=factory,
        cache_logger_on_first_use=False,  # so tests can capture logs after configuration
    )
