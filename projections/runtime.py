"""The projection side of a running service: the views database, the follower, the influence recomputer,
and what queries need from them (positions to wait for, lag to report).

One process projects at a time (a file lock on SQLite, an advisory lock on PostgreSQL); any other process
stands by and still answers queries from the shared views.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from ledger.child_process import die_with_parent
from ledger.connections import DEFAULT_LIMITS, ConnectionLimits, limit_sqlite_memory, name_connections
from ledger.locks import WorkerLock
from ledger.schema import SchemaMode
from ledger.store import Ledger
from projections import influence_view, kv, reciprocity
from projections.follower import Follower, Quarantine, projection_failures
from projections.graph import GraphQueries
from projections.influence_view import InfluenceView
from projections.queries import ReciprocityQueries
from projections.supervision import BackgroundTasks, in_thread, retry_forever, run_while_holding
from projections.viewstore import READER_MMAP_BYTES, ViewStore

log = structlog.get_logger(__name__)

VIEWS = (reciprocity.VIEW, influence_view.VIEW)
INFLUENCE_INTERVAL_S = 1.0  # at most once a second...
INFLUENCE_DUTY_MAX = 0.2  # ...and never more than a fifth of the time: a big tenant is recomputed less often
# The influence worker's SQLite page caches together: its first read of a tenant walks every pair, and each of
# its connections' caches (64 MiB per file) would keep what it walked; numpy holds what it needs. Not lower:
# a transaction whose dirty pages do not fit spills them to the WAL early (the follower's did, at 96 MiB for
# the background process, and slowed down; that process has no such bound).
INFLUENCE_SQLITE_MEMORY_BYTES_MAX = 64 << 20
# The worker yields the CPU to ingest and the follower when they want it (on 2 cores a recompute of seconds
# took a core from them); it still gets every idle cycle, and its rate is bounded above anyway.
INFLUENCE_NICENESS = 10


# Where the relay says how far it got, for metrics and readiness in every process (it realigns from the
# stream itself, so this is a report, not its memory).
RELAY_DDL = ("CREATE TABLE IF NOT EXISTS view_relay (stream TEXT PRIMARY KEY, position INTEGER NOT NULL)",)
RELAY_RECORD_INTERVAL_S = 1.0


def open_view_store(
    database_url: str | None, data_dir: Path, reader_mmap_bytes: int = READER_MMAP_BYTES,
    limits: ConnectionLimits = DEFAULT_LIMITS, schema_mode: SchemaMode = SchemaMode.CREATE,
) -> ViewStore:  # fmt: skip
    ddl = (*reciprocity.DDL, *influence_view.DDL, *RELAY_DDL, *kv.DDL)
    return ViewStore(database_url, data_dir, ddl, reader_mmap_bytes, limits, schema_mode)


class InfluenceWorker:
    """Recomputes influence in a child process. A recompute is seconds of CPU-bound Python and numpy for a
    large tenant; on a thread it took the interpreter lock from the projector and the KV writer for that
    long, and the lag from a fact to its KV update grew by as much. The child writes through views of its
    own (on SQLite the influence file, so no page waits for it), dies with its parent, and is started
    again when it dies."""

    def __init__(self, database_url: str | None, data_dir: Path, limits: ConnectionLimits = DEFAULT_LIMITS) -> None:
        # One recompute at a time on one thread: a connection of the pool (one more, should a read nest) and a
        # reader are all it uses, whatever the parent's limits.
        child_limits = dataclasses.replace(limits, pool_size=1, max_overflow=1, readers_max=1)
        self._args = (os.getpid(), database_url, str(data_dir), child_limits)
        self._pool: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        """Starts the child ahead of the first recompute (importing numpy and opening the views takes a
        second or two), so its start-up is not counted as a recompute's time."""
        await self._run(_started)

    async def recompute(self, tenant: str) -> dict[str, Any]:
        return await self._run(_recompute_influence, tenant)

    async def _run(self, work: Callable[..., Any], *args: Any) -> Any:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),  # no copy of this process's threads and locks
                initializer=_start_influence_worker,
                initargs=self._args,
            )
        try:
            return await asyncio.wrap_future(self._pool.submit(work, *args))
        except BrokenProcessPool:
            self._pool = None  # the child died (killed, out of memory): a new one next time
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


