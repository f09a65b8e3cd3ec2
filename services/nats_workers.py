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
from projections.nats_bus import BUCKETS, connect, ensure_buckets, ensure_stream, until_cancelled, until_done
from projections.relay import Relay
from projections.runtime import Projections
from services.metrics import Metrics
from services.micro import QueryService
from services.settings import Settings

log = structlog.get_logger(__name__)

STANDBY_RETRY_S = 2.0
LOCK_CHECK_S = 2.0  # how soon a worker whose lock was lost stops
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
        self.kv = kv
        self.relay_lock = WorkerLock(settings.database_url, settings.data_dir, "relay", settings.connection_limits())
        self.query = query
        self.connected = False
        self.relay_wakeup = asyncio.Event()
        self.kv_wakeups = {bucket: asyncio.Event() for bucket in BUCKETS}
        self.client: Client | None = None
        self.kv_writer: KvWriter | None = None  # once this process writes KV (its lag is a metric)
        self.prepared = asyncio.Event()  # the stream and buckets exist
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        """After this process committed facts or applied a page: publish now, not at the next poll."""
        self.relay_wakeup.set()
        for wakeup in self.kv_wakeups.values():
            wakeup.set()

    def _relayed(self, position: int) -> None:
        self.metrics.relay_position.set(position)
        self.projections.record_relay_position(position)

    def _state(self, up: bool) -> None:
        self.connected = up
        self.metrics.nats_connected.set(1 if up else 0)

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._run(), name="nats"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.client is not None:
            # Drain answers what the micro service is handling; bounded, because a NATS that went away
            # would otherwise keep shutdown waiting for it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.drain(), DRAIN_TIMEOUT_S)
            with contextlib.suppress(Exception):
                await self.client.close()
        await asyncio.to_thread(self.relay_lock.release)

    async def _run(self) -> None:
        assert self.settings.nats_url
        self.client = await connect(self.settings.nats_url, "reciprocity", self._state, creds=self.settings.nats_creds)
        js = self.client.jetstream()
        await until_done(lambda: self._prepare(js), "prepare")
        self.prepared.set()
        workers = []
        if self.query:
            await QueryService(self.projections, off_loop=bool(self.settings.database_url)).start(self.client)
        if self.relay is not None:
            relay = self.relay
            relay_run = self._prepared(lambda: relay.run(self.client, self.relay_wakeup))
            workers.append(run_while_holding(self.relay_lock, relay_run, "relay"))
        if self.kv:
            workers.append(self._kv())
        await asyncio.gather(*workers)

    async def _prepare(self, js: JetStreamContext) -> None:
        await ensure_stream(js, self.settings.nats_duplicate_window_s)
        await ensure_buckets(js)

    def _prepared(self, work: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """`work` that first makes the stream and buckets again if NATS lost them (a new server, a deleted
        store): at each (re)start, after which the relay and the KV writer write them again from the start."""

        async def run() -> None:
            assert self.client is not None
            await self._prepare(self.client.jetstream())
            await work()

        return run

    async def _kv(self) -> None:
        """The KV writer follows the projector: it runs in whichever process projects."""
        while not self.projections.projecting:
            await asyncio.sleep(STANDBY_RETRY_S)
        writer = self.kv_writer = KvWriter(
            self.projections.store, self.projections.influence, self.projections.influence_position
        )
        self.projections.page_observers.append(writer.offer)
        for wakeup in self.kv_wakeups.values():
            self.projections.page_listeners.append(wakeup.set)

        def write(bucket: str, wakeup: asyncio.Event) -> Awaitable[None]:
            return until_cancelled(self._prepared(lambda: writer.run(self.client, bucket, wakeup)), f"kv/{bucket}")

        await asyncio.gather(*(write(bucket, wakeup) for bucket, wakeup in self.kv_wakeups.items()))


async def run_while_holding(
    lock: WorkerLock, work: Callable[[], Awaitable[None]], name: str, check_s: float = LOCK_CHECK_S
) -> None:
    """Runs `work` only while holding the lock: one relay per stream however many processes run. A lock that
    was lost (its PostgreSQL session ended) stops the work, and this process stands by again."""
    while True:
        while not await asyncio.to_thread(lock.try_acquire):
            await asyncio.sleep(STANDBY_RETRY_S)
        log.info("worker_active", worker=name)
        running = asyncio.create_task(until_cancelled(work, name), name=name)
        try:
            while not running.done() and await asyncio.to_thread(lock.still_held):
                await asyncio.wait([running], timeout=check_s)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        log.warning("worker_lock_lost", worker=name, standby_retry_s=STANDBY_RETRY_S)
