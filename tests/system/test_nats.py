"""NATS, against a real nats-server process: the stream follows the log exactly once, in order, through
relay crashes and NATS outages; the views in KV equal the HTTP answers; the micro service answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import nats
import pytest

from ledger.facts import Give
from ledger.group_commit import FactWriter
from ledger.store import StoredFact, open_ledger
from projections import reciprocity
from projections.follower import Follower
from projections.influence_view import InfluenceView
from projections.kv import KvWriter
from projections.nats_bus import (
    BUCKET_BALANCES,
    EXPECTED_LAST_MSG_ID_HEADER,
    EXPECTED_LAST_SEQUENCE_HEADER,
    MSG_ID_HEADER,
    PARTICIPANTS_HEADER,
    POSITION_HEADER,
    STREAM,
    connect,
    ensure_buckets,
    ensure_stream,
    event_subject,
    open_client,
)
from projections.publisher import AckedPublisher, Message, PublishRefused
from projections.queries import ReciprocityQueries
from projections.relay import Relay, stream_position
from projections.runtime import open_view_store
from services.bootstrap import open_components
from services.http.app import create_app
from tests.conftest import make_sender
from tests.helpers import acknowledgement, community, give, introduction, post_all, received, until
from tests.processes import environment

DUPLICATE_WINDOW_S = 1.0
PARTICIPANTS = PARTICIPANTS_HEADER


@pytest.fixture
def bus_settings(settings, nats_server):
    return settings.with_(nats_url=nats_server.url, nats_duplicate_window_s=DUPLICATE_WINDOW_S)


@pytest.fixture
async def bus_client(aiohttp_client, bus_settings):
    sender = make_sender(bus_settings, "acme", "crm")
    components = await open_components(bus_settings)
    await asyncio.wait_for(components.bus.prepared.wait(), 20)  # the stream and buckets exist
    client = await aiohttp_client(create_app(bus_settings, components))
    client.sender, client.components = sender, components
    yield client
    await components.close()


async def stream_ids(url: str) -> list[str]:
    """The event ids in the stream, in stream order (none while there is no stream)."""
    client = await open_client(url, "test")
    try:
        js = client.jetstream()
        try:
            info = await js.stream_info(STREAM)
        except nats.js.errors.NotFoundError:
            return []
        if info.state.messages == 0:  # (an empty stream reports first_seq 0, which get_msg refuses)
            return []
        ids = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg(STREAM, seq=seq)
            ids.append(message.headers["Nats-Msg-Id"])
        return ids
    finally:
        await client.close()


def log_ids(settings) -> list[str]:
    ledger = open_ledger(settings.database_url, settings.data_dir)
    try:
        return [f.fact.event_id for f in ledger.read_log(0, 1_000_000)]
    finally:
        ledger.close()


async def stream_equals_log(settings, timeout_s: float = 20.0) -> None:
    expected = await asyncio.to_thread(log_ids, settings)

    async def caught_up() -> bool:
        return len(await stream_ids(settings.nats_url)) >= len(expected)

    await until(caught_up, timeout_s, what="the stream catching up with the log")
    assert await stream_ids(settings.nats_url) == expected


async def test_the_stream_equals_the_log_after_a_normal_run(bus_client, bus_settings):
    """Every fact once, in position order, with its id and position in the headers and the fact as body."""
    await post_all(bus_client, [give(f"g{n}", "ann", "bob") for n in range(30)] + [acknowledgement("a1", "bob", "g1")])
    await stream_equals_log(bus_settings)
    client = await open_client(bus_settings.nats_url, "test")
    message = await client.jetstream().get_msg(STREAM, seq=1)
    body = json.loads(message.data)
    assert message.subject == "reciprocity.events.acme.give_recorded"
    assert message.headers["Reciprocity-Position"] == str(body["position"]) and body["external_id"] == "g0"
    await client.close()


RELAY_PROCESS = """
import asyncio, sys
from pathlib import Path
from projections.relay import Relay
from projections.nats_bus import connect, ensure_stream
from ledger.store import open_ledger

async def main():
    ledger = open_ledger(sys.argv[2] or None, Path(sys.argv[1]))
    client = await connect(sys.argv[3], "relay-under-test")
    js = client.jetstream()
    await ensure_stream(js, float(sys.argv[4]))
    print("relaying", flush=True)
    while True:
        try:
            await Relay(ledger).run(client, asyncio.Event())
        except Exception:
            await asyncio.sleep(0.1)
