"""Cluster benchmark: the roles as processes on PostgreSQL and three clustered nats-servers, as the system test
tests/system/test_cluster.py runs them (two ingest, a query, two projectors, two relays), outside pytest.

    .venv/bin/python bench/cluster.py                        # 20 s of load, 8 senders, replicas 1 then 3
    .venv/bin/python bench/cluster.py --seconds 10 --senders 4 --replicas 3

For each replicas setting, a fresh PostgreSQL schema and a fresh NATS cluster:
  throughput  signed single-fact webhooks from `--senders` threads (half to each ingest process, each waiting
              for its answer) for `--seconds`: facts acknowledged per second, and facts that reached the stream
              per second over the same window
  relay lag   per fact, from its 201 as the sender saw it to its message arriving on an ordered consumer of
              the stream (p50, p99), over the same window
  failover    with replicas 3 (or the last setting), still under load: kill -9 the active projector, then the
              active relay; seconds until the standby's first page (the view moves on) and first publish
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from psycopg.sql import SQL, Identifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from projections.nats_bus import STREAM
from tests.helpers import until
from tests.nats_cluster import NatsCluster
from tests.role_cluster import (
    JETSTREAM_TIMEOUT_S,
    RoleCluster,
    SignedLoad,
    kill_the_active,
    projector_progress,
    relay_progress,
    replicated,
    stream_last_seq,
)

DEFAULT_DATABASE_URL = os.environ.get("RECIPROCITY_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
WARM_UP_FACTS = 50
LAG_WAIT_S = 60.0  # for the window's last facts to reach the stream


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else float("nan")


async def measure(roles: RoleCluster, nats: NatsCluster, args: argparse.Namespace, failover: bool) -> dict[str, Any]:
    assert roles.sender is not None
    client = await nats.client()
    js = client.jetstream(timeout=JETSTREAM_TIMEOUT_S)
    arrived: dict[str, float] = {}

    async def on_message(message: Any) -> None:
        arrived.setdefault(message.headers["Nats-Msg-Id"], time.monotonic())

    ingest = roles.of_role("ingest")
    load = SignedLoad([ingest[n % len(ingest)] for n in range(args.senders)], roles.sender, people=args.people)
    try:
        await until(lambda: replicated(js, roles.replicas), 60, what=f"the stream on {roles.replicas} servers")
        await js.subscribe(f"reciprocity.events.{roles.sender.tenant}.>", cb=on_message, ordered_consumer=True)
        load.start()
        await until(lambda: _acknowledged(load, WARM_UP_FACTS), 60, what="the warm-up")
        started, first_seq = time.monotonic(), await stream_last_seq(js)
        await asyncio.sleep(args.seconds)
        ended, last_seq = time.monotonic(), await stream_last_seq(js)
        figures = await _window(load, arrived, started, ended)
        figures["stream_facts_per_s"] = round(((last_seq or 0) - (first_seq or 0)) / (ended - started))
        if failover:
            projector_s = await kill_the_active(roles, "projector", partial(projector_progress, roles))
            relay_s = await kill_the_active(roles, "relay", partial(relay_progress, roles, js))
            figures.update(projector_failover_s=round(projector_s, 2), relay_failover_s=round(relay_s, 2))
        return figures
    finally:
        load.stop()
        await client.close()


async def _acknowledged(load: SignedLoad, count: int) -> bool:
    return load.count() >= count


async def _window(load: SignedLoad, arrived: dict[str, float], started: float, ended: float) -> dict[str, Any]:
    """Throughput and relay lag of the facts acknowledged within [started, ended]."""
    with load.lock:
        window = [ack for ack in load.acknowledged if started <= ack.at <= ended]
    deadline = time.monotonic() + LAG_WAIT_S
    while any(ack.event_id not in arrived for ack in window) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    lags_ms = [(arrived[ack.event_id] - ack.at) * 1000 for ack in window if ack.event_id in arrived]
    return {
        "ingest_facts_per_s": round(len(window) / (ended - started)),
        "relay_lag_ms_p50": round(percentile(lags_ms, 0.5), 1),
        "relay_lag_ms_p99": round(percentile(lags_ms, 0.99), 1),
        "facts_never_on_stream": len(window) - len(lags_ms),
        "refusals": " ".join(f"{status}:{n}" for status, n in Counter(s for s, _ in load.refusals).items()) or 0,
    }


def run_once(replicas: int, args: argparse.Namespace, failover: bool) -> dict[str, Any]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="reciprocity-cluster-") as workdir:
        nats = NatsCluster(Path(workdir) / "nats").start()
        roles = RoleCluster(Path(workdir) / "roles", f"{args.database_url}?schema={schema}", nats, replicas)
        try:
            asyncio.run(nats.until_ready(replicas, timeout_s=60))
            roles.start()
            return {"replicas": replicas, **asyncio.run(measure(roles, nats, args, failover))}
        finally:
            roles.stop()
            nats.stop()
            with psycopg.connect(args.database_url, autocommit=True) as conn:
                conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="the measured window of load")
    parser.add_argument("--senders", type=int, default=8, help="sender threads, each waiting for its answer")
    parser.add_argument("--people", type=int, default=50)
    parser.add_argument("--replicas", default="1,3", help="the settings to measure, in order")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    args = parser.parse_args()
    settings = [int(value) for value in args.replicas.split(",")]
    results = [run_once(replicas, args, failover=n == len(settings) - 1) for n, replicas in enumerate(settings)]
    columns = list(dict.fromkeys(key for result in results for key in result))
    print(f"stream {STREAM}, {args.senders} senders, {args.seconds:g} s measured")
    for key in columns:
        print(f"{key:>24} " + " ".join(f"{result.get(key, ''):>10}" for result in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
