"""A process's registry in memory (services/registry_cache.py): a miss looks for a change before refusing,
those looks are single-flight and rate-limited, and key use is written in the background, on both stores."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from ledger.registry import NewKey, Registry
from services.bootstrap import open_registry
from services.registry_cache import RegistryCache
from services.settings import Settings
from tests.helpers import until

BOGUS_KEY = "rk_no-such-key"


@pytest.fixture
async def cache(settings: Settings) -> AsyncIterator[RegistryCache]:
    """A cache that does not poll (refresh_s is long): only misses and the test make it look."""
    setup = open_registry(settings)
    setup.create_tenant("acme")
    setup.db.close()
    opened = RegistryCache(open_registry(settings), refresh_s=3600)
    yield opened
    await opened.close()


@pytest.fixture
def admin(settings: Settings) -> Iterator[Registry]:
    """The registry as an admin command in another process writes it: its own connection."""
    opened = open_registry(settings)
    yield opened
    opened.db.close()


def count_calls(function: Callable[[], Any], calls: list[int]) -> Callable[[], Any]:
    def counted() -> Any:
        calls.append(1)
        return function()

    return counted


async def test_a_key_made_after_the_snapshot_works_on_first_use(cache, admin):
    """No poll ran: the miss itself finds the new key; a source likewise."""
    new = admin.add_key("acme", ["read"])
    assert cache.api_key(new.key) is None  # the snapshot is older than the key
    found = await cache.api_key_after_refresh(new.key)
    assert found is not None and (found.id, found.tenant) == (new.id, "acme")
    admin.add_source("acme", "crm")
    assert cache.source("acme", "crm") is None
    assert await cache.source_after_refresh("acme", "crm") is not None


async def test_a_hundred_concurrent_misses_cost_one_look_at_the_database(cache):
    """Single-flight: every waiting request shares one read of the change counter."""
    reads: list[int] = []
    cache.registry.version = count_calls(cache.registry.version, reads)
    answers = await asyncio.gather(*(cache.api_key_after_refresh(BOGUS_KEY) for _ in range(100)))
    assert answers == [None] * 100
    assert (len(reads), cache.change_checks.runs) == (1, 1)


async def test_a_flood_of_bogus_keys_reads_the_counter_at_most_twenty_times_a_second(cache):
    """A miss every millisecond for half a second: about ten reads, not five hundred."""
    reads: list[int] = []
    cache.registry.version = count_calls(cache.registry.version, reads)
    misses = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < 0.5:
        misses.append(asyncio.create_task(cache.api_key_after_refresh(BOGUS_KEY)))
        await asyncio.sleep(0.001)
    assert await asyncio.gather(*misses) == [None] * len(misses)
    elapsed_s = loop.time() - started
    assert len(misses) > 100
    assert 2 <= len(reads) <= elapsed_s * 20 + 2, (len(reads), elapsed_s)


async def test_a_miss_while_a_check_is_reading_waits_for_the_next_check(cache, admin):
    """A key made after an ongoing check read the counter is still found: its request does not share that
    check's answer, it waits for one that starts after it asked."""
    loop = asyncio.get_running_loop()
    made: list[NewKey] = []
    key_made, asked = asyncio.Event(), threading.Event()
    read_version = cache.registry.version

    def version_then_a_new_key() -> int:
        version = read_version()
        if not made:
            made.append(admin.add_key("acme", ["read"]))
            loop.call_soon_threadsafe(key_made.set)
            asked.wait(10)  # this check goes on only after the request for the new key is waiting
        return version

    cache.registry.version = version_then_a_new_key
    bogus = asyncio.create_task(cache.api_key_after_refresh(BOGUS_KEY))
    await key_made.wait()
    fresh = asyncio.create_task(cache.api_key_after_refresh(made[0].key))
    await asyncio.sleep(0)
    asked.set()
    assert await bogus is None
    found = await fresh
    assert found is not None and found.id == made[0].id
    assert cache.change_checks.runs == 2


async def test_a_revoked_key_is_refused_after_the_next_refresh(cache, admin):
    new = admin.add_key("acme", ["read"])
    await cache.refresh()
    assert cache.api_key(new.key) is not None
    admin.revoke_key("acme", new.id)
    await cache.refresh()
    assert cache.api_key(new.key) is None


async def test_key_use_is_kept_in_memory_and_written_in_the_background(cache, admin, monkeypatch):
    """Hits touch no database; the background write records when the key was last used."""
    new = admin.add_key("acme", ["read"])
    await cache.refresh()

    def no_database(*args: Any) -> None:
        raise AssertionError("a hit reached the database")

    monkeypatch.setattr(cache.registry.db, "query", no_database)
    monkeypatch.setattr(cache.registry.db, "transaction", no_database)
    for _ in range(1000):
        assert cache.api_key(new.key) is not None
    monkeypatch.undo()
    assert admin.keys("acme")[0].last_used_at is None
    await cache.write_keys_used()
    [listed] = admin.keys("acme")
    assert listed.last_used_at is not None and listed.last_used_at >= listed.created_at
    version = admin.version()
    await cache.write_keys_used()  # nothing used since: nothing written, and no reload for anyone
    assert admin.version() == version


async def test_the_follower_writes_key_use_on_its_own(settings, admin):
    """The follower task, not a request, writes when a key was last used (here every 0.1 s, not a minute)."""
    admin.create_tenant("acme")
    new = admin.add_key("acme", ["read"])
    cache = RegistryCache(open_registry(settings), refresh_s=0.02, key_use_write_s=0.1)
    follower = asyncio.create_task(cache.follow())

    async def written() -> bool:
        return admin.keys("acme")[0].last_used_at is not None

    try:
        assert cache.api_key(new.key) is not None
        await until(written, 10, "last_used_at written")
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await cache.close()