asyncio.run(main())
"""


def start_relay(settings) -> subprocess.Popen:
    relay = subprocess.Popen(
        [sys.executable, "-c", RELAY_PROCESS, str(settings.data_dir), settings.database_url or "",
         settings.nats_url, str(DUPLICATE_WINDOW_S)],
        env=environment(settings), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert relay.stdout.readline().strip() == "relaying"
    return relay


async def test_the_stream_equals_the_log_after_the_relay_is_killed_many_times(bus_settings):
    """SIGKILL the relay ten times while facts are being written: nothing missing, nothing twice."""
    ledger = open_ledger(bus_settings.database_url, bus_settings.data_dir)
    writer = FactWriter(ledger)
    facts = [received(f) for f in community(2_000)]
    for kill in range(10):
        relay = start_relay(bus_settings)
        chunk = facts[kill * len(facts) // 10 : (kill + 1) * len(facts) // 10]
        for start in range(0, len(chunk), 50):
            await asyncio.to_thread(writer.commit, chunk[start : start + 50])
        await asyncio.sleep(0.05 * (kill % 4))  # kill at different moments of the relay's pipeline
        relay.send_signal(signal.SIGKILL)
        relay.wait(10)
    relay = start_relay(bus_settings)
    try:
        await stream_equals_log(bus_settings)
    finally:
        relay.kill()
        relay.wait(10)
        ledger.close()


async def test_ingest_answers_201_through_a_nats_outage_and_the_stream_and_kv_converge(
    bus_client, bus_settings, nats_server
):
    """NATS stopped for longer than the duplicate window: ingest keeps answering 201, and once NATS is back
    the stream equals the log (nothing republished) and the buckets equal the views."""
    await post_all(bus_client, [give(f"g{n}", "ann", "bob") for n in range(10)])
    await stream_equals_log(bus_settings)
    nats_server.stop()
    outage = [give(f"o{n}", "bob", "cas", value="2") for n in range(20)]
    for fact in outage:
        response = await bus_client.sender.post(bus_client, fact)
        assert response.status == 201
    await asyncio.sleep(DUPLICATE_WINDOW_S * 2)
    nats_server.start()
    await stream_equals_log(bus_settings)
    await kv_equals_http(bus_client, bus_settings, "acme.cas", "/v1/tenants/acme/participants/cas/balance")


async def kv_equals_http(
    client, settings, key: str, path: str, bucket: str = "reciprocity_balances", timeout_s: float = 20.0
) -> None:
    """Polls until the bucket's value equals the HTTP answer (both catch up in the background)."""
    nc = await open_client(settings.nats_url, "test")
    kv = await nc.jetstream().key_value(bucket)
    seen: dict[str, object] = {}

    async def equal() -> bool:
        http = await client.get(path, headers=client.sender.read_headers())
        seen["http"] = await http.json()
        try:
            seen["kv"] = json.loads((await kv.get(key)).value)
        except nats.js.errors.KeyNotFoundError:
            return False
        return http.status == 200 and _without_position(seen["kv"]) == _without_position(seen["http"])

    try:
        await until(equal, timeout_s, what=f"KV {bucket} {key} equal to HTTP {path}")
    except AssertionError as unequal:
        raise AssertionError(f"{unequal}; last seen {seen}") from None
    finally:
        await nc.close()


def _without_position(answer: object) -> object:
    return {k: v for k, v in answer.items() if k != "position"} if isinstance(answer, dict) else answer


async def test_kv_values_equal_the_http_answers(bus_client, bus_settings):
    await post_all(
        bus_client,
        [give("g1", "ann", "bob", value="5"), give("g2", "bob", "ann"), introduction("i1", "cas", "ann", "bob")],
    )
    await kv_equals_http(bus_client, bus_settings, "acme.ann", "/v1/tenants/acme/participants/ann/balance")
    await kv_equals_http(
        bus_client, bus_settings, "acme.ann.bob", "/v1/tenants/acme/pairs/ann/bob", "reciprocity_pairs"
    )
    await kv_equals_http(
        bus_client, bus_settings, "acme.ann", "/v1/tenants/acme/participants/ann/influence", "reciprocity_influence"
    )


