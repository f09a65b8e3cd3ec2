"""What one service process does on NATS: relay the log to the stream, write the views to KV, answer the
micro service's queries. All of it waits for NATS in the background; ingest never does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext

from ledger.locks import WorkerLock
from ledger.store import Ledger
from projections.kv import KvWriter
from projections.nats_bus import (
    BUCKETS,
    REQUEST_TIMEOUT_S,
    connect,
    ensure_buckets,
    ensure_stream,
    until_cancelled,
    until_done,
)
from projections.relay import RETRY_MAX_S, Relay
from projections.runtime import Projections
from projections.supervision import BackgroundTasks, in_thread, run_while_holding
from services.metrics import Metrics
from services.micro import QueryService
from services.settings import Settings

log = structlog.get_logger(__name__)

DRAIN_TIMEOUT_S = 5.0


class BusWorkers:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        projections: Projections,
        metrics: Metrics,
        *,
        relay: bool = True,
        query: bool = True,
        kv: bool = True,
        poll_s: float = 0.5,
    ) -> None:
        assert settings.nats_url, "the bus needs a NATS URL (serve starts an embedded server when none is set)"
        self.settings = settings
        self.projections = projections
        self.metrics = metrics
        self.relay = Relay(ledger, on_position=self._relayed, poll_s=poll_s) if relay else None
        self.relay_lock = WorkerLock(settings.database_url, settings.data_dir, "relay", settings.connection_limits())
        self.query = query
        self.connected = False
        self.relaying = False  # this process holds the relay lock
        self.relay_wakeup = asyncio.Event()
        self.kv_wakeups = {bucket: asyncio.Event() for bucket in BUCKETS}
        self.client: Client | None = None
        self.prepared = asyncio.Event()  # the stream and buckets exist
        self.background = BackgroundTasks()
        self.kv_writer: KvWriter | None = None  # in a process that may project (its lag is a metric)
        if kv:  # the KV writer follows the projector: it runs in whichever process projects, while it does
            store = projections.store
            self.kv_writer = KvWriter(store, projections.influence, projections.influence_position)
            projections.page_observers.append(self.kv_writer.offer)
            projections.page_listeners.extend(wakeup.set for wakeup in self.kv_wakeups.values())
            projections.while_projecting.append(("kv", self._write_kv))

    def wake(self) -> None:
        """After a commit to the store: publish now, not at the next poll. (The KV writers follow the views,
        not the log: the projector wakes them after each page and each recompute.)"""
        self.relay_wakeup.set()

    def _relayed(self, position: int) -> None:
        self.metrics.relay_position.set(position)
        self.projections.record_relay_position(position)

    def _set_relaying(self, active: bool) -> None:
        self.relaying = active

    def _state(self, up: bool) -> None:
        self.connected = up
        self.metrics.nats_connected.set(1 if up else 0)

    async def start(self) -> None:
        self.background.start(self._run(), "nats", may_return=True)

    async def close(self) -> None:
        await self.background.close()
        if self.client is not None:
            # Drain answers what the micro service is handling; bounded, because a NATS that went away
            # would otherwise keep shutdown waiting for it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.drain(), DRAIN_TIMEOUT_S)
            with contextlib.suppress(Exception):
                await self.client.close()
        await in_thread(self.relay_lock.release)

    async def _run(self) -> None:
        assert self.settings.nats_url
        self.client = await connect(self.settings.nats_url, "reciprocity", self._state, creds=self.settings.nats_creds)
        js = self.client.jetstream()
        await until_done(lambda: self._prepare(js), "prepare")
        self.prepared.set()
        if self.query:
            await QueryService(self.projections, off_loop=bool(self.settings.database_url)).start(self.client)
        if self.relay is not None:
            relay = self.relay
            relay_run = self._prepared(lambda: relay.run(self.client, self.relay_wakeup))
            relaying = run_while_holding(
                self.relay_lock, relay_run, "relay", on_active=self._set_relaying, retry_max_s=RETRY_MAX_S
            )
            self.background.start(relaying, "relay")

    async def _prepare(self, js: JetStreamContext) -> None:
        await ensure_stream(js, self.settings.nats_duplicate_window_s, self.settings.nats_replicas)
        await ensure_buckets(js, self.settings.nats_replicas)

    def _prepared(self, work: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """`work` that first makes the stream and buckets again if NATS lost them (a new server, a deleted
        store): at each (re)start, after which the relay and the KV writer write them again from the start."""

        async def run() -> None:
            assert self.client is not None
            await self._prepare(self.client.jetstream(timeout=REQUEST_TIMEOUT_S))
            await work()

        return run

    async def _write_kv(self) -> None:
        """The buckets' writers, run by the projector while it holds its lock (Projections.while_projecting)."""
        writer = self.kv_writer
        assert writer is not None
        await self.prepared.wait()  # NATS connected and the buckets made

        def write(bucket: str, wakeup: asyncio.Event) -> Awaitable[None]:
            return until_cancelled(self._prepared(lambda: writer.run(self.client, bucket, wakeup)), f"kv/{bucket}")

        async with asyncio.TaskGroup() as group:
            for bucket, wakeup in self.kv_wakeups.items():
                group.create_task(write(bucket, wakeup), name=f"kv/{bucket}")
