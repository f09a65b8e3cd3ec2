"""A three-node JetStream cluster (real nats-server processes on loopback): the stream and the buckets kept on
RECIPROCITY_NATS_REPLICAS servers, raised at start and never lowered; `serve` given the servers as a
comma-separated URL rides out a node killed with SIGKILL while facts keep arriving; a client fails over to a
server it only discovered, with the credentials it was given. And on a single server, three replicas asked
is a warning, not a service that stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from functools import partial
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from ledger.store import open_ledger
from projections.nats_bus import (
    BUCKET_BALANCES,
    BUCKETS,
    STREAM,
    bucket_stream,
    connect,
    ensure_buckets,
    ensure_stream,
    open_client,
)
from services.bootstrap import open_components
from services.natsserver import EmbeddedNatsServer
from services.settings import Settings
from tests.conftest import make_sender
from tests.helpers import Sender, envelope, give, received, until
from tests.nats_cluster import PASSWORD, NatsCluster
from tests.processes import Server, cli, free_port

pytestmark = pytest.mark.slow

PEOPLE = [f"p{n}" for n in range(8)]
STREAMS = (STREAM, *(bucket_stream(bucket) for bucket in BUCKETS))
OUTAGE_S = 3.0  # how long facts keep arriving with the node down


@pytest.fixture
def cluster(tmp_path: Path):
    cluster = NatsCluster(tmp_path / "nats-cluster").start()
    yield cluster
    cluster.stop()


class Poster(threading.Thread):
    """Posts signed gives one after another, as an app would, until stopped; keeps every answer's status."""

    def __init__(self, server: Server, sender: Sender) -> None:
        super().__init__(name="poster", daemon=True)
        self.server, self.sender = server, sender
        self.statuses: list[int | str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            body = json.dumps(envelope(give(f"g{n}", PEOPLE[n % 8], PEOPLE[(3 * n + 1) % 8], value="1"))).encode()
            try:
                status, _ = self.server.post(self.sender.path, body, self.sender.headers(body))
            except OSError as failure:  # no answer at all is a failure too, kept to be reported
                status = type(failure).__name__
            self.statuses.append(status)
            n += 1
            time.sleep(0.02)

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


async def stream_state(js: JetStreamContext, stream: str):
    """The stream's info, or None while the cluster cannot answer (a leader being elected)."""
    try:
        return await js.stream_info(stream)
    except Exception:
        return None


async def replicated(js: JetStreamContext, replicas: int) -> bool:
    """Every stream on `replicas` servers, each follower current."""
    for stream in STREAMS:
        info = await stream_state(js, stream)
        if info is None or info.config.num_replicas != replicas or info.cluster is None:
            return False
        followers = info.cluster.replicas or []
        if len(followers) != replicas - 1 or not all(peer.current and not peer.offline for peer in followers):
            return False
    return True


async def stream_ids(js: JetStreamContext) -> list[str]:
    info = await js.stream_info(STREAM)
    return [
        (await js.get_msg(STREAM, seq=seq)).headers["Nats-Msg-Id"]
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]


def log_ids(settings: Settings) -> list[str]:
    ledger = open_ledger(settings.database_url, settings.data_dir)
    try:
        return [stored.fact.event_id for stored in ledger.read_log(0, 1_000_000)]
    finally:
        ledger.close()


async def kv_equals_http(js: JetStreamContext, server: Server, sender: Sender) -> bool:
    kv = await js.key_value(BUCKET_BALANCES)
    for person in PEOPLE:
        status, http = server.get(f"/v1/tenants/acme/participants/{person}/balance", sender.read_headers())
        try:
            stored = json.loads((await kv.get(f"acme.{person}")).value)
        except nats.js.errors.KeyNotFoundError:
            return False
        if status != 200 or {**stored, "position": None} != {**http, "position": None}:
            return False
    return True


async def test_serve_keeps_the_stream_equal_to_the_log_through_the_loss_of_a_nats_node(
    cluster, sqlite_settings, tmp_path
):
    await cluster.until_ready(replicas=3)
    sender = make_sender(sqlite_settings, "acme", "crm")
    client = await cluster.client()
    js = client.jetstream()
    # Made earlier with one replica: serve raises them to the setting at start.
    await ensure_stream(js, 120.0, replicas=1)
    await ensure_buckets(js, replicas=1)
    assert (await js.stream_info(STREAM)).config.num_replicas == 1
    server = Server(
        sqlite_settings, tmp_path / "serve.log", RECIPROCITY_NATS_URL=cluster.url(), RECIPROCITY_NATS_REPLICAS="3"
    )
    server.start()
    poster = Poster(server, sender)
    try:
        await until(lambda: replicated(js, 3), 30, what="the stream and the buckets on 3 servers")
        poster.start()

        led: dict[str, float] = {}  # when each stream leader was first seen, after the kill

        async def published(watch: JetStreamContext, after: int) -> bool:
            info = await stream_state(watch, STREAM)
            if info is not None and info.cluster is not None and info.cluster.leader:
                led.setdefault(info.cluster.leader, time.monotonic())
            return info is not None and info.state.last_seq > after

        await until(lambda: published(js, 50), 30, what="50 facts in the stream")
        tail = await asyncio.to_thread(
            cli, sqlite_settings, "tail", "acme", "--nats-url", cluster.url(), "--limit", "3", "--json"
        )  # the admin CLI connects the same way, to the same list
        assert tail.returncode == 0, tail.stderr
        first_three = await asyncio.to_thread(log_ids, sqlite_settings)
        assert [json.loads(line)["event_id"] for line in tail.stdout.splitlines()] == first_three[:3]
        for role in ("follower", "leader"):
            info = await js.stream_info(STREAM)
            assert info.cluster.leader and info.cluster.replicas
            name = info.cluster.leader if role == "leader" else info.cluster.replicas[0].name
            node = cluster.node_named(name)
            # Watched from a server that stays, asking often: the times are the cluster's, not a watcher's
            # own reconnection or request timeout.
            observer = await open_client(cluster.url([other for other in cluster.nodes if other is not node]), "test")
            watch = observer.jetstream(timeout=0.5)
            led.clear()
            killed_at = time.monotonic()
            cluster.kill(node)
            try:
                await until(partial(published, watch, info.state.last_seq), 60, what=f"the {role} replaced")
            finally:
                await observer.close()
            accepting_s = time.monotonic() - killed_at
            leaders = ", ".join(f"{leader} after {at - killed_at:.2f} s" for leader, at in led.items())
            print(f"\nstream {role} {name} killed -9: the stream answered with leader {leaders}; it accepted "
                  f"the relay's publishes again after {accepting_s:.2f} s")  # fmt: skip
            await asyncio.sleep(OUTAGE_S)
            node.start()
            await until(lambda: replicated(js, 3), 60, what=f"the {role} back and current")
        poster.stop()
        assert poster.statuses and set(poster.statuses) == {201}, sorted(set(poster.statuses), key=str)

        expected = await asyncio.to_thread(log_ids, sqlite_settings)
        assert len(expected) == len(poster.statuses)

        async def stream_caught_up() -> bool:
            info = await stream_state(js, STREAM)
            return info is not None and info.state.messages >= len(expected)

        await until(stream_caught_up, 30, what="the stream catching up with the log")
        assert await stream_ids(js) == expected
        await until(lambda: kv_equals_http(js, server, sender), 30, what="KV equal to HTTP")
        assert await replicated(js, 3)

        with capture_logs() as logs:  # a setting below what the cluster keeps lowers nothing
            await ensure_stream(js, 120.0, replicas=1)
        assert (await js.stream_info(STREAM)).config.num_replicas == 3
        assert [
            (line["replicas"], line["asked"]) for line in logs if line["event"] == "nats_replicas_above_setting"
        ] == [(3, 1)]
    finally:
        poster.stop()
        server.stop()
        await client.close()
    serve_log = (tmp_path / "serve.log").read_text()
    assert PASSWORD not in serve_log
    (starting,) = [json.loads(line) for line in serve_log.splitlines() if '"event":"starting"' in line]
    assert starting["nats"] == cluster.url().replace(PASSWORD, "***")


async def test_a_client_fails_over_to_a_server_it_only_discovered_with_the_credentials_it_was_given(cluster):
    """Given one server of three, with a user and password: the client learns the others from the cluster,
    and after its server dies it reconnects to one of them. nats-py given the URL as it is sends a
    discovered server no credentials (the control below is refused); connect() hands them over apart."""
    await cluster.until_ready(replicas=1)
    first = cluster.nodes[0]
    client = await connect(cluster.url([first]), "test-discovered")
    refusals: list[str] = []

    async def refused(error: Exception) -> None:
        refusals.append(str(error))

    # The control: nats-py given the same URL as a plain string, its password read from the URL alone.
    plain = await nats.connect(
        cluster.url([first]), error_cb=refused, max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )
    try:

        async def discovered() -> bool:
            # (The plain client lists its own server again: its entry in the pool carries the password.)
            return len(client.discovered_servers) == 2 and len(plain.discovered_servers) >= 2

        await until(discovered, 10, what="the other two servers discovered")
        cluster.kill(first)

        async def elsewhere() -> bool:
            return client.is_connected and client.connected_url.port != first.port

        await until(elsewhere, 20, what="a reconnection to a discovered server")
        answers: list[dict] = []

        async def jetstream_answers() -> bool:
            # JetStream may be electing a new meta leader for a while after the kill: ask until it answers.
            with contextlib.suppress(nats.errors.TimeoutError):
                answers.append(json.loads((await client.request("$JS.API.INFO", b"", timeout=2)).data))
            return bool(answers)

        await until(jetstream_answers, 30, what="JetStream answering the reconnected client")
        assert "error" not in answers[-1], answers[-1]

        async def plain_refused() -> bool:
            return any("authorization violation" in refusal.lower() for refusal in refusals)

        await until(plain_refused, 20, what="the plain client refused by the discovered servers")
        assert not plain.is_connected
    finally:
        await client.close()
        await plain.close()


async def test_three_replicas_asked_of_a_single_server_is_a_warning_and_the_service_runs(tmp_path, sqlite_settings):
    server = EmbeddedNatsServer(tmp_path / "nats-home", free_port())
    server.start()
    settings = sqlite_settings.with_(nats_url=server.url, nats_replicas=3)
    sender = make_sender(settings, "acme", "crm")
    client = await open_client(server.url, "test")
    try:
        with capture_logs() as logs:
            components = await open_components(settings)
            try:
                await asyncio.wait_for(components.bus.prepared.wait(), 20)
                outcomes = await components.committer.submit([received(give("g1", "ann", "bob"), sender.tenant)])
                assert outcomes[0].status == "recorded"

                async def relayed() -> bool:
                    return components.bus.relay.position >= components.ledger.head_position()

                await until(relayed, 20, what="the fact in the stream")
            finally:
                await components.close()
        js = client.jetstream()
        assert [(await js.stream_info(stream)).config.num_replicas for stream in STREAMS] == [1, 1, 1, 1]
        short = {(line["stream"], line["replicas"], line["asked"]) for line in logs
                 if line["event"] == "nats_replicas_below_setting"}  # fmt: skip
        assert short == {(stream, 1, 3) for stream in STREAMS}
    finally:
        await client.close()
        server.stop()