async def test_a_kv_watch_sees_a_new_fact(bus_client, bus_settings):
    nc = await open_client(bus_settings.nats_url, "test")
    kv = await nc.jetstream().key_value("reciprocity_balances")
    watcher = await kv.watch("acme.dan")
    position = await post_all(bus_client, [give("g1", "dan", "eve", value="3")])
    try:

        async def seen() -> bool:
            try:
                update = await watcher.updates(timeout=1)
            except (TimeoutError, nats.errors.TimeoutError):
                return False
            return update is not None and json.loads(update.value)["given"]["value"] == "3"

        await until(seen, what="a watch update for acme.dan")
    finally:
        await watcher.stop()
        await nc.close()
    assert position > 0


async def test_balances_offered_by_the_projector_go_to_kv_as_they_are_and_a_missed_page_is_read_back(
    settings, nats_server
):
    """The projector hands each page's balances to the KV writer, which writes them without reading the
    rows back when the page starts where the bucket was written up to. A page it never got (dropped while
    NATS was away, say) is read from the rows instead: nothing is lost either way."""
    ledger = open_ledger(settings.database_url, settings.data_dir)
    views = open_view_store(settings.database_url, settings.data_dir)
    queries = ReciprocityQueries(views)
    writer = KvWriter(views, InfluenceView(views, queries), lambda: 0)
    offered: list[int] = []

    def on_page(after: int, applied: reciprocity.AppliedPage) -> None:
        if after > 0:  # the first page never reaches the writer
            offered.append(applied.position)
            writer.offer(after, applied)

    follower = Follower(ledger, reciprocity.ReciprocityProjection(views), lambda: views.position("reciprocity"),
                        on_page=on_page)  # fmt: skip
    fact_writer = FactWriter(ledger)
    client = await connect(nats_server.url, "test-offer")
    wakeup = asyncio.Event()
    task = None
    try:
        await ensure_buckets(client.jetstream())
        kv = await client.jetstream().key_value(BUCKET_BALANCES)

        async def kv_answer(participant: str) -> dict | None:
            try:
                return json.loads((await kv.get(f"acme.{participant}")).value)
            except nats.js.errors.KeyNotFoundError:
                return None

        async def all_written(participants: list[str]) -> bool:
            for participant in participants:
                expected = json.loads(queries.balance_json("acme", participant))
                if _without_position(await kv_answer(participant)) != _without_position(expected):
                    return False
            return True

        fact_writer.commit([received(give("g1", "ann", "bob", value="5"))])
        follower.catch_up()  # page 1: not offered
        fact_writer.commit([received(give("g2", "cas", "dan", value="2"))])
        follower.catch_up()  # page 2: offered, but it does not start where the bucket is (0)
        task = asyncio.create_task(writer.run(client, BUCKET_BALANCES, wakeup))
        await until(lambda: all_written(["ann", "bob", "cas", "dan"]), what="pages 1 and 2 in KV")
        await stop(task)  # it records how far it wrote, and the next run starts there

        for fact in (give("g3", "eve", "ann", value="1"), give("g4", "fay", "gus", value="1")):
            fact_writer.commit([received(fact)])
            follower.catch_up()  # pages 3 and 4: offered, and page 3 starts where the bucket is
        task = asyncio.create_task(writer.run(client, BUCKET_BALANCES, wakeup))
        await until(lambda: all_written(["ann", "eve", "fay", "gus"]), what="pages 3 and 4 in KV")
        page_3, page_4 = offered[-2:]
        # Written page by page as offered; read back, both pages' rows would carry the later position.
        assert [(await kv_answer(p))["position"] for p in ("eve", "fay")] == [page_3, page_4]
        assert not writer.offered, "every offered page was written or passed over"
    finally:
        if task is not None:
            await stop(task)
        await client.close()
        views.close()
        ledger.close()


