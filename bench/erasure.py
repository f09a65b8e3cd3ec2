"""Erasure benchmark: the time to erase a participant who has 10,000 facts in a store of 1M (issue 18).

    .venv/bin/python bench/erasure.py                                  # SQLite and PostgreSQL, 1M facts
    .venv/bin/python bench/erasure.py --stores sqlite --events 200000 --person-facts 2000

Per store (SQLite in a temporary data dir; PostgreSQL in a fresh schema, dropped at the end): load N facts with
bench/views.py's generator (100k people, skewed givers) in which every (N / person-facts)-th fact is a give
by or to one person, `leaver`; rebuild the views with `reciprocity rebuild` (its events/s); start a
nats-server and the relay until the stream holds the log. Then, each timed on its own:
  export   the person's facts as the export lists them (a scan of the tenant's facts) and shown as the log
  erase    FactWriter.erase: the key row deleted and participant.erased appended, what DELETE answers after
  views    the follower applying the erasure (every view row naming the person renamed to the tombstone)
  stream   the relay publishing the erasure, finding the person's earlier messages and deleting each with
           JetStream's secure erase (beside publishing what comes after)
One aligned table at the end, and the raw figures as JSON on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.sql import SQL, Identifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import DEFAULT_DATABASE_URL
from bench.views import TENANT, FactGenerator, note
from contracts.types import utc_text
from contracts.webhook_bodies import FactType
from ledger.facts import ReceivedFact, fact_event_id
from ledger.group_commit import FactWriter
from ledger.participants import id_digest
from ledger.store import Ledger, open_ledger
from projections.follower import Follower
from projections.nats_bus import POSITION_HEADER, STREAM, connect, ensure_stream
from projections.reciprocity import VIEW, ReciprocityProjection
from projections.relay import Relay
from projections.runtime import open_view_store
from services.natsserver import EmbeddedNatsServer
from services.settings import Settings
from tests.processes import cli_json, free_port

PERSON = "leaver"


class WithPerson(FactGenerator):
    """bench/views.py's facts, but every `every`-th one a give by or to PERSON."""

    def __init__(self, events: int, participants: int, every: int) -> None:
        super().__init__(TENANT, events, participants, seed=1)
        self.every = every

    def fact(self, n: int) -> ReceivedFact:
        if n % self.every:
            return super().fact(n)
        other = f"p{self.rng.randrange(self.participants)}"
        giver, receiver = (PERSON, other) if n % (2 * self.every) else (other, PERSON)
        at = self.start + (self.received_at - self.start) * (n / self.events)
        data = {"id": f"l{n}", "occurred_at": utc_text(at), "giver": giver, "receiver": receiver, "kind": "help",
                "value": "1", "note": f"a note between {giver} and {receiver}"}  # fmt: skip
        self.counts["person"] += 1
        event_id = fact_event_id(TENANT, self.source, f"l{n}")
        return ReceivedFact(TENANT, self.source, FactType.GIVE, data, at, self.received_at, event_id)


def load(ledger: Ledger, generator: FactGenerator, batch: int) -> None:
    writer = FactWriter(ledger)
    for first in range(0, generator.events, batch):
        chunk = [generator.fact(n) for n in range(first, min(first + batch, generator.events))]
        writer.commit(chunk)
        if (first + batch) % 100_000 < batch:
            note(f"  {first + batch:,} facts")


