"""Graph benchmark: GET /graph (default limit; a time window; a context filter), GET ties and GET upkeep latency.

    .venv/bin/python bench/graph.py                                     # 1M facts, 100k people, both stores
    .venv/bin/python bench/graph.py --facts 50000 --participants 5000 --stores sqlite

Per store (SQLite in a temporary data dir; PostgreSQL in a fresh schema `bench_<random>`, dropped at the end):
load N facts for tenant `bench` with bench/views.py's generator (skewed givers over two years; gives,
introductions, acknowledgements, reversals; contexts), build the views with `reciprocity rebuild` (influence
included), then run the real HTTP app in this process on 127.0.0.1 and ask each route one request at a time
from one keep-alive connection: /graph with the default limit (500 edges), /graph for the last 30 days, /graph
for one subject, ties of random participants (by strength and by last_at), and upkeep's first page. Prints
p50/p99 per route, and the raw figures as JSON on the last line. Every answer is served from the view rows;
nothing replays the log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from aiohttp import web
from psycopg.sql import SQL, Identifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import DEFAULT_DATABASE_URL
from bench.views import SOURCE, TENANT, FactGenerator, load, note
from contracts.types import utc_text
from ledger.store import open_ledger
from projections.runtime import open_view_store
from services.bootstrap import open_components
from services.http.app import create_app
from services.logs import configure_logging
from services.settings import Settings
from tests.processes import cli_json

WINDOW = timedelta(days=30)


def sample_participants(settings: Settings, count: int) -> list[str]:
    store = open_view_store(settings.database_url, settings.data_dir)
    try:
        rows = store.read("SELECT participant FROM view_participants WHERE tenant = ? AND scope = ''", (TENANT,))
    finally:
        store.close()
    return random.Random(3).sample([r[0] for r in rows], min(count, len(rows)))


def routes(generator: FactGenerator, participants: list[str], args: argparse.Namespace) -> dict[str, list[str]]:
    """Each measured route and the paths it asks, in turn."""
    base = f"/v1/tenants/{TENANT}"
    end = generator.received_at  # the generated facts end an hour before it
    since, until = utc_text(end - WINDOW), utc_text(end)
    return {
        "graph": [f"{base}/graph"] * args.graph_requests,
        "graph_window_30d": [f"{base}/graph?since={since}&until={until}"] * args.graph_requests,
        "graph_subject": [f"{base}/graph?context.subject=python"] * args.graph_requests,
        "ties": [f"{base}/participants/{p}/ties" for p in participants],
        "ties_last_at": [f"{base}/participants/{p}/ties?order=last_at" for p in participants],
        "upkeep": [f"{base}/upkeep"] * args.graph_requests,
    }


async def measure(settings: Settings, key: str, paths: dict[str, list[str]]) -> dict[str, Any]:
    """The app in this process, asked one request at a time; latency per route in ms."""
    components = await open_components(settings)
    runner = web.AppRunner(create_app(settings, components), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    figures: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
            for route, route_paths in paths.items():
                timings, sizes = [], []
                for path in route_paths:
                    started = time.perf_counter()
                    async with session.get(url + path) as response:
                        body = await response.read()
                        assert response.status == 200, (path, response.status, body[:300])
                    timings.append((time.perf_counter() - started) * 1000)
                    sizes.append(len(json.loads(body).get("edges" if "graph" in route else "items")))
                figures[route] = summary(timings, sizes)
                note(f"  {route}: p50 {figures[route]['p50_ms']:.1f} ms, p99 {figures[route]['p99_ms']:.1f} ms")
    finally:
        await runner.cleanup()
        await components.close()
    return figures


def summary(timings: list[float], sizes: list[int]) -> dict[str, Any]:
    ordered = sorted(timings)
    return {
        "requests": len(timings),
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "items_mean": sum(sizes) / len(sizes),
    }


def run_store(store_name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    schema = f"bench_{uuid.uuid4().hex[:8]}" if store_name == "postgresql" else None
    database_url = f"{args.database_url}?schema={schema}" if schema else None
    settings = Settings(data_dir=workdir / store_name, database_url=database_url)
    figures: dict[str, Any] = {"store": store_name, "facts": args.facts, "participants": args.participants}
    try:
        cli_json(settings, "tenant", "create", TENANT)
        cli_json(settings, "source", "add", TENANT, SOURCE)
        key = cli_json(settings, "key", "add", TENANT, "--scope", "read")["key"]
        generator = FactGenerator(TENANT, args.facts, args.participants, seed=1)
        ledger = open_ledger(settings.database_url, settings.data_dir)
        try:
            note(f"{store_name}: loading {args.facts:,} facts")
            started = time.perf_counter()
            figures["load_refused"] = dict(load(ledger, generator, args.batch))
            figures["load_s"] = time.perf_counter() - started
        finally:
            ledger.close()
        note(f"{store_name}: `reciprocity rebuild`")
        started = time.perf_counter()
        cli_json(settings, "rebuild", timeout_s=args.wait)
        figures["rebuild_s"] = time.perf_counter() - started
        participants = sample_participants(settings, args.ties_requests)
        figures["routes"] = asyncio.run(measure(settings, key, routes(generator, participants, args)))
    except Exception as failure:  # report what was measured, and what broke
        traceback.print_exc()
        figures["error"] = f"{type(failure).__name__}: {failure}"[:300]
    finally:
        if schema:
            with psycopg.connect(args.database_url, autocommit=True) as conn:
                conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))
    return figures


def print_report(results: list[dict[str, Any]]) -> None:
    print()
    print(f"{'route':<20}" + "".join(f"{r['store'] + ' ' + format(r['facts'], ','):>42}" for r in results))
    names = sorted({name for r in results for name in r.get("routes", {})}, key=list(results[0]["routes"]).index)
    for name in names:
        cells = []
        for r in results:
            f = r.get("routes", {}).get(name)
            cells.append("-" if f is None else f"p50 {f['p50_ms']:7.1f}  p99 {f['p99_ms']:7.1f} ms  n={f['requests']}")
        print(f"{name:<20}" + "".join(f"{c:>42}" for c in cells))
    for r in results:
        if "error" in r:
            print(f"{r['store']} FAILED: {r['error']}")
    print("note: one client, one request at a time, on a shared 2-core machine: figures are noisy.")
    print(json.dumps(results, default=str))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=1_000_000, help="facts for the tenant")
    parser.add_argument("--participants", type=int, default=100_000)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--graph-requests", type=int, default=50, help="requests per graph and upkeep route")
    parser.add_argument("--ties-requests", type=int, default=300, help="participants whose ties are asked")
    parser.add_argument("--batch", type=int, default=2_000, help="facts per load transaction")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--wait", type=float, default=1800, help="s to wait for the rebuild")
    args = parser.parse_args()
    configure_logging("console", "warning", stream=sys.stderr)  # a request log line each would be measured too
    with tempfile.TemporaryDirectory(prefix="reciprocity-graph-") as tmp:
        results = [run_store(store, args, Path(tmp)) for store in args.stores.split(",")]
    print_report(results)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