async def test_the_relay_and_the_follower_read_the_log_once_per_wake_and_not_while_idle(settings, nats_server):
    """A page shorter than a full one means the log held no more when it was read (after the wakeup was
    cleared), so neither loop reads it again until woken: a wake per commit costs one read, an idle loop none."""
    relay_ledger = open_ledger(settings.database_url, settings.data_dir)
    follower_ledger = open_ledger(settings.database_url, settings.data_dir)
    views = open_view_store(settings.database_url, settings.data_dir)
    reads = {"relay": 0, "follower": 0}

    def counting(ledger, name: str) -> None:
        read_log = ledger.read_log

        def counted(*args, **kwargs):
            reads[name] += 1
            return read_log(*args, **kwargs)

        ledger.read_log = counted

    counting(relay_ledger, "relay")
    counting(follower_ledger, "follower")
    projection = reciprocity.ReciprocityProjection(views)
    follower = Follower(follower_ledger, projection, partial(views.position, "reciprocity"))
    writer = FactWriter(relay_ledger)
    client = await connect(nats_server.url, "test-reads")
    relay_wakeup, follower_wakeup = asyncio.Event(), asyncio.Event()
    tasks = []
    try:
        await ensure_stream(client.jetstream(), DUPLICATE_WINDOW_S)
        with ThreadPoolExecutor(max_workers=1) as executor:
            tasks = [
                asyncio.create_task(Relay(relay_ledger, poll_s=30).run(client, relay_wakeup)),
                asyncio.create_task(follower.follow(follower_wakeup, executor, poll_interval_s=30)),
            ]
            for n in range(3):
                await asyncio.to_thread(writer.commit, [received(give(f"g{n}", "ann", "bob"))])
                relay_wakeup.set()
                follower_wakeup.set()

                async def both_have_it(at: int = n + 1) -> bool:
                    return follower.position() == at and len(await stream_ids(nats_server.url)) == at

                await until(both_have_it, what=f"fact {n + 1} in the views and the stream")
            await asyncio.sleep(0.5)  # idle: a loop that read again without being woken would show here
            # At most one read at start and one per wake (three facts need three reads: a loop that starts after
            # the first commit reads it at once); a wake that came while a page was being handled may add one
            # read that finds nothing.
            assert 3 <= reads["relay"] <= 6, reads
            assert 3 <= reads["follower"] <= 6, reads
            for task in tasks:
                await stop(task)
    finally:
        for task in tasks:
            await stop(task)
        await client.close()
        views.close()
        relay_ledger.close()
        follower_ledger.close()


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_the_micro_service_is_discoverable_and_answers_like_http(bus_client, bus_settings):
    position = await post_all(bus_client, [give("g1", "ann", "bob", value="5"), give("g2", "bob", "ann")])
    path = f"/v1/tenants/acme/pairs/bob/ann?min_position={position}"
    http = await (await bus_client.get(path, headers=bus_client.sender.read_headers())).json()
    nc = await open_client(bus_settings.nats_url, "test")
    try:
        ping = json.loads((await nc.request("$SRV.PING.reciprocity", b"", timeout=5)).data)
        assert ping["name"] == "reciprocity" and ping["type"] == "io.nats.micro.v1.ping_response"
        reply = await nc.request("reciprocity.query.acme.pair", b'{"a": "bob", "b": "ann"}', timeout=5)
        assert json.loads(reply.data) == http

        async def influence_computed() -> bool:
            answer = await bus_client.get("/v1/tenants/acme/influence", headers=bus_client.sender.read_headers())
            return len((await answer.json())["items"]) == 2

        await until(influence_computed, what="influence computed")
        for endpoint, asked, path in (
            ("balance", {"participant": "ann"}, "/v1/tenants/acme/participants/ann/balance"),
            ("maintenance", {"participant": "ann"}, "/v1/tenants/acme/maintenance?participant=ann"),
            ("influence", {"limit": 1}, "/v1/tenants/acme/influence?limit=1"),
            ("graph", {}, "/v1/tenants/acme/graph"),
            (
                "graph",
                {"limit": 1, "since": "2020-01-01T00:00:00Z"},
                "/v1/tenants/acme/graph?limit=1&since=2020-01-01T00:00:00Z",
            ),
            ("graph", {"context": {"subject": "none"}}, "/v1/tenants/acme/graph?context.subject=none"),
            ("ties", {"participant": "bob", "limit": 1}, "/v1/tenants/acme/participants/bob/ties?limit=1"),
            ("upkeep", {"as_of": "2026-01-01T00:00:00Z"}, "/v1/tenants/acme/upkeep?as_of=2026-01-01T00:00:00Z"),
            ("upkeep", {}, "/v1/tenants/acme/upkeep"),
        ):
            http = await (await bus_client.get(path, headers=bus_client.sender.read_headers())).json()
            reply = await nc.request(f"reciprocity.query.acme.{endpoint}", json.dumps(asked).encode(), timeout=5)
            assert reply.data and json.loads(reply.data) == http, (endpoint, reply.headers)
        missing = await nc.request("reciprocity.query.acme.balance", b'{"participant": "zed"}', timeout=5)
        assert missing.headers["Nats-Service-Error-Code"] == "404"
        bad = await nc.request("reciprocity.query.acme.maintenance", b'{"who": "ann"}', timeout=5)
        assert bad.headers["Nats-Service-Error-Code"] == "400"
        for endpoint, asked in (
            ("graph", {"limit": 5001}),
            ("graph", {"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}),
            ("graph", {"context": {"subject": "x", "location": "y"}}),
            ("ties", {"participant": "ann", "cursor": "bm9wZQ"}),
            ("upkeep", {"cursor": "WzFd"}),
        ):
            bad = await nc.request(f"reciprocity.query.acme.{endpoint}", json.dumps(asked).encode(), timeout=5)
            assert bad.headers["Nats-Service-Error-Code"] == "400", (endpoint, asked)
        unknown = await nc.request("reciprocity.query.acme.ties", b'{"participant": "zed"}', timeout=5)
        assert unknown.headers["Nats-Service-Error-Code"] == "404"
        other = await nc.request("reciprocity.query.zeta.balance", b'{"participant": "ann"}', timeout=5)
        assert other.headers["Nats-Service-Error-Code"] == "404"
    finally:
        await nc.close()


async def test_tail_follows_one_tenants_facts_and_a_durable_consumer_continues(bus_client, bus_settings):
    await post_all(bus_client, [give(f"g{n}", "ann", "bob") for n in range(3)])
    zeta = make_sender(bus_settings, "zeta", "crm")
    await bus_client.components.registry.refresh()
    await zeta.post(bus_client, give("z1", "ann", "bob"))
    await stream_equals_log(bus_settings)
    first = _lines(await asyncio.to_thread(_tail_cli, bus_settings, "--durable", "audit", "--limit", "2"))
    second = _lines(await asyncio.to_thread(_tail_cli, bus_settings, "--durable", "audit", "--limit", "1"))
    assert [json.loads(line)["external_id"] for line in first + second] == ["g0", "g1", "g2"]
    # The consumer follows acme's subjects: taken for zeta it would print acme's facts, so it is refused.
    refused = await asyncio.to_thread(_tail_cli, bus_settings, "--durable", "audit", "--limit", "1", tenant="zeta")
    assert refused.returncode != 0
    assert "durable consumer 'audit' follows 'reciprocity.events.acme.>'" in json.loads(refused.stdout)["error"]
    ephemeral = await asyncio.to_thread(_tail_cli, bus_settings, "--limit", "1", tenant="zeta")
    assert [json.loads(line)["external_id"] for line in _lines(ephemeral)] == ["z1"]


def _lines(done) -> list[str]:
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _tail_cli(settings, *args: str, tenant: str = "acme"):
    from tests.processes import cli

    return cli(settings.with_(nats_url=None), "tail", tenant, "--nats-url", settings.nats_url, "--json", *args)


def give_record(event_id: str) -> Give:
    """A recorded give whose content does not matter, only its identity."""
    return Give(
        event_id=event_id, tenant="acme", source="crm", external_id=event_id, occurred_at="2026-06-01T00:00:00.000000Z",
        recorded_at="2026-06-01T00:00:00.000000Z", occurred_at_sent=False,
        giver="ann", receiver="bob", kind="help", value="1", context=None, note=None,
    )  # fmt: skip


async def test_a_chained_batch_asks_one_ack_and_a_broken_chain_is_refused_with_nothing_after_the_break(
    nats_server,
):
    """The relay asks for the ack of a page's last message only. That proves the page whole because every
    message names its predecessor: once one is not stored, none after it is, and the last ack is a refusal."""
    client = await connect(nats_server.url, "test-chain")
    try:
        js = client.jetstream()
        await ensure_stream(js, DUPLICATE_WINDOW_S)

        def message(n: int, previous: str | None) -> Message:
            headers = {MSG_ID_HEADER: f"e{n}", POSITION_HEADER: str(n)}
            if previous:
                headers[EXPECTED_LAST_MSG_ID_HEADER] = previous
            return event_subject("acme", "give.recorded"), b"{}", headers

        async with AckedPublisher(client) as publisher:
            good = [message(1, None), message(2, "e1"), message(3, "e2")]
            assert await publisher.publish(good, 5, chained=True) == 3
            broken = [message(4, "e3"), message(5, "e-nobody"), message(6, "e5"), message(7, "e6")]
            with pytest.raises(PublishRefused, match=r"1 of 1 acks refused: .*last msg"):
                await publisher.publish(broken, 5, chained=True)
        assert await stream_ids(nats_server.url) == ["e1", "e2", "e3", "e4"]
    finally:
        await client.close()


async def test_after_aligning_the_relay_expects_the_streams_last_sequence_not_an_id_it_may_have_forgotten(
    nats_server,
):
    """A restarted nats-server always knows its stream's last sequence, but older releases know its last
    message id only inside the duplicate window; so the first message after aligning expects the sequence,
    and the server holds it to that: a wrong one is refused."""
    client = await connect(nats_server.url, "test-align")
    try:
        js = client.jetstream()
        await ensure_stream(js, DUPLICATE_WINDOW_S)

        def page(*numbers: int) -> list[StoredFact]:
            stored = {n: {**give_record(f"e{n}").to_json(), "participants": ["t1", "t2"]} for n in numbers}
            return [StoredFact(n, give_record(f"e{n}"), stored[n]) for n in numbers]

        async with AckedPublisher(client) as publisher:
            await publisher.publish(Relay.chained_messages(page(1, 2), None), 5, chained=True)
            end = await stream_position(js)
            assert end == (2, "e2", 2)
            aligned = list(Relay.chained_messages(page(3, 4), end.event_id, end.sequence))
            assert [dict(headers) for _, _, headers in aligned] == [
                {MSG_ID_HEADER: "e3", POSITION_HEADER: "3", PARTICIPANTS: "t1 t2", EXPECTED_LAST_SEQUENCE_HEADER: "2"},
                {MSG_ID_HEADER: "e4", POSITION_HEADER: "4", PARTICIPANTS: "t1 t2", EXPECTED_LAST_MSG_ID_HEADER: "e3"},
            ]
            assert await publisher.publish(aligned, 5, chained=True) == 2
            with pytest.raises(PublishRefused, match=r"1 of 1 acks refused: .*sequence"):
                await publisher.publish(Relay.chained_messages(page(5), "e4", 3), 5, chained=True)
        assert await stream_ids(nats_server.url) == ["e1", "e2", "e3", "e4"]
    finally:
        await client.close()


async def test_a_nats_that_lost_its_store_gets_the_stream_and_the_buckets_again_whole(
    bus_client, bus_settings, nats_server
):
    """NATS back without its store (a deleted data dir here; a new server, or writes not yet synced when it
    crashed, are the same to us): the stream is made again and holds the whole log, and the buckets hold the
    views again, though no new fact touched those keys."""
    await post_all(bus_client, [give("g1", "ann", "bob", value="5"), introduction("i1", "cas", "ann", "bob")])
    await stream_equals_log(bus_settings)
    await kv_equals_http(bus_client, bus_settings, "acme.ann", "/v1/tenants/acme/participants/ann/balance")
    nats_server.stop()
    shutil.rmtree(nats_server.directory / "jetstream")
    nats_server.start()
    # Usually within 2 s; once in about two hundred runs it took more than 20 s (not explained yet).
    await stream_equals_log(bus_settings, timeout_s=60)
    balance, pair = "/v1/tenants/acme/participants/ann/balance", "/v1/tenants/acme/pairs/ann/bob"
    influence = "/v1/tenants/acme/participants/ann/influence"
    await kv_equals_http(bus_client, bus_settings, "acme.ann", balance, timeout_s=60)
    await kv_equals_http(bus_client, bus_settings, "acme.ann.bob", pair, "reciprocity_pairs", timeout_s=60)
    await kv_equals_http(bus_client, bus_settings, "acme.ann", influence, "reciprocity_influence", timeout_s=60)
