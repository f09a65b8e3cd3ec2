"""`reciprocity serve`: the whole service on its embedded defaults (or one role of it).

The main process answers HTTP. Beside it run the embedded nats-server (unless RECIPROCITY_NATS_URL is set),
the background process (projector, KV writer, relay; services/background.py) and, with
RECIPROCITY_HTTP_WORKERS > 1, extra HTTP processes that accept from the same socket
(services/http_worker.py). None of them outlives serve.
"""

from __future__ import annotations

import errno
import shutil
import socket
import sys

import structlog

from ledger.connections import name_connections
from ledger.schema import SchemaError
from services.background import WatchedProcess
from services.bootstrap import ensure_schemas
from services.http.app import create_app
from services.http_worker import SOCKET_FD_ENV, run_http
from services.listener import ListenError, bound_listener
from services.logs import configure_logging, redact_url
from services.malloc_arenas import bound_malloc_arenas
from services.metrics import forget_process, share_metrics_between_processes
from services.natsserver import EmbeddedNatsServer, NatsServerError
from services.roles import ROLES, http_parts
from services.settings import Settings

log = structlog.get_logger(__name__)


def serve(settings: Settings) -> None:
    bound_malloc_arenas()  # before this process starts a thread, and for every process it starts
    configure_logging(settings.log_format, settings.log_level, settings.role)
    name_connections(settings.role)  # pg_stat_activity tells the roles' connections apart (README, "Connections")
    try:  # before any process starts: a schema this release may not use stops serve here, with the command to run
        ensure_schemas(settings, settings.schema_mode())
    except SchemaError as refused:
        log.error("schema_refused", error=str(refused))
        sys.exit(f"reciprocity: {refused}")
    embedded = None
    if not settings.nats_url:
        embedded = EmbeddedNatsServer(
            settings.data_dir, settings.nats_port, memory_limit_mib=settings.nats_memory_limit_mib,
            jetstream_memory_mib=settings.nats_jetstream_memory_mib,
        )  # fmt: skip
        try:
            settings = settings.with_(nats_url=embedded.start())
        except NatsServerError as failure:
            log.error("nats_not_started", error=str(failure))
            sys.exit(f"reciprocity: {failure}")
    children: list[WatchedProcess] = []
    listener, metrics_dir = None, None
    try:
        if settings.http_workers > 1:
            listener = _listen(settings)
            # Emptied first: files left by a serve killed before it could clean up would add to the counts.
            metrics_dir = settings.data_dir / "metrics"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(mode=0o700, parents=True)  # like the data directory: this user's alone
            share_metrics_between_processes(metrics_dir)  # before any process makes its metrics
        if ROLES[settings.role].background and settings.background_process:
            children.append(WatchedProcess(settings))
        for _ in range(settings.http_workers - 1):
            assert listener is not None
            worker = WatchedProcess(
                settings.with_(http_workers=1),
                "services.http_worker",
                "http_worker",
                pass_fds=(listener.fileno(),),
                env={SOCKET_FD_ENV: str(listener.fileno())},
                on_exit=forget_process,
            )
            children.append(worker)
        for child in children:
            child.start()
        log.info(
            "starting",
            role=settings.role,
            http=f"http://{settings.http_host}:{settings.http_port}",
            http_processes=settings.http_workers,
            store="postgresql" if settings.database_url else f"sqlite under {settings.data_dir}",
            nats=redact_url(settings.nats_url),
        )
        try:
            run_http(
                settings, create_app(settings, parts=http_parts(settings.role, settings.background_process)), listener
            )
        except OSError as failure:
            if failure.errno == errno.EADDRINUSE:
                _port_taken(settings)
            raise
    finally:
        for child in children:
            child.stop()
        if embedded is not None:
            embedded.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _listen(settings: Settings) -> socket.socket:
    """The listening socket that serve and its HTTP workers share (bound once, here, as with one process)."""
    try:
        return bound_listener(settings.http_host, settings.http_port)
    except ListenError as failure:
        if failure.taken:
            _port_taken(settings)
        log.error("cannot_listen", host=settings.http_host, port=settings.http_port, error=str(failure))
        sys.exit(f"reciprocity: {failure} (RECIPROCITY_HTTP_HOST, RECIPROCITY_HTTP_PORT)")


def _port_taken(settings: Settings) -> None:
    log.error("port_in_use", port=settings.http_port, hint="set RECIPROCITY_HTTP_PORT")
    sys.exit(f"reciprocity: port {settings.http_port} on {settings.http_host} is taken")
