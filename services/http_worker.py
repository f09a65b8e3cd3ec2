"""An extra HTTP process of `reciprocity serve` (RECIPROCITY_HTTP_WORKERS > 1).

One interpreter answers HTTP on one core at most, and under a read load serve's other processes leave the
other cores mostly idle. So serve binds the listening socket once and hands it to these
workers, which accept connections from the same socket and answer ingest and queries exactly as serve's
own HTTP does: the same store, the same views, the same NATS. Their Prometheus metrics go to a directory
serve shares with them, so any of them answers /metrics for all (services/metrics.py).

    python -m services.http_worker    # started by serve, with its environment and RECIPROCITY_HTTP_SOCKET_FD
"""

from __future__ import annotations

import gc
import os
import socket

import uvloop
from aiohttp import web

from ledger.connections import name_connections
from services.http.app import create_app
from services.http.connections import serve_app
from services.logs import configure_logging
from services.roles import http_parts
from services.settings import Settings

SOCKET_FD_ENV = "RECIPROCITY_HTTP_SOCKET_FD"


def run_http(settings: Settings, app: web.Application, listener: socket.socket | None) -> None:
    """serve's and the workers' HTTP loop: on the shared socket when there is one."""
    # What start-up made (modules, contracts, the app) lives as long as the process: out of the collector's
    # sight, a full collection no longer walks it all in the middle of a request.
    gc.freeze()
    address = {"sock": listener} if listener else {"host": settings.http_host, "port": settings.http_port}
    serve_app(  # web.run_app, with a header timeout and a bound on connections
        app,
        **address,
        access_log=None,  # our middleware writes one canonical line per request instead
        shutdown_timeout=10,
        loop=uvloop.new_event_loop(),  # a faster event loop; the code is plain asyncio either way
    )


def main() -> None:
    settings = Settings.from_env(os.environ)
    configure_logging(settings.log_format, settings.log_level, settings.role)
    name_connections(f"{settings.role}-http")
    listener = socket.socket(fileno=int(os.environ[SOCKET_FD_ENV]))
    run_http(settings, create_app(settings, parts=http_parts(settings.role, settings.background_process)), listener)


if __name__ == "__main__":
    main()