_worker_influence: InfluenceView | None = None  # in the worker process


def _start_influence_worker(parent: int, database_url: str | None, data_dir: str, limits: ConnectionLimits) -> None:
    global _worker_influence
    die_with_parent()
    if os.getppid() != parent:  # the parent died while this one was starting: no signal will come
        os._exit(1)
    name_connections("influence")
    os.nice(INFLUENCE_NICENESS)
    limit_sqlite_memory(INFLUENCE_SQLITE_MEMORY_BYTES_MAX)
    store = open_view_store(database_url, Path(data_dir), limits=limits, schema_mode=SchemaMode.EXISTING)
    _worker_influence = InfluenceView(store, ReciprocityQueries(store))


def _recompute_influence(tenant: str) -> dict[str, Any]:
    assert _worker_influence is not None
    return _worker_influence.recompute(tenant)


def _started() -> bool:
    return _worker_influence is not None


class Projections:
    """Views for one service process: follows the log when it holds the projector lock, else stands by."""

    def __init__(
        self,
        ledger: Ledger,
        database_url: str | None,
        data_dir: Path,
        *,
        project: bool = True,
        poll_s: float = 0.5,
        reader_mmap_bytes: int = READER_MMAP_BYTES,
        limits: ConnectionLimits = DEFAULT_LIMITS,
        schema_mode: SchemaMode = SchemaMode.CREATE,
        on_failure: Callable[[str], None] = lambda view: None,
        on_recompute: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        """`on_failure` learns the view's name for each page that failed, `on_recompute` the seconds each
        tenant's influence recompute took (the metrics count and time them)."""
        self.ledger = ledger
        self.database_url = database_url
        self.store = open_view_store(database_url, data_dir, reader_mmap_bytes, limits, schema_mode)
        self.queries = ReciprocityQueries(self.store)
        self.graph = GraphQueries(self.store)  # the graph, ties and upkeep
        self.influence = InfluenceView(self.store, self.queries)  # answers; recomputes run in a worker process
        self.lock = WorkerLock(database_url, data_dir, "projector", limits)
        self.project = project
        self.poll_s = poll_s
        self.projecting = False
        # Run beside the follower while this process holds the projector lock, stopped when it loses it (the KV
        # writer): (name, work) pairs, registered before `start`.
        self.while_projecting: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self.background = BackgroundTasks()
        self.on_recompute = on_recompute
        self._wakeup = asyncio.Event()
        self._advanced = asyncio.Event()
        self.page_listeners: list[Callable[[], None]] = []  # woken after each page and each recompute
        # Handed each page's changes as soon as it committed, on the projector's thread (the KV writer).
        self.page_observers: list[Callable[[int, reciprocity.AppliedPage], None]] = []
        self._relay_recorded_at = 0.0
        # Pages on a thread; influence recomputes in a process of its own (see InfluenceWorker). Closing waits
        # for the work in flight on both.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="projector")
        self._influence_worker = InfluenceWorker(database_url, data_dir, limits)
        self.follower = Follower(
            ledger,
            reciprocity.ReciprocityProjection(self.store),
            self.reciprocity_position,
            on_page=self._on_page,
            quarantine=Quarantine(self.store, reciprocity.VIEW),
            on_failure=on_failure,
        )

    def reciprocity_position(self) -> int:
        return self.store.position(reciprocity.VIEW)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.project:
            projector = run_while_holding(self.lock, self._lead, "projector", on_active=self._set_projecting)
            self.background.start(projector, "projector")

    async def close(self) -> None:
        await self.background.close()
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        await asyncio.to_thread(self._influence_worker.close)
        self.lock.release()
        await self.store.aclose()

    def wake(self) -> None:
        """Called after this process committed facts: project them now rather than at the next poll."""
        self._wakeup.set()

    def _on_page(self, after: int, applied: reciprocity.AppliedPage) -> None:
        # Runs on the follower's thread; waiters for a position live on the event loop.
        for observer in self.page_observers:
            observer(after, applied)
        self._loop.call_soon_threadsafe(self._page_applied)

    def _page_applied(self) -> None:
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()
        for listener in self.page_listeners:
            listener()

    def _set_projecting(self, active: bool) -> None:
        self.projecting = active

    async def _lead(self) -> None:
        """What the holder of the projector lock runs: the follower, influence and `while_projecting`, each
        retrying what fails; one that dies anyway takes the others down with it (a task group), and the
        lock loop starts them all again."""

        async def follow() -> None:
            await self.follower.follow(self._wakeup, self._executor, self.poll_s)

        works = [("follower", follow), ("influence", self._recompute_influence), *self.while_projecting]
        async with asyncio.TaskGroup() as group:
            for name, work in works:
                group.create_task(retry_forever(work, name), name=name)

    async def _recompute_influence(self) -> None:
        """Every tenant whose reciprocity rows changed since its last compute, at most once a second and at
        most a fifth of the time (a recompute reads and may rewrite every participant of the tenant, so
        its cost grows with the tenant; this keeps projecting pages and writing KV ahead of it)."""
        with contextlib.suppress(Exception):  # a failure to start shows (and is retried) at the first recompute
            await self._influence_worker.start()
        while True:
            started = time.monotonic()
            try:
                for tenant in await in_thread(self.influence.stale_tenants):
                    try:
                        recompute_started = time.perf_counter()
                        done = await self._influence_worker.recompute(tenant)
                        self.on_recompute(time.perf_counter() - recompute_started)
                    except BrokenProcessPool:
                        raise  # the worker died, not the tenant: another starts next interval
                    except Exception as failure:  # one tenant's failure holds up no other; it is tried again
                        log.error("influence_recompute_failed", tenant=tenant, error=repr(failure))
                        continue
                    log.info("influence_recomputed", **done)
                    for listener in self.page_listeners:
                        listener()
            except Exception as failure:  # keep the last results; try again next interval
                log.error("influence_recompute_failed", error=repr(failure))
            spent = time.monotonic() - started
            await asyncio.sleep(max(INFLUENCE_INTERVAL_S - spent, spent * (1 / INFLUENCE_DUTY_MAX - 1)))

    async def wait_for(self, position: int, timeout_s: float, view_position: Callable[[], int] | None = None) -> bool:
        """Waits until a view reflects `position` (a client reading its own write); reciprocity by default."""
        view_position = view_position or self.reciprocity_position
        deadline = time.monotonic() + timeout_s
        while view_position() < position:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                # Woken by our own follower; polled briefly when another process projects.
                async with asyncio.timeout(min(remaining, 0.01)):  # wait_for can lose a cancel (3.11)
                    await self._advanced.wait()
        return True

    def record_relay_position(self, position: int) -> None:
        """Notes the relay's position for other processes, at most once a second (off the event loop)."""
        now = time.monotonic()
        if now - self._relay_recorded_at < RELAY_RECORD_INTERVAL_S:
            return
        self._relay_recorded_at = now
        self._loop.run_in_executor(None, self._write_relay_position, position)

    def _write_relay_position(self, position: int) -> None:
        with self.store.transaction() as cursor:
            cursor.execute(
                "INSERT INTO view_relay (stream, position) VALUES ('events', ?) "
                "ON CONFLICT (stream) DO UPDATE SET position = excluded.position",
                (position,),
            )

    def relay_position(self) -> int:
        rows = self.store.read("SELECT position FROM view_relay WHERE stream = 'events'")
        return rows[0][0] if rows else 0

    def lag(self) -> dict[str, dict[str, float]]:
        """Per view: facts behind the log head, and seconds since the oldest unapplied fact was recorded."""
        head = self.ledger.head_position()
        positions = {
            reciprocity.VIEW: self.reciprocity_position(),
            influence_view.VIEW: self.influence_position(),
        }
        lag = {}
        for view, position in positions.items():
            behind = max(0, head - position)
            seconds = 0.0
            if behind:
                pending = self.ledger.read_log(position, 1)
                if pending:
                    recorded = datetime.fromisoformat(pending[0].fact.recorded_at)
                    seconds = max(0.0, (datetime.now(UTC) - recorded).total_seconds())
            lag[view] = {"events": behind, "seconds": round(seconds, 3), "position": position}
        return lag

    def failures(self) -> list[dict[str, Any]]:
        """The facts views could not apply, whose tenants they skip (from the views database: whichever
        process projects, every process reports them)."""
        return [failure.as_dict() for failure in projection_failures(self.store)]

    def influence_position(self) -> int:
        return self.influence.reflected_position()
