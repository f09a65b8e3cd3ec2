"""Erasure in the view buckets, against a real nats-server: once a bucket is written up to the erasure, the
erased participant's keys are deleted (a live watcher hears it) and purged, so neither a key nor a value nor a
delete marker names them, for a reader of every key or a watcher replaying history (DESIGN section 7)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import nats
import pytest

from projections.influence_view import InfluenceView
from projections.kv import KvWriter
from projections.kv_erasure import UnsafeSubject, erased_subjects
from projections.nats_bus import BUCKET_BALANCES, BUCKET_INFLUENCE, BUCKET_PAIRS, BUCKETS, connect, ensure_buckets
from projections.queries import ReciprocityQueries
from projections.runtime import open_view_store
from tests.helpers import until

ANN = "ann-erasable"
ERASED_AT = 10
TOMBSTONE = "erased-0123456789abcdef"
KEYS = {  # what the buckets hold before ann's erasure
    BUCKET_BALANCES: ["acme.ann-erasable", "acme.bob", "zeta.ann-erasable"],
    BUCKET_PAIRS: ["acme.ann-erasable.bob", "acme.amy.ann-erasable", "acme.bob.cas", f"acme.bob.{TOMBSTONE}"],
    BUCKET_INFLUENCE: ["acme.ann-erasable", "acme.bob"],
}
KEPT = {  # and after it (in tenant zeta, ann-erasable is someone else)
    BUCKET_BALANCES: ["acme.bob", "zeta.ann-erasable"],
    BUCKET_PAIRS: ["acme.bob.cas", f"acme.bob.{TOMBSTONE}"],
    BUCKET_INFLUENCE: ["acme.bob"],
}


@pytest.fixture
def views(settings):
    opened = open_view_store(settings.database_url, settings.data_dir)
    yield opened
    opened.close()


@pytest.fixture
async def nc(nats_server):
    client = await connect(nats_server.url, "test-kv-erasure")
    await ensure_buckets(client.jetstream())
    for bucket, keys in KEYS.items():
        kv = await client.jetstream().key_value(bucket)
        for key in keys:
            await kv.put(key, json.dumps({"key": key, "position": ERASED_AT - 1}).encode())
    yield client
    await client.close()


def kv_writer(views, influence_position: int = ERASED_AT) -> KvWriter:
    return KvWriter(views, InfluenceView(views, ReciprocityQueries(views)), lambda: influence_position)


def pending_erasure(views, bucket: str, participant: str = ANN, position: int = ERASED_AT, tenant: str = "acme"):
    """What the views write in the transaction that applies an erasure, one row per bucket."""
    with views.transaction() as cursor:
        cursor.execute(
            "INSERT INTO view_erasures (bucket, tenant, token, participant, position) VALUES (?, ?, ?, ?, ?)",
            (bucket, tenant, TOMBSTONE.removeprefix("erased-"), participant, position),
        )


def pending(views) -> list[tuple]:
    return views.read("SELECT bucket, participant FROM view_erasures ORDER BY bucket")


@contextlib.asynccontextmanager
async def writing(writer: KvWriter, client, buckets=BUCKETS):
    tasks = [asyncio.create_task(writer.run(client, bucket, asyncio.Event())) for bucket in buckets]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def every_key_and_value(js, bucket: str) -> list[str]:
    """Every key the bucket holds with its value, read key by key."""
    kv = await js.key_value(bucket)
    with contextlib.suppress(nats.js.errors.NoKeysError):
        return [f"{key}={(await kv.get(key)).value.decode()}" for key in await kv.keys()]
    return []


async def replayed(js, bucket: str) -> list[str]:
    """What a watcher that replays the bucket's stream sees: every message left, deletes and purges included."""
    kv = await js.key_value(bucket)
    watcher = await kv.watch(">", include_history=True)
    seen = []
    try:
        async for entry in watcher:
            if entry is None:  # the end of what the stream held when the watch started
                break
            seen.append(f"{entry.operation} {entry.key}={(entry.value or b'').decode()}")
    finally:
        await watcher.stop()
    return seen


async def test_an_erased_participants_keys_are_deleted_then_purged_from_every_bucket(views, nc):
    """A live watcher hears the deletes; afterwards no key, value or marker names ann, in any bucket, and
    everyone else's keys are as they were."""
    js = nc.jetstream()
    live = await (await js.key_value(BUCKET_PAIRS)).watch("acme.>")
    writer = kv_writer(views)
    for bucket in BUCKETS:
        writer.record_written(bucket, ERASED_AT, 0)
        pending_erasure(views, bucket)
    async with writing(writer, nc):
        await until(lambda: asyncio.to_thread(lambda: not pending(views)), what="the erasures carried out")
    for bucket in BUCKETS:
        keys = await every_key_and_value(js, bucket)
        history = await replayed(js, bucket)
        assert not [text for text in keys + history if "acme." in text and ANN in text], bucket
        assert sorted(entry.split("=")[0] for entry in keys) == KEPT[bucket], bucket
        assert sorted(entry.split(" ")[1].split("=")[0] for entry in history) == KEPT[bucket], bucket
    heard = []
    with contextlib.suppress(nats.errors.TimeoutError):
        while True:
            entry = await live.updates(timeout=1)
            if entry is not None:
                heard.append((entry.operation, entry.key))
    await live.stop()
    assert ("DEL", f"acme.{ANN}.bob") in heard and ("DEL", f"acme.amy.{ANN}") in heard


async def test_an_erasure_waits_until_its_bucket_is_written_up_to_it(views, nc):
    """Before the bucket holds the renamed keys, deleting ann's would leave her pairs missing from it."""
    js = nc.jetstream()
    writer = kv_writer(views, influence_position=ERASED_AT - 1)
    writer.record_written(BUCKET_INFLUENCE, ERASED_AT - 1, 0)
    pending_erasure(views, BUCKET_INFLUENCE)
    async with writing(writer, nc, [BUCKET_INFLUENCE]):
        await asyncio.sleep(1.5)  # a check for due erasures has run
    assert pending(views) == [(BUCKET_INFLUENCE, ANN)]
    assert f"acme.{ANN}" in str(await every_key_and_value(js, BUCKET_INFLUENCE))
    async with writing(kv_writer(views, influence_position=ERASED_AT), nc, [BUCKET_INFLUENCE]):
        await until(lambda: asyncio.to_thread(lambda: not pending(views)), what="the erasure carried out")
    assert f"acme.{ANN}" not in str(await every_key_and_value(js, BUCKET_INFLUENCE))


async def test_a_participant_that_is_not_a_subject_token_is_never_purged(views, nc):
    """A wildcard in a row would purge other people's keys: the row is refused and stays, nothing is touched."""
    with pytest.raises(UnsafeSubject):
        erased_subjects(BUCKET_PAIRS, "acme", "*")
    writer = kv_writer(views)
    writer.record_written(BUCKET_BALANCES, ERASED_AT, 0)
    pending_erasure(views, BUCKET_BALANCES, participant=">")
    async with writing(writer, nc, [BUCKET_BALANCES]):
        await asyncio.sleep(1.5)
    assert pending(views) == [(BUCKET_BALANCES, ">")]
    keys = await every_key_and_value(nc.jetstream(), BUCKET_BALANCES)
    assert sorted(entry.split("=")[0] for entry in keys) == sorted(KEYS[BUCKET_BALANCES])
