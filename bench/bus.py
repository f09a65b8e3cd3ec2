"""NATS benchmark: relay throughput, end-to-end lag to a KV watch, micro service latency.

    .venv/bin/python bench/bus.py                    # SQLite store, an embedded nats-server on a free port
    .venv/bin/python bench/bus.py --relay-facts 50000 --rate 2000 --seconds 10

  relay     N facts written straight into a fresh store, then the relay alone publishes them to an
            empty stream: events/s until the stream holds them all
  lag       `reciprocity serve` (everything: ingest, projections, relay, KV writer, micro service) takes
            single-fact webhooks at a steady rate from another process, while a third one watches
            `$KV.reciprocity_balances.bench.>`; every fact has a giver of its own, so the first KV update of
            that giver's key is that fact arriving: time to it from the fact's commit (its `recorded_at`,
            wall clock), and from the 201 as the sender saw it (p50, p99 of each)
  query     sequential requests to `reciprocity.query.bench.balance` for known participants (p50, p99):
            right after the lag phase (query_busy_*, while serve still recomputes influence and writes
            KV), then again once its views caught up (query_*)
The ingest benchmark with everything running inside serve is `bench/ingest.py` (serve runs all roles).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import CONTENT_LENGTH, give_body, signed_requests
from bench.views import views_caught_up, wait_until
from contracts.webhook_bodies import FactType
from ledger.facts import ReceivedFact, fact_event_id
from ledger.group_commit import FactWriter
from ledger.store import open_ledger
from projections.nats_bus import STREAM, connect, ensure_stream
from projections.relay import Relay
from services.natsserver import EmbeddedNatsServer
from services.settings import Settings
from tests.processes import Server, cli_json, free_port

TENANT, SOURCE = "bench", "crm"
SENDER_CONNECTIONS = 32
LAG_WAIT_S = 60.0  # how long the watcher waits for the last answered facts after the sender is done


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else float("nan")


# --- relay --------------------------------------------------------------------------------------------


def fill_store(data_dir: Path, facts: int) -> None:
    writer = FactWriter(open_ledger(None, data_dir))
    received_at = datetime.now(UTC)
    for start in range(0, facts, 2_000):
        batch = []
        for n in range(start, min(facts, start + 2_000)):
            data = give_body("relay", n)["data"]
            event_id = fact_event_id(TENANT, SOURCE, data["id"])
            batch.append(ReceivedFact(TENANT, SOURCE, FactType.GIVE, data, None, received_at, event_id))
        writer.commit(batch)
    writer.ledger.close()


async def relay_throughput(data_dir: Path, nats_url: str, facts: int) -> dict[str, Any]:
    ledger = open_ledger(None, data_dir)
    client = await connect(nats_url, "bench-relay")
    js = client.jetstream()
    await ensure_stream(js, 120)
    relay = Relay(ledger)
    head = ledger.head_position()
    started = time.perf_counter()
    task = asyncio.create_task(relay.run(client, asyncio.Event()))
    while relay.position < head:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    task.cancel()
    stored = (await js.stream_info(STREAM)).state.messages
    await client.close()
    ledger.close()
    return {"relay_facts": stored, "relay_seconds": round(elapsed, 2), "relay_events_per_s": round(stored / elapsed)}


# --- end-to-end lag, in a process of its own ----------------------------------------------------------


async def watch_kv(nats_url: str, ready: Any, expected: Any, results: Any) -> None:
    """The KV watcher: when each giver's balance key first changed, until every answered fact was seen (or
    LAG_WAIT_S passed). A process of its own, as a service watching the bucket would be, so the load
    generator's busy event loop does not delay what it sees."""
    arrived: dict[str, tuple[float, float]] = {}

    async def on_kv(message: Any) -> None:
        arrived.setdefault(message.subject.rsplit(".", 1)[1], (time.perf_counter(), time.time()))

    client = await nats.connect(nats_url)
    await client.subscribe(f"$KV.reciprocity_balances.{TENANT}.>", cb=on_kv)
    await client.flush()
    ready.put(True)
    givers = await asyncio.to_thread(expected.get)  # those answered 201, once the sender is done
    deadline = time.monotonic() + LAG_WAIT_S
    while any(g not in arrived for g in givers) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await client.close()
    results.put(arrived)


