"""DESIGN section 9's scale-out promise on a real cluster: three clustered nats-server processes, PostgreSQL,
and the roles as processes (two ingest, a query, two projectors, two relays; the projector runs the KV writer
and the influence worker), replicas 3. Under sustained signed load a NATS node, then the active projector,
then the active relay are killed with SIGKILL, and the node comes back. Afterwards every acknowledged fact is in
the log once, the stream equals the log, KV equals HTTP, everything is on 3 servers again, and ingest never
answered a 5xx but a retryable 503. The failover times are printed (with -s) and in the run's summary."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from projections.nats_bus import BUCKET_BALANCES, BUCKET_INFLUENCE, BUCKET_PAIRS, STREAM, bucket_stream, open_client
from services.natsserver import EmbeddedNatsServer
from tests.helpers import until
from tests.nats_cluster import NatsCluster
from tests.processes import Server
from tests.role_cluster import (
    FAILOVER_S,
    JETSTREAM_TIMEOUT_S,
    STREAMS,
    RoleCluster,
    SignedLoad,
    current_streams,
    kill_the_active,
    more_than,
    on_stream,
    projector_progress,
    relay_progress,
    replicated,
    retried,
    stream_ids,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SETTLE_S = 120.0  # for the stream, the views, KV and influence to catch up once the load stops
ROUTES = {  # bucket -> the HTTP route its values equal, by the key's parts after the tenant
    BUCKET_BALANCES: "/v1/tenants/acme/participants/{0}/balance",
    BUCKET_PAIRS: "/v1/tenants/acme/pairs/{0}/{1}",
    BUCKET_INFLUENCE: "/v1/tenants/acme/participants/{0}/influence",
}


@pytest.fixture
def nats(tmp_path: Path):
    cluster = NatsCluster(tmp_path / "nats-cluster").start()
    yield cluster
    cluster.stop()


@pytest.fixture
def roles(tmp_path: Path, postgres_schema_url: str, nats: NatsCluster):
    cluster = RoleCluster(tmp_path / "roles", postgres_schema_url, nats, replicas=3)
    yield cluster
    cluster.stop()


async def test_the_roles_survive_a_nats_node_the_active_projector_and_the_active_relay_killed_under_load(
    nats: NatsCluster, roles: RoleCluster, report_figures: list[str]
):
    await nats.until_ready(replicas=3, timeout_s=60)
    await asyncio.to_thread(roles.start)
    assert roles.sender is not None
    client = await nats.client()
    js = client.jetstream(timeout=JETSTREAM_TIMEOUT_S)
    load = SignedLoad(roles.of_role("ingest"), roles.sender, pause_s=0.02)
    killed: NodeKill | None = None
    try:
        await until(lambda: replicated(js, 3), 60, what="the stream and the buckets on 3 servers")
        load.start()
        await until(lambda: on_stream(js, 100), 60, what="100 facts on the stream")

        killed = await kill_the_stream_leader(nats, js)
        await client.close()  # it may have been connected to the dead node; the observer stays
        js = killed.observer.jetstream(timeout=JETSTREAM_TIMEOUT_S)
        projector_s = await kill_the_active(roles, "projector", partial(projector_progress, roles))
        relay_s = await kill_the_active(roles, "relay", partial(relay_progress, roles, js))
        gap_s = load.longest_gap_s(killed.at, time.monotonic())  # over all the time the node was down
        killed.node.start()
        # Under load a follower's `current` flickers as writes arrive: each stream need only be seen caught up
        # once here; `settled` asks for all of them at once, after the load.
        caught_up: set[str] = set()

        async def each_seen_current() -> bool:
            caught_up.update(await current_streams(js, 3))
            return caught_up == set(STREAMS)

        await until(each_seen_current, FAILOVER_S, what="the node back and each replica seen current")
        acknowledged = load.count()
        await until(lambda: more_than(load, acknowledged + 50), 60, what="50 more facts acknowledged")
        load.stop()
        await settled(roles, js, load)
    finally:
        load.stop()
        await client.close()
        if killed is not None:
            await killed.observer.close()
    figures = [
        f"NATS node {killed.name} (the stream's leader) killed -9: longest gap in acknowledged ingest while it was "
        f"down {gap_s:.2f} s; the stream took the relay's publishes again after {killed.publishing_s:.2f} s",
        f"active projector killed -9: the standby's first page {projector_s:.2f} s later",
        f"active relay killed -9: the standby's first publish {relay_s:.2f} s later",
        f"{load.count()} facts acknowledged, refusals: {Counter(status for status, _ in load.refusals)}",
    ]
    report_figures.extend(figures)
    print("\n" + "\n".join(figures))


@dataclass
class NodeKill:
    node: EmbeddedNatsServer
    name: str
    observer: Client  # connected to the nodes that stay
    at: float  # time.monotonic() of the kill
    publishing_s: float  # until the stream took the relay's publishes again


async def kill_the_stream_leader(nats: NatsCluster, js: JetStreamContext) -> NodeKill:
    """Kills the stream's leader node, and measures how soon the stream took publishes again."""
    info = await retried(lambda: js.stream_info(STREAM), FAILOVER_S, "the stream's leader")
    name = info.cluster.leader
    node = nats.node_named(name)
    # Watched from servers that stay: the times are the cluster's, not a watcher's own reconnection.
    observer = await open_client(nats.url([other for other in nats.nodes if other is not node]), "test")
    watch = observer.jetstream(timeout=JETSTREAM_TIMEOUT_S)
    killed_at = time.monotonic()
    nats.kill(node)
    await until(lambda: on_stream(watch, info.state.last_seq + 1), FAILOVER_S, what="the stream taking publishes")
    return NodeKill(node, name, observer, killed_at, time.monotonic() - killed_at)


