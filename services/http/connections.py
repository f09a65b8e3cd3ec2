"""How an HTTP process takes connections: a header timeout, and no more connections than it has descriptors for.

aiohttp's keep-alive timer starts when a connection opens (from 3.14.4) and closes a connection whose request
headers are not all in when it fires: with 10 s it is the header timeout too. aiohttp has no bound on
connections, so the listening socket's protocol factory here wraps aiohttp's and closes a connection beyond
the bound at once; without it, clients holding connections open took every descriptor, and the store's
files and the bus's sockets could no longer be opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

HEADERS_TIMEOUT_S = 10  # also how long an idle keep-alive connection stays open
CONNECTIONS_MAX = 4096
# Descriptors kept for everything but client connections: SQLite files (about four per reading thread), the
# PostgreSQL pools, NATS, pipes, and a backlog's worth of connections accepted before they are refused.
RESERVED_DESCRIPTORS = 256
REFUSALS_LOG_EVERY_S = 10.0
BACKLOG = 128  # what web.run_app passed before


def raise_descriptor_limit() -> int:
    """Raises this process's soft descriptor limit to its hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 16  # "unlimited" is refused as a soft limit
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):  # a sandbox may refuse: keep what we have
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connections_max(descriptor_limit: int) -> int:
    """The connections one process may hold: CONNECTIONS_MAX, or fewer when descriptors are short."""
    if descriptor_limit == resource.RLIM_INFINITY:
        return CONNECTIONS_MAX
    return max(1, min(CONNECTIONS_MAX, max(descriptor_limit - RESERVED_DESCRIPTORS, descriptor_limit // 2)))


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # nothing was read or written: the descriptor goes back at once


class BoundedConnections:
    """The listening socket's protocol factory: aiohttp's handler for each connection, until `limit` are open."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self.server = server
        self.limit = limit
        self._refused = 0
        self._log_after = 0.0

    def __call__(self) -> asyncio.Protocol:
        if len(self.server.connections) < self.limit:
            return self.server()
        self._refused += 1
        now = time.monotonic()
        if now >= self._log_after:  # a line per interval, not per refusal: a flood must not flood the log too
            log.warning("connections_refused", refused=self._refused, limit=self.limit)
            self._refused, self._log_after = 0, now + REFUSALS_LOG_EVERY_S
        return _Refused()


def serve_app(
    app: web.Application,
    *,
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket | None = None,
    host: str | None = None,
    port: int | None = None,
    shutdown_timeout: float,
    **runner_args: Any,
) -> None:
    """web.run_app with the header timeout and the connection bound: the same start-up, signals (SIGINT and
    SIGTERM stop it gracefully) and shutdown. web.run_app makes its runner and sites itself and offers no way
    to put our protocol factory on the socket, so this does what it does with aiohttp's public runner."""
    limit = connections_max(raise_descriptor_limit())
    asyncio.set_event_loop(loop)
    main = loop.create_task(
        _serve(app, limit, sock, host, port, shutdown_timeout=shutdown_timeout, **runner_args),
    )
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            _cancel_remaining(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


async def _serve(
    app: web.Application,
    limit: int,
    sock: socket.socket | None,
    host: str | None,
    port: int | None,
    **runner_args: Any,
) -> None:
    runner = web.AppRunner(app, handle_signals=True, keepalive_timeout=HEADERS_TIMEOUT_S, **runner_args)
    await runner.setup()
    try:
        assert runner.server is not None
        factory = BoundedConnections(runner.server, limit)
        loop = asyncio.get_running_loop()
        if sock is not None:
            listening = await loop.create_server(factory, sock=sock, backlog=BACKLOG)
        else:
            listening = await loop.create_server(factory, host, port, backlog=BACKLOG, reuse_address=True)
        try:
            await asyncio.Event().wait()  # until a signal or the caller stops it
        finally:
            listening.close()  # no new connections; the runner then closes the open ones gracefully
    finally:
        await runner.cleanup()


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
