"""All wiring in one place: the parts a running service is made of, opened and closed together."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from dataclasses import dataclass

import structlog

from projections.runtime import Projections
from services.ingest import FactWriter, GroupCommitter, ThreadWriter
from services.metrics import Metrics
from services.ratelimit import RateLimiter
from services.registry import KeyAuth, Registry, RegistrySnapshot, SourceAuth
from services.settings import Settings
from services.sql import Database
from services.store import Ledger, open_ledger

log = structlog.get_logger(__name__)


def open_registry(settings: Settings) -> Registry:
    return Registry(Database(settings.database_url, settings.data_dir / "registry.sqlite3"))


class RegistryCache:
    """The registry as the server sees it: reloaded in the background whenever an admin command changed it."""

    def __init__(self, registry: Registry, refresh_s: float) -> None:
        self.registry = registry
        self.refresh_s = refresh_s
        self.snapshot: RegistrySnapshot = registry.snapshot()

    def source(self, tenant: str, source: str) -> SourceAuth | None:
        return self.snapshot.sources.get((tenant, source))

    def api_key(self, api_key: str) -> KeyAuth | None:
        return self.snapshot.keys.get(hashlib.sha256(api_key.encode()).hexdigest())

    async def follow(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception as failure:  # keep serving with what we have; say so
                log.warning("registry_refresh_failed", error=str(failure))

    async def refresh(self) -> None:
        version = await asyncio.to_thread(self.registry.version)
        if version != self.snapshot.version or self.snapshot.stale(time.time()):
            self.snapshot = await asyncio.to_thread(self.registry.snapshot)
            log.info("registry_reloaded", version=self.snapshot.version)


@dataclass
class Components:
    settings: Settings
    ledger: Ledger
    registry: RegistryCache
    committer: GroupCommitter
    projections: Projections
    metrics: Metrics
    rate_limiter: RateLimiter
    _tasks: list[asyncio.Task[None]]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.committer.close()
        await self.projections.close()
        self.registry.registry.db.close()
        self.ledger.close()


async def open_components(settings: Settings, metrics: Metrics | None = None) -> Components:
    ledger = await asyncio.to_thread(open_ledger, settings.database_url, settings.data_dir)
    registry = RegistryCache(await asyncio.to_thread(open_registry, settings), settings.registry_refresh_s)
    metrics = metrics or Metrics()
    projections = await asyncio.to_thread(Projections, ledger, settings.database_url, settings.data_dir)
    await projections.start()
    committer = GroupCommitter(
        ThreadWriter(FactWriter(ledger)),
        batch_facts_max=settings.commit_batch_facts_max,
        wait_s=settings.commit_wait_ms / 1000,
        queue_facts_max=settings.commit_queue_facts_max,
        group=settings.group_commit,
        observe_batch=metrics.observe_commit,
        on_commit=projections.wake,
    )
    await committer.start()
    tasks = [asyncio.create_task(registry.follow(), name="registry-follower")]
    log.info(
        "store_opened",
        store="postgresql" if settings.database_url else "sqlite",
        synchronous=None if settings.database_url else ledger.recorder.writer_synchronous(),
        head_position=ledger.head_position(),
    )
    return Components(settings, ledger, registry, committer, projections, metrics, RateLimiter(), tasks)
