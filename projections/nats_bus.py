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

from contracts.webhook_bodies import FactType
from projections.nats_replicas import ensure_replicas
from projections.nats_servers import parse_servers
from projections.supervision import BACKOFF_MAX_S, Backoff

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
QUERY_ENDPOINTS = ("balance", "pair", "influence", "maintenance", "graph", "ties", "upkeep")
CONNECT_RETRY_S = 1.0
# The workers' JetStream API requests (stream info, the last message, making the stream and buckets). While a
# stream's leader is being elected nothing answers; asking again every 2 s finds the new leader sooner than
# nats-py's default 5 s wait would.
REQUEST_TIMEOUT_S = 2.0
# What ensure_stream sets; a stream whose settings all match is not updated.
STREAM_FIELDS = ("subjects", "retention", "storage", "duplicate_window", "allow_direct", "num_replicas")


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


async def ensure_stream(js: JetStreamContext, duplicate_window_s: float, replicas: int = 1) -> None:
    """The event stream: every fact, unlimited retention, deduplicated by event id within the window, on
    `replicas` servers (or as many as the cluster allows; see ensure_replicas)."""
    config = StreamConfig(
        name=STREAM,
        subjects=[EVENT_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=duplicate_window_s,
        allow_direct=True,
    )

    async def create(count: int) -> None:
        await js.add_stream(config.evolve(num_replicas=count))

    async def update(current: StreamConfig, count: int) -> StreamConfig:
        wanted = config.evolve(num_replicas=count)
        # Only when something differs: an update is a cluster-wide proposal, and the relay comes here at
        # each restart, some of them while a NATS node is down.
        if all(getattr(current, field) == getattr(wanted, field) for field in STREAM_FIELDS):
            return current
        return (await js.update_stream(wanted)).config

    await ensure_replicas(js, STREAM, replicas, create, update)


async def ensure_buckets(js: JetStreamContext, replicas: int = 1) -> None:
    """The view buckets: one value per key (history 1), readable by direct get, on `replicas` servers."""
    for bucket in BUCKETS:

        async def create(count: int, bucket: str = bucket) -> None:
            await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, direct=True, replicas=count))

        async def update(current: StreamConfig, count: int) -> StreamConfig:
            if (current.num_replicas or 1) == count:  # the bucket's other settings are left as they are
                return current
            return (await js.update_stream(current.evolve(num_replicas=count))).config

        await ensure_replicas(js, bucket_stream(bucket), replicas, create, update)


def bucket_stream(bucket: str) -> str:
    """The stream that holds a KV bucket."""
    return f"KV_{bucket}"


async def until_cancelled(step: Callable[[], Awaitable[None]], name: str, pause_s: float = BACKOFF_MAX_S) -> None:
    """Runs a NATS worker loop forever: a failure (NATS down, a timeout) is logged and the loop restarted."""
    while True:
        await until_done(step, name, pause_s)


async def until_done(step: Callable[[], Awaitable[None]], name: str, pause_s: float = BACKOFF_MAX_S) -> None:
    """Runs `step` until it returns once: a failure is logged and retried with backoff, pausing at most
    `pause_s` (the store keeps everything, so waiting for NATS is always right)."""
    backoff = Backoff(max_s=pause_s)
    while True:
        try:
            await step()
            return
        except asyncio.CancelledError:
            raise
        except Exception as failure:
            delay = backoff.next_delay()
            log.warning(
                "nats_worker_retrying", worker=name, error=str(failure) or type(failure).__name__,
                retry_in_s=round(delay, 3),
            )  # fmt: skip
            await asyncio.sleep(delay)