async def stream_reaches(js: Any, position: int, timeout_s: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        info = await js.stream_info(STREAM)
        if info.state.messages:
            last = await js.get_msg(STREAM, seq=info.state.last_seq)
            if int(last.headers[POSITION_HEADER]) >= position:
                return time.perf_counter() - started
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the stream did not reach position {position} in {timeout_s} s")


async def bus_phase(settings: Settings, workdir: Path, args: argparse.Namespace, figures: dict[str, Any]) -> None:
    nats_server = EmbeddedNatsServer(workdir / "nats-home", free_port())
    nats_server.start()
    ledger = open_ledger(settings.database_url, settings.data_dir)
    store = open_view_store(settings.database_url, settings.data_dir)
    client = await connect(nats_server.url, "bench-erasure")
    js = client.jetstream()
    relay = Relay(ledger)
    task: asyncio.Task[None] | None = None
    try:
        await ensure_stream(js, 120.0)
        head = ledger.head_position()
        note(f"relaying {head:,} positions to the stream")
        task = asyncio.create_task(relay.run(client, asyncio.Event()))
        figures["relay_s"] = await stream_reaches(js, head, args.wait)
        figures["relay_per_s"] = figures["facts"] / figures["relay_s"]

        started = time.perf_counter()
        digest = id_digest(TENANT, PERSON)
        token = ledger.participant_keys(TENANT, [digest])[digest].token
        exported = ledger.logged(ledger.participant_facts(TENANT, token))
        figures.update(export_s=time.perf_counter() - started, export_facts=len(exported))
        note(f"exported {len(exported):,} facts in {figures['export_s']:.2f} s")

        writer = FactWriter(ledger)
        started = time.perf_counter()
        erased = writer.erase(TENANT, PERSON)
        figures["erase_s"] = time.perf_counter() - started
        assert erased is not None
        note(f"erased at position {erased.position} in {figures['erase_s'] * 1000:.1f} ms")

        started = time.perf_counter()
        Follower(ledger, ReciprocityProjection(store), lambda: store.position(VIEW)).catch_up()
        figures["views_s"] = time.perf_counter() - started
        note(f"views applied the erasure in {figures['views_s']:.2f} s")

        # The relay publishes the erasure, then deletes the messages beside publishing; the store's
        # stream_erasures row goes when it is done.
        started = time.perf_counter()
        while ledger.pending_stream_erasures(erased.position):
            if time.perf_counter() - started > args.wait:
                raise TimeoutError("the relay did not finish deleting")
            await asyncio.sleep(0.05)
        figures["stream_s"] = time.perf_counter() - started
        info = await js.stream_info(STREAM)
        figures["stream_left"] = info.state.messages
        note(f"the stream erased the person's messages in {figures['stream_s']:.1f} s")
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await client.close()
        store.close()
        ledger.close()
        nats_server.stop()


def run_store(store_name: str, args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {"store": store_name}
    with tempfile.TemporaryDirectory(prefix="bench-erasure-") as workdir_name:
        workdir = Path(workdir_name)
        schema = None
        database_url = None
        if store_name == "postgresql":
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            database_url = f"{args.database_url}?schema={schema}"
        settings = Settings(data_dir=workdir / "data", database_url=database_url)
        try:
            ledger = open_ledger(settings.database_url, settings.data_dir)
            generator = WithPerson(args.events, args.participants, args.events // args.person_facts)
            note(f"{store_name}: loading {args.events:,} facts, {args.person_facts:,} of them naming {PERSON}")
            started = time.perf_counter()
            load(ledger, generator, args.batch)
            figures.update(facts=args.events, person_facts=generator.counts["person"])
            figures["load_per_s"] = args.events / (time.perf_counter() - started)
            ledger.close()
            note("rebuilding the views (`reciprocity rebuild`)")
            started = time.perf_counter()
            rebuilt = cli_json(settings, "rebuild", "reciprocity", timeout_s=args.wait)
            figures.update(rebuild_s=time.perf_counter() - started, rebuild_per_s=rebuilt["events_per_s"])
            asyncio.run(bus_phase(settings, workdir, args, figures))
        finally:
            if schema is not None:
                with psycopg.connect(args.database_url, autocommit=True) as connection:
                    connection.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))
    return figures


ROWS = (
    ("facts in the store", "facts", "{:,}"),
    ("facts naming the person", "person_facts", "{:,}"),
    ("load, facts/s", "load_per_s", "{:,.0f}"),
    ("rebuild, events/s", "rebuild_per_s", "{:,.0f}"),
    ("relay, facts/s", "relay_per_s", "{:,.0f}"),
    ("export (scan + show), s", "export_s", "{:.2f}"),
    ("erase (DELETE answered), ms", "erase_s", "{:.1f}", 1000),
    ("views apply the erasure, s", "views_s", "{:.2f}"),
    ("stream: found and deleted, s", "stream_s", "{:.1f}"),
    ("stream messages left", "stream_left", "{:,}"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--participants", type=int, default=100_000)
    parser.add_argument("--person-facts", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--wait", type=float, default=1800)
    args = parser.parse_args()
    results = [run_store(name, args) for name in args.stores.split(",")]
    print(f"{'':34}" + "".join(f"{r['store']:>14}" for r in results))
    for label, key, spec, *scale in ROWS:
        factor = scale[0] if scale else 1
        cells = "".join(f"{spec.format(r[key] * factor) if key in r else '-':>14}" for r in results)
        print(f"{label:34}{cells}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
