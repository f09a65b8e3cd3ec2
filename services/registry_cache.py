"""The registry as a running process sees it: a snapshot in memory, so a request never waits for the database.

The snapshot is reloaded when `registry_version` moves. A poll notices revocations and rotations within a
second; a lookup that misses looks at the counter first, so a key or source works the moment the command
that made it returns. Those looks are single-flight and rate-limited: a flood of bogus keys costs the
database at most `checks_per_s_max` small reads a second, however many requests wait on them.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable

import structlog

from ledger.registry import KEY_USE_RESOLUTION_S, KeyAuth, Registry, RegistrySnapshot, SourceAuth
from projections.supervision import in_thread

log = structlog.get_logger(__name__)

CHECKS_PER_S_MAX = 20.0  # reads of the change counter, polls and misses together


class SingleFlight:
    """Runs `work` for many callers: each waits for a run that starts after it asked, shared with everyone
    who asked before that run started. Runs never overlap and start at most once per `interval_s`."""

    def __init__(self, work: Callable[[], Awaitable[None]], interval_s: float) -> None:
        self._work = work
        self._interval_s = interval_s
        self._next: asyncio.Task[None] | None = None  # a run not started yet: joining it is as good as a new one
        self._latest: asyncio.Task[None] | None = None
        self._started_at = -math.inf
        self._unfinished: set[asyncio.Task[None]] = set()
        self.runs = 0  # how often `work` ran: a metric's worth, and what the tests count

    async def __call__(self) -> None:
        if self._next is None:
            self._next = self._latest = asyncio.create_task(self._run(self._latest))
            self._unfinished.add(self._next)
            self._next.add_done_callback(self._unfinished.discard)
        run = self._next
        await asyncio.shield(run)  # a caller that gives up (a closed connection) does not cancel the others'

    async def close(self) -> None:
        for run in list(self._unfinished):
            run.cancel()
        await asyncio.gather(*self._unfinished, return_exceptions=True)

    async def _run(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self._started_at + self._interval_s - loop.time()))
        self._next = None  # whoever asks from here on may have missed what this run reads: they wait for the next
        self._started_at = loop.time()
        self.runs += 1
        await self._work()


class RegistryCache:
    """One process's registry: lookups read the snapshot; misses and the follower task read the database."""

    def __init__(
        self,
        registry: Registry,
        refresh_s: float,
        checks_per_s_max: float = CHECKS_PER_S_MAX,
        key_use_write_s: float = KEY_USE_RESOLUTION_S,
    ) -> None:
        self.registry = registry
        self.refresh_s = refresh_s
        self.key_use_write_s = key_use_write_s
        self.snapshot: RegistrySnapshot = registry.snapshot()
        self.change_checks = SingleFlight(self._reload_if_changed, 1 / checks_per_s_max)
        self._keys_used: dict[str, float] = {}  # key id -> last use, written out at most once a minute

    def source(self, tenant: str, source: str) -> SourceAuth | None:
        return self.snapshot.sources.get((tenant, source))

    def api_key(self, api_key: str) -> KeyAuth | None:
        auth = self.snapshot.keys.get(hashlib.sha256(api_key.encode()).hexdigest())
        if auth is not None:
            self._keys_used[auth.id] = time.time()
        return auth

    async def source_after_refresh(self, tenant: str, source: str) -> SourceAuth | None:
        """On a miss: the source as the registry holds it now, so one added a moment ago is found."""
        await self.refresh()
        return self.source(tenant, source)

    async def api_key_after_refresh(self, api_key: str) -> KeyAuth | None:
        """On a miss: the key as the registry holds it now, so one added a moment ago is found."""
        await self.refresh()
        return self.api_key(api_key)

    async def refresh(self) -> None:
        """Reloads the snapshot if the registry changed since a moment after this call."""
        await self.change_checks()

    async def follow(self) -> None:
        """Polls for changes (a revoked key is refused within a second) and writes when keys were used."""
        next_write_at = time.monotonic() + self.key_use_write_s
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()
            if time.monotonic() >= next_write_at:
                next_write_at = time.monotonic() + self.key_use_write_s
                await self.write_keys_used()

    async def write_keys_used(self) -> None:
        """The keys used since the last write, off the request path; a failure only loses approximate times."""
        used, self._keys_used = self._keys_used, {}
        if not used:
            return
        try:
            await in_thread(self.registry.record_keys_used, used)
        except Exception as failure:
            log.warning("registry_key_use_not_recorded", keys=len(used), error=str(failure))

    async def close(self) -> None:
        await self.change_checks.close()
        await self.write_keys_used()  # a process that stops still tells when its keys were used
        self.registry.db.close()

    async def _reload_if_changed(self) -> None:
        try:
            version = await in_thread(self.registry.version)
            if version != self.snapshot.version or self.snapshot.stale(time.time()):
                self.snapshot = await in_thread(self.registry.snapshot)
                log.info("registry_reloaded", version=self.snapshot.version)
        except Exception as failure:  # keep serving with what we have; say so
            log.warning("registry_refresh_failed", error=str(failure))
