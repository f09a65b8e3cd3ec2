"""`reciprocity serve`: the whole service in one process on its embedded defaults (or one role of it)."""

from __future__ import annotations

import errno
import gc
import sys

import structlog
import uvloop
from aiohttp import web

from services.background import BACKGROUND_PARTS, BackgroundProcess
from services.bootstrap import role_parts
from services.http.app import create_app
from services.logs import configure_logging
from services.natsserver import EmbeddedNatsServer, NatsServerError
from services.settings import Settings

log = structlog.get_logger(__name__)


def serve(settings: Settings) -> None:
    configure_logging(settings.log_format, settings.log_level)
    embedded = None
    if not settings.nats_url:
        embedded = EmbeddedNatsServer(settings.data_dir, settings.nats_port)
        try:
            settings = settings.with_(nats_url=embedded.start())
        except NatsServerError as failure:
            log.error("nats_not_started", error=str(failure))
            sys.exit(f"reciprocity: {failure}")
    background = None
    parts = role_parts(settings.role)
    if settings.role == "all" and settings.background_process:
        background = BackgroundProcess(settings)
        background.start()
        parts = parts - BACKGROUND_PARTS
    log.info(
        "starting",
        role=settings.role,
        http=f"http://{settings.http_host}:{settings.http_port}",
        store="postgresql" if settings.database_url else f"sqlite under {settings.data_dir}",
        nats=settings.nats_url,
    )
    app = create_app(settings, parts=parts)
    # What start-up made (modules, contracts, the app) lives as long as the process: out of the collector's
    # sight, a full collection no longer walks it all in the middle of a request (a p99 outlier).
    gc.freeze()
    try:
        web.run_app(
            app,
            host=settings.http_host,
            port=settings.http_port,
            print=None,
            access_log=None,  # our middleware writes one canonical line per request instead
            shutdown_timeout=10,
            loop=uvloop.new_event_loop(),  # a faster event loop; the code is plain asyncio either way
        )
    except OSError as failure:
        if failure.errno == errno.EADDRINUSE:
            log.error("port_in_use", port=settings.http_port, hint="set RECIPROCITY_HTTP_PORT")
            sys.exit(f"reciprocity: port {settings.http_port} on {settings.http_host} is taken")
        raise
    finally:
        if background is not None:
            background.stop()
        if embedded is not None:
            embedded.stop()
