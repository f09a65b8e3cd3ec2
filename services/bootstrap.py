"""All wiring in one place: the parts a running service is made of, opened and closed together."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import structlog

from ledger.group_commit import FactWriter, GroupCommitter, ThreadWriter
from ledger.registry import SCHEMA_PART as REGISTRY_SCHEMA
from ledger.registry import Registry
from ledger.schema import SchemaMode
from ledger.sql import Database
from ledger.store import LEDGER_FILE, STORE_SCHEMA_VERSION, Ledger, open_ledger
from projections.follower import PostgresNotifications, watch_sqlite_commits
from projections.runtime import Projections, open_view_store
from projections.supervision import BackgroundTasks, retry_forever
from projections.viewstore import BACKGROUND_READER_MMAP_BYTES, READER_MMAP_BYTES, VIEWS_SCHEMA
from services.metrics import Metrics
from services.nats_workers import BusWorkers
from services.ratelimit import RateLimiter
from services.registry_cache import RegistryCache
from services.roles import role_parts
from services.settings import Settings
from services.view_lag_gate import ViewLagGate

log = structlog.get_logger(__name__)


REGISTRY_FILE = "registry.sqlite3"  # under the data directory, on SQLite


def registry_database(settings: Settings) -> Database:
    return Database(settings.database_url, settings.data_dir / REGISTRY_FILE, settings.connection_limits())


def open_registry(settings: Settings) -> Registry:
    return Registry(registry_database(settings), settings.schema_mode())


def ensure_schemas(settings: Settings, mode: SchemaMode) -> dict[str, tuple[int | None, int]]:
    """Opens store, registry and views once as `mode` allows (ledger/schema.py), before any part runs:
    each part's version found and this release's. Raises SchemaError when the process must not start."""
    limits = settings.connection_limits()
    ledger = open_ledger(settings.database_url, settings.data_dir, limits, mode)
    ledger.close()
    registry = Registry(registry_database(settings), mode)
    registry.db.close()
    views = open_view_store(settings.database_url, settings.data_dir, limits=limits, schema_mode=mode)
    views.close()
    return {
        "store": (ledger.schema_found, STORE_SCHEMA_VERSION),
        "registry": (registry.schema_found, REGISTRY_SCHEMA.version),
        "views": (views.schema_found, VIEWS_SCHEMA.version),
    }


COMMIT_WATCH_S = 0.01  # how often a process that does not write the SQLite store checks for commits
POLL_S = 0.5  # followers poll besides being woken, in case a wake-up was missed


@dataclass
class Components:
    """The parts this process runs (ingest, query, projector, relay); a part it does not run is None."""

    settings: Settings
    parts: frozenset[str]
    ledger: Ledger
    registry: RegistryCache
    projections: Projections
    metrics: Metrics
    rate_limiter: RateLimiter
    committer: GroupCommitter | None
    bus: BusWorkers | None
    background: BackgroundTasks
    _notifications: PostgresNotifications | None
    view_lag_gate: ViewLagGate | None = None  # where ingest runs with RECIPROCITY_VIEW_LAG_MAX
    _dead_since: dict[str, float] = field(default_factory=dict)  # name -> when it died, or was first seen dead

    def dead_loops(self) -> dict[str, str]:
        """The background loops of this process that died (name -> what ended it): its work has stopped,
        whatever else still answers, so it is not ready (/readyz)."""
        loops = [self.background, self.projections.background]
        if self.bus is not None:
            loops.append(self.bus.background)
        dead: dict[str, str] = {}
        for tasks in loops:
            dead.update(tasks.died)
            for name, at in tasks.died_at.items():
                self._dead_since.setdefault(name, at)
        if self._notifications is not None and not self._notifications.alive():
            dead["pg-listen"] = "the thread ended"
            self._dead_since.setdefault("pg-listen", time.monotonic())
        return dead

    def dead_for(self, seconds: float) -> dict[str, str]:
        """The loops dead for at least `seconds`: past that, the process is no longer alive (/healthz), since
        nothing but a restart brings a loop back. The wait lets readiness take the process out of service
        first, and an operator read /readyz."""
        now = time.monotonic()
        return {name: error for name, error in self.dead_loops().items() if now - self._dead_since[name] >= seconds}

    async def close(self) -> None:
        await self.background.close()
        if self._notifications is not None:
            self._notifications.stop()
        if self.committer is not None:
            await self.committer.close()  # commits what is queued before anything below closes
        if self.bus is not None:
            await self.bus.close()
        await self.projections.close()
        await self.registry.close()
        self.ledger.close()


async def open_components(
    settings: Settings, metrics: Metrics | None = None, parts: frozenset[str] | None = None
) -> Components:
    """The parts of `settings.role` (or those given): ingest commits facts, query answers over HTTP and the
    micro service, projector builds the views and writes KV, relay publishes the stream."""
    parts = parts or role_parts(settings.role)
    limits = settings.connection_limits()
    ledger = await asyncio.to_thread(
        open_ledger, settings.database_url, settings.data_dir, limits, settings.schema_mode()
    )
    registry = RegistryCache(await asyncio.to_thread(open_registry, settings), settings.registry_refresh_s)
    metrics = metrics or Metrics()
    projections = await _open_projections(settings, parts, ledger, metrics)
    bus = await _start_bus(settings, parts, ledger, projections, metrics)
    await projections.start()  # after the bus gave it what runs while projecting (the KV writer)
    committer = await _start_committer(settings, parts, ledger, metrics, partial(_wake, projections, bus))
    # Followers are woken by our own commits (above), by PostgreSQL's NOTIFY, or by SQLite's commit watch.
    notifications = _listen_for_commits(settings, parts, ledger, projections, bus)
    background = BackgroundTasks()
    if parts & {"ingest", "query"}:
        background.start(retry_forever(registry.follow, "registry-follower"), "registry-follower")
    else:  # a projector or relay authenticates nobody: it keeps no registry connection open
        await asyncio.to_thread(registry.registry.db.close)
    gate = None
    if "ingest" in parts and settings.view_lag_max:
        gate = ViewLagGate(
            ledger.head_position, projections.reciprocity_position, settings.view_lag_max,
            on_hold=metrics.ingest_held.inc,
        )  # fmt: skip
        background.start(gate.run(), "view-lag-gate")
    if not settings.database_url and "ingest" not in parts:  # serve's background process
        wake = partial(_wake, projections, bus)
        path = settings.data_dir / LEDGER_FILE
        background.start(
            retry_forever(lambda: watch_sqlite_commits(path, wake, COMMIT_WATCH_S), "commit-watch"), "commit-watch"
        )
    log.info(
        "store_opened",
        parts=sorted(parts),
        store="postgresql" if settings.database_url else "sqlite",
        synchronous=None if settings.database_url else ledger.recorder.writer_synchronous(),
        head_position=ledger.head_position(),
    )
    return Components(
        settings,
        parts,
        ledger,
        registry,
        projections,
        metrics,
        RateLimiter(),
        committer,
        bus,
        background,
        notifications,
        gate,
    )


async def _open_projections(settings: Settings, parts: frozenset[str], ledger: Ledger, metrics: Metrics) -> Projections:
    """The views of this process, not started yet."""
    return await asyncio.to_thread(
        Projections,
        ledger,
        settings.database_url,
        settings.data_dir,
        project="projector" in parts,
        poll_s=POLL_S,
        reader_mmap_bytes=READER_MMAP_BYTES if "query" in parts else BACKGROUND_READER_MMAP_BYTES,
        limits=settings.connection_limits(),
        schema_mode=settings.schema_mode(),
        on_failure=lambda view: metrics.projection_failures.labels(view=view).inc(),
        on_recompute=metrics.influence_recompute.observe,
    )


async def _start_bus(
    settings: Settings, parts: frozenset[str], ledger: Ledger, projections: Projections, metrics: Metrics
) -> BusWorkers | None:
    if not settings.nats_url or not parts & {"query", "projector", "relay"}:
        return None
    bus = BusWorkers(
        settings,
        ledger,
        projections,
        metrics,
        relay="relay" in parts,
        query="query" in parts,
        kv="projector" in parts,
        poll_s=POLL_S,
    )
    await bus.start()
    return bus


async def _start_committer(
    settings: Settings, parts: frozenset[str], ledger: Ledger, metrics: Metrics, on_commit: Callable[[], None]
) -> GroupCommitter | None:
    if "ingest" not in parts:
        return None
    committer = GroupCommitter(
        ThreadWriter(FactWriter(ledger)),
        batch_facts_max=settings.commit_batch_facts_max,
        wait_s=settings.commit_wait_ms / 1000,
        queue_facts_max=settings.commit_queue_facts_max,
        group=settings.group_commit,
        observe_batch=metrics.observe_commit,
        on_commit=on_commit,
    )
    await committer.start()
    return committer


def _listen_for_commits(
    settings: Settings, parts: frozenset[str], ledger: Ledger, projections: Projections, bus: BusWorkers | None
) -> PostgresNotifications | None:
    """PostgreSQL's NOTIFY of other processes' commits, for the followers of this one."""
    if not settings.database_url or not parts & {"projector", "relay"} or ledger.commit_channel is None:
        return None
    loop = asyncio.get_running_loop()
    notifications = PostgresNotifications(
        settings.database_url,
        ledger.commit_channel,
        lambda: loop.call_soon_threadsafe(_wake, projections, bus),
        settings.connection_limits(),
        wanted=lambda: projections.projecting or (bus is not None and bus.relaying),
    )
    notifications.start()
    return notifications


def _wake(projections: Projections, bus: BusWorkers | None) -> None:
    projections.wake()
    if bus is not None:
        bus.wake()