async def settled(roles: RoleCluster, js: JetStreamContext, load: SignedLoad) -> None:
    """What must hold once the load stopped, after the kills and the node's return."""
    assert not [(status, answer) for status, answer in load.refusals if status != 503 or not answer["retryable"]]
    log = await asyncio.to_thread(roles.log_ids)
    assert [ident for ident, seen in Counter(log).items() if seen > 1] == []
    assert sorted(ack.event_id for ack in load.acknowledged) == sorted(log)  # each acknowledged fact, once
    await until(lambda: on_stream(js, len(log)), SETTLE_S, what="the stream catching up with the log")
    assert await stream_ids(js) == log
    query, headers = roles.of_role("query")[0], roles.sender.read_headers()
    for bucket in ROUTES:
        unequal: dict[str, object] = {}
        equal = partial(kv_equals_http, js, query, headers, bucket, unequal)
        try:
            await until(equal, SETTLE_S, what=f"{bucket} equal to HTTP")
        except AssertionError as failure:
            with contextlib.suppress(Exception):
                unequal.update(cluster=(await js.stream_info(bucket_stream(bucket))).cluster)
            raise AssertionError(f"{failure}; last seen {unequal}") from None
    await until(lambda: replicated(js, 3), FAILOVER_S, what="every replica current")


async def kv_equals_http(
    js: JetStreamContext, query: Server, headers: dict[str, str], bucket: str, unequal: dict[str, object]
) -> bool:
    """Every key of the bucket holds what HTTP answers (but `position`); every participant has a balance.
    What differed last is kept in `unequal`, for the failure's message.

    Values are read from the bucket's stream leader. A direct get (what `kv.get` does on these buckets) may be
    answered by any replica, and the node that came back serves what it held when it died until it has
    caught up: NATS's choice for direct reads (README, "NATS cluster"). `settled` asks for every replica
    current after this."""
    try:
        kv = await js.key_value(bucket)
        keys = await kv.keys()
        values = {
            key: json.loads((await js.get_msg(bucket_stream(bucket), subject=f"$KV.{bucket}.{key}")).data)
            for key in keys
        }
    except Exception as failure:  # the cluster answering slowly, or no key yet
        unequal.update(reading=repr(failure))
        return False
    if bucket == BUCKET_BALANCES:
        _, listed = await asyncio.to_thread(query.get, "/v1/tenants/acme/balances?limit=1000", headers)
        if sorted(values) != sorted(f"acme.{item['participant']}" for item in listed["items"]):
            unequal.update(keys=sorted(values), listed=[item["participant"] for item in listed["items"]])
            return False
    for key, stored in values.items():
        path = ROUTES[bucket].format(*key.split(".")[1:])
        status, http = await asyncio.to_thread(query.get, path, headers)
        if status != 200 or {**stored, "position": None} != {**http, "position": None}:
            unequal.update(key=key, kv=stored, http_status=status, http=http)
            with contextlib.suppress(Exception):
                unequal.update(direct_get=json.loads((await kv.get(key)).value))
            return False
    return True
