"""Structured logs: one JSON object per line in production, readable lines in a terminal."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import select
import sys
import threading
from typing import IO, Any

import orjson
import structlog

FLUSH_INTERVAL_S = 0.2
BUFFER_BYTES = 1 << 20  # lines held at most between flushes

# A URL's user information: `user:password@`, or a lone `token@` (NATS takes a token so). The password runs
# to the last @ before the next URL or space, so one with an unescaped / or @ is hidden whole.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s:/?#@]*)(?P<password>:(?:(?!://)\S)*)?@")
_SECRET_PARAMETER = re.compile(r"(?i)(?P<name>[?&;][^=&#\s]*(?:password|passwd|pwd|secret|token)[^=&#\s]*=)[^&#\s]*")


def redact_url(text: str | None) -> str | None:
    """`text` with the credentials of every URL in it replaced by ***: `nats://user:***@host`, `?password=***`."""
    if not text:
        return text
    text = _USERINFO.sub(_hide_userinfo, text)
    return _SECRET_PARAMETER.sub(r"\g<name>***", text)


def _hide_userinfo(found: re.Match[str]) -> str:
    if found["password"] is None:
        return f"{found['scheme']}***@"
    return f"{found['scheme']}{found['user']}:***@"


_CONTAINERS = (list, tuple, dict)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        # Most values hold no URL at all: two substring checks, and only those that might are rewritten.
        return redact_url(value) if "://" in value and ("@" in value or "=" in value) else value
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, _CONTAINERS):
        with contextlib.suppress(TypeError):  # strings only (a batch's event ids): one scan in C, not one a string
            if "://" not in "".join(value):
                return value
        return [_redacted(item) for item in value]
    return value


def redact_credentials(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: no URL credentials in any value, the message and a formatted traceback included
    (an error quoting a connection URL must not leak its password). Values are replaced in place: it runs for
    every request line."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            if "://" in value and ("@" in value or "=" in value):
                event_dict[key] = redact_url(value)
        elif isinstance(value, _CONTAINERS):
            event_dict[key] = _redacted(value)
    return event_dict


class BufferedLineLogger:
    """Writes JSON lines to a binary stream without a write per line: at thousands of requests a second a
    write syscall per line is a large share of the work. A daemon thread flushes every 0.2 s, and at exit.

    Several of serve's processes write to one stdout (HTTP workers, the background process). A pipe keeps a
    write of at most PIPE_BUF bytes whole, so each write holds whole lines and at most that much: lines of
    two processes never cut into each other (a longer line goes alone)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lines: list[bytes] = []
        self._size = 0
        self._lock = threading.Lock()  # guards the lines; held for an append or a swap only
        self._writing = threading.Lock()  # one flush writes at a time, so lines go out in order
        threading.Thread(target=self._flush_forever, name="log-flusher", daemon=True).start()
        atexit.register(self.flush)

    def msg(self, message: bytes) -> None:
        with self._lock:
            self._lines.append(message)
            self._size += len(message) + 1
            full = self._size >= BUFFER_BYTES
        if full:
            self.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg

    def flush(self) -> None:
        """Writes the lines held so far. The writes happen outside the lock that `msg` takes: a flush of a
        fifth of a second's lines is dozens of writes, and the event loop logging meanwhile must not wait
        for them: every request logged during a flush would be held up."""
        with self._writing:
            with self._lock:
                lines, self._lines, self._size = self._lines, [], 0
            with contextlib.suppress(ValueError):  # ValueError: closed at interpreter exit
                self._write_lines(lines)

    def _write_lines(self, lines: list[bytes]) -> None:
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) + 1 > select.PIPE_BUF:
                self._write(b"\n".join(chunk) + b"\n")
                chunk, size = [], 0
            chunk.append(line)
            size += len(line) + 1
        if chunk:
            self._write(b"\n".join(chunk) + b"\n")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._stream.write(view)
            view = view[written if written is not None else len(view) :]
        self._stream.flush()

    def _flush_forever(self) -> None:
        stop = threading.Event()
        while not stop.wait(FLUSH_INTERVAL_S):
            self.flush()


def _bytes_of(stream: IO[str]) -> IO[bytes]:
    """The stream's descriptor, unbuffered: BufferedLineLogger decides what each write holds (where the
    stream has no descriptor, its own buffer)."""
    try:
        descriptor = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return stream.buffer  # type: ignore[attr-defined,no-any-return]
    stream.flush()
    return open(descriptor, "wb", buffering=0, closefd=False)


def process_fields(role: str) -> Any:
    """structlog processor: every line says which role and which process wrote it (serve's processes, and
    the pods of a role, write to one place). The pid is taken once: every process of ours configures its
    logging when it starts (none forks after)."""
    pid = os.getpid()

    def add(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        event_dict["role"] = role
        event_dict["pid"] = pid
        return event_dict

    return add


def configure_logging(
    log_format: str | None, level: str = "info", role: str = "all", stream: IO[str] | None = None
) -> None:
    """JSON when not on a TTY (or when asked), the console renderer otherwise; to stdout (an admin command,
    whose stdout is its answer, gives stderr). `role` is the service's role, or the command's name."""
    stream = stream or sys.stdout
    as_json = log_format == "json" or (log_format is None and not stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        process_fields(role),
        structlog.processors.format_exc_info,
        redact_credentials,  # after format_exc_info, so a traceback is redacted too
    ]
    if as_json:
        shared = BufferedLineLogger(_bytes_of(stream))
        processors.append(structlog.processors.JSONRenderer(serializer=orjson.dumps))
        factory: Any = lambda *args: shared  # noqa: E731
    else:
        processors.append(structlog.dev.ConsoleRenderer())
        factory = structlog.WriteLoggerFactory(stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=factory,
        cache_logger_on_first_use=False,  # so tests can capture logs after configuration
    )