async def send_facts(port: int, secret: str, rate: int, seconds: float) -> dict[str, float]:
    """Single-fact webhooks at a steady rate, each with a giver of its own; when each was answered 201.
    Signed beforehand and sent on raw keep-alive connections (bench/ingest.py's client), so the sender
    takes a tenth of a core, not the half that an aiohttp client took from the service it measures."""
    count = int(rate * seconds)
    run = uuid.uuid4().hex[:6]
    givers = [f"lag{run}x{n}" for n in range(count)]
    bodies = [json.dumps(_lag_body(giver, n)).encode() for n, giver in enumerate(givers)]
    requests = signed_requests(secret, port, f"/v1/tenants/{TENANT}/webhooks/{SOURCE}", bodies)
    answered: dict[str, float] = {}
    started = time.perf_counter() + 0.1

    async def connection(first: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for n in range(first, count, SENDER_CONNECTIONS):  # fact n is due at started + n / rate
            await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
            writer.write(requests[n])
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(int(CONTENT_LENGTH.search(head).group(1)))  # type: ignore[union-attr]
            if head[9:12] == b"201":
                answered[givers[n]] = time.perf_counter()
        writer.close()

    await asyncio.gather(*(connection(c) for c in range(SENDER_CONNECTIONS)))
    return answered


def _lag_body(giver: str, n: int) -> dict[str, Any]:
    body = give_body(giver, n)
    body["data"]["giver"] = giver
    return body


def lag_figures(
    answered: dict[str, float], arrived: dict[str, tuple[float, float]], committed: dict[str, float], seconds: float
) -> dict[str, Any]:
    """Two measures of the same lag. From the commit: the fact's `recorded_at` (taken before its commit, so
    a little earlier than its 201) to the KV update, both by the machine's wall clock: an upper bound of the
    service's lag that no client's event loop can inflate. From the 201 as the sender saw it: perf_counter
    (CLOCK_MONOTONIC, one clock for every process), late by however busy the sender's own loop was."""
    from_commit = [(arrived[g][1] - committed[g]) * 1000 for g in answered if g in arrived and g in committed]
    from_answer = [(arrived[g][0] - answered[g]) * 1000 for g in answered if g in arrived]
    return {
        "lag_sent": len(answered),
        "lag_rate_per_s": round(len(answered) / seconds),
        "lag_seen_in_kv": len(from_answer),
        "lag_p50_ms": round(statistics.median(from_commit), 1) if from_commit else None,
        "lag_p99_ms": round(percentile(from_commit, 0.99), 1) if from_commit else None,
        "lag_client_p50_ms": round(statistics.median(from_answer), 1) if from_answer else None,
        "lag_client_p99_ms": round(percentile(from_answer, 0.99), 1) if from_answer else None,
    }


def commit_times(data_dir: Path) -> dict[str, float]:
    """Each lag fact's giver and the wall-clock time its transaction recorded it."""
    ledger, found, after = open_ledger(None, data_dir), {}, 0
    try:
        while page := ledger.tenant_log(TENANT, after, 10_000):
            for stored in page:
                at = datetime.fromisoformat(stored.fact.recorded_at.replace("Z", "+00:00"))
                found[stored.fact.giver] = at.timestamp()
            after = page[-1].position
    finally:
        ledger.close()
    return found


def _watcher_process(nats_url: str, ready: Any, expected: Any, results: Any) -> None:
    asyncio.run(watch_kv(nats_url, ready, expected, results))


def _sender_process(args: tuple, results: Any) -> None:
    results.put(asyncio.run(send_facts(*args)))


# --- micro service latency ----------------------------------------------------------------------------


async def query_latency(nats_url: str, participants: list[str], requests: int) -> dict[str, Any]:
    client = await nats.connect(nats_url)
    latencies = []
    for _ in range(requests):
        body = json.dumps({"participant": random.choice(participants)}).encode()
        started = time.perf_counter()
        await client.request(f"reciprocity.query.{TENANT}.balance", body, timeout=5)
        latencies.append((time.perf_counter() - started) * 1000)
    await client.close()
    return {
        "query_requests": requests,
        "query_p50_ms": round(statistics.median(latencies), 3),
        "query_p99_ms": round(percentile(latencies, 0.99), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relay-facts", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=2_000, help="facts per second for the lag measurement")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--queries", type=int, default=5_000)
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="reciprocity-bench-nats-") as tmp:
        work = Path(tmp)
        nats_server = EmbeddedNatsServer(work / "relay", free_port())
        nats_server.start()
        try:
            fill_store(work / "relay", args.relay_facts)
            figures.update(asyncio.run(relay_throughput(work / "relay", nats_server.url, args.relay_facts)))
        finally:
            nats_server.stop()
        figures.update(serve_phase(work / "serve", args))
    for name, value in figures.items():
        print(f"{name:<24}{value}")
    print(json.dumps(figures))
    return 0


def serve_phase(data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(data_dir=data_dir)
    cli_json(settings, "tenant", "create", TENANT)
    secret = cli_json(settings, "source", "add", TENANT, SOURCE)["secret"]
    server = Server(settings, data_dir.parent / "serve.log").start()
    try:
        nats_url = f"nats://127.0.0.1:{server.nats_port}"
        context = multiprocessing.get_context("spawn")
        ready, expected, watched, sent = context.Queue(), context.Queue(), context.Queue(), context.Queue()
        watcher = context.Process(target=_watcher_process, args=(nats_url, ready, expected, watched))
        watcher.start()
        ready.get(timeout=60)
        sender = context.Process(target=_sender_process, args=((server.port, secret, args.rate, args.seconds), sent))
        sender.start()
        answered = sent.get(timeout=args.seconds + 120)
        expected.put(list(answered))
        arrived = watched.get(timeout=LAG_WAIT_S + 60)
        sender.join()
        watcher.join()
        figures = lag_figures(answered, arrived, commit_times(data_dir), args.seconds)
        participants = [f"p{n}" for n in range(997)]
        # Twice: at once, while serve still digests the lag phase's facts (influence recomputes, KV), and
        # once its views caught up, as a service not in the middle of a burst answers.
        busy = asyncio.run(query_latency(nats_url, participants, args.queries))
        figures.update({f"query_busy_{name.removeprefix('query_')}": value for name, value in busy.items()})
        figures["query_waited_s"] = wait_until(lambda: views_caught_up(server), 300)
        figures.update(asyncio.run(query_latency(nats_url, participants, args.queries)))
        return figures
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
