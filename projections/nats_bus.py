"""NATS names (DESIGN section 5: they are the contract), the connection, the stream and the KV buckets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from contracts.webhook_bodies import FactType
from projections.nats_servers import parse_servers

log = structlog.get_logger(__name__)

STREAM = "RECIPROCITY_EVENTS"
EVENT_SUBJECTS = "reciprocity.events.>"
POSITION_HEADER = "Reciprocity-Position"
# The tokens of everyone a message's fact concerns, space-separated: subscribers index their copies by them,
# and erase those copies when a participant_erased message names the token (DESIGN section 7).
PARTICIPANTS_HEADER = "Reciprocity-Participants"
MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_LAST_MSG_ID_HEADER = "Nats-Expected-Last-Msg-Id"
EXPECTED_LAST_SEQUENCE_HEADER = "Nats-Expected-Last-Sequence"
BUCKET_BALANCES = "reciprocity_balances"
BUCKET_PAIRS = "reciprocity_pairs"
BUCKET_INFLUENCE = "reciprocity_influence"
BUCKETS = (BUCKET_BALANCES, BUCKET_PAIRS, BUCKET_INFLUENCE)
SERVICE_NAME = "reciprocity"
QUERY_ENDPOINTS = ("balance", "pair", "influence", "maintenance")
CONNECT_RETRY_S = 1.0


def event_subject(tenant: str, fact_type: FactType) -> str:
    """`reciprocity.events.{tenant}.{type}`, the type's dot made an underscore (a token per part)."""
    return f"reciprocity.events.{tenant}.{fact_type.replace('.', '_')}"


async def open_client(url: str, name: str, *, creds: Path | None = None, **options: Any) -> Client:
    """The one way to connect: to the servers `url` names (comma-separated), with the credentials handed to
    the client on their own (the URLs' user and password, or the creds file), so that failing over to
    another or a discovered server still authenticates. One attempt over the servers; `options` go to
    nats.connect."""
    return await nats.connect(
        name=name,
        user_credentials=str(creds) if creds else None,
        **parse_servers(url).client_options(),
        **options,
    )


async def connect(
    url: str, name: str, on_state: Callable[[bool], None] = lambda up: None, creds: Path | None = None
) -> Client:
    """Connects, retrying until a server answers; afterwards the client reconnects by itself, to any server
    of the list or of the cluster."""

    async def disconnected() -> None:
        on_state(False)
        log.warning("nats_disconnected", connection=name)

    async def reconnected() -> None:
        on_state(True)
        log.info("nats_reconnected", connection=name)

    async def error(failure: Exception) -> None:
        log.warning("nats_error", connection=name, error=str(failure))

    while True:
        try:
            client = await open_client(
                url,
                name,
                creds=creds,
                max_reconnect_attempts=-1,  # the store keeps everything: waiting for NATS is always right
                reconnect_time_wait=0.5,
                connect_timeout=2,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
            )
        except (TimeoutError, OSError, nats.errors.Error) as failure:
            # The log processor takes any password out of the URL (services/logs.py).
            log.warning("nats_unreachable", connection=name, url=url, error=str(failure) or type(failure).__name__)
            await asyncio.sleep(CONNECT_RETRY_S)
            continue
        on_state(True)
        return client


async def ensure_stream(js: JetStreamContext, duplicate_window_s: float) -> None:
    """The event stream: every fact, unlimited retention, deduplicated by event id within the window."""
    config = StreamConfig(
        name=STREAM,
        subjects=[EVENT_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=duplicate_window_s,
        allow_direct=True,
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


async def ensure_buckets(js: JetStreamContext) -> None:
    """The view buckets: one value per key (history 1), readable by direct get."""
    for bucket in BUCKETS:
        try:
            await js.key_value(bucket)
        except (NotFoundError, BadRequestError):
            await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, direct=True))


async def until_cancelled(step: Callable[[], Awaitable[None]], name: str, pause_s: float = 1.0) -> None:
    """Runs a NATS worker loop forever: a failure (NATS down, a timeout) is logged and the loop restarted."""
    while True:
        await until_done(step, name, pause_s)


async def until_done(step: Callable[[], Awaitable[None]], name: str, pause_s: float = 1.0) -> None:
    """Runs `step` until it returns once: a failure is logged and retried (the store keeps everything, so
    waiting for NATS is always right)."""
    while True:
        try:
            await step()
            return
        except asyncio.CancelledError:
            raise
        except Exception as failure:
            log.warning("nats_worker_retrying", worker=name, error=str(failure) or type(failure).__name__)
            await asyncio.sleep(pause_s)
