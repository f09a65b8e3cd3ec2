"""Views benchmark: reciprocity rebuild, influence, balance queries, serve memory, ingest with projections.

    .venv/bin/python bench/views.py                                   # 1M facts, 100k people, both stores
    .venv/bin/python bench/views.py --events 200000 --participants 20000 --stores sqlite --seconds 5

Per store (SQLite in a temporary data dir; PostgreSQL in a fresh schema `bench_<random>`, dropped at the end):
load N facts for tenant `bench` over P participants (skewed givers; ~86% gives, 5% introductions, 8%
acknowledgements by the receiver, 1% reversals) and tenant `pairs` (~100k directed pairs) directly with
FactWriter (setup, timed anyway); follow the first 100k facts page by page (events/s); rebuild the reciprocity
view with `reciprocity rebuild reciprocity` in its own process (its replay's events/s, its peak memory); recompute
influence for both tenants, and for the main one again after 2,000 more facts, as the influence worker does
(keeping the pairs it read). Then `reciprocity serve` on that store, once its relay and KV writer caught up:
GET balance of random known people on 32 keep-alive connections from another process (wrk when it is
installed, else bench/ingest.py's Python client), with serve on --http-workers processes (2); VmRSS/VmHWM of
serve, its extra HTTP process, its background process and that one's influence worker after the queries
and after a posted fact made them recompute influence;
bench/ingest.py's single and batch ingest with the projections running; lag. One aligned table at the end,
and the raw figures as JSON on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import psycopg
from psycopg.sql import SQL, Identifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import DEFAULT_DATABASE_URL, _result, drive, give_body, measure, signed_requests
from bench.process_tree import serve_processes
from contracts.types import utc_text
from contracts.webhook_bodies import FactType
from ledger.facts import ReceivedFact, fact_event_id
from ledger.group_commit import FactWriter
from ledger.store import Ledger, open_ledger
from projections.follower import Follower
from projections.influence_view import InfluenceView
from projections.nats_bus import BUCKETS
from projections.queries import ReciprocityQueries
from projections.reciprocity import TABLES, VIEW, ReciprocityProjection
from projections.relay import stream_position
from projections.runtime import open_view_store
from projections.viewstore import ViewStore
from services.settings import Settings
from tests.processes import Server, cli_json

TENANT, SMALL_TENANT, SOURCE = "bench", "pairs", "crm"
KINDS = ("knowledge", "help", "time", "referral", "endorsement")
VALUES = ("1", "2.5", "0.5", "3", "10")
SUBJECTS = ("python", "rust", "design", "sales", "hiring", "fundraising", "ops", "legal", "marketing", "data")
LOCATIONS = ("berlin", "paris", "remote", "london", "lagos")
OPEN_GIVES_MAX = 50_000  # gives that may still be acknowledged or reversed (bounded memory)
SPAN = timedelta(days=730)
FORCE = json.dumps(give_body("force", 0)).encode()  # a fact that makes serve recompute influence


FOLLOW_PAGES, FOLLOW_PAGE_FACTS = 5, 20_000  # how fast following the log applies the first facts
LATER_FACTS = 2_000  # written after the first influence recompute, before the second


def note(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class FactGenerator:
    """One tenant's facts in log order, generated chunk by chunk from a seed; counts what it made."""

    def __init__(self, tenant: str, events: int, participants: int, seed: int, source: str = SOURCE) -> None:
        self.tenant, self.events, self.participants, self.source = tenant, events, participants, source
        self.rng = random.Random(seed)
        self.open_gives: list[tuple[str, str]] = []  # (external id, receiver), never acknowledged nor reversed
        self.counts: Counter[str] = Counter()
        self.received_at = datetime.now(UTC)
        self.start = self.received_at - SPAN - timedelta(hours=1)

    def fact(self, n: int) -> ReceivedFact:
        at = self.start + SPAN * (n / self.events)
        roll = self.rng.random()
        if roll < 0.09 and self.open_gives:  # acknowledged by the receiver (8%), or reversed (1%)
            i = self.rng.randrange(len(self.open_gives))
            self.open_gives[i], self.open_gives[-1] = self.open_gives[-1], self.open_gives[i]
            give_id, receiver = self.open_gives.pop()
            if roll < 0.08:
                kind, external_id, body = "acknowledgement.recorded", f"a{n}", {"acknowledger": receiver}
            else:
                kind, external_id, body = "reversal.recorded", f"r{n}", {}
            body["ref"] = {"id": give_id}
            body.update({} if roll < 0.08 else {"reason": "entered twice"})
        elif roll < 0.14:
            kind, external_id, body = self.introduction(n)
        else:
            kind, external_id, body = self.give(n)
        self.counts[kind] += 1
        data = {"id": external_id, "occurred_at": utc_text(at), **body}
        event_id = fact_event_id(self.tenant, self.source, external_id)
        return ReceivedFact(self.tenant, self.source, FactType(kind), data, at, self.received_at, event_id)

    def skewed(self) -> int:
        return int(self.participants * self.rng.random() ** 3)  # the top 1% give about a fifth

    def context(self) -> dict[str, str] | None:
        roll, rng = self.rng.random(), self.rng
        location = {"location": rng.choice(LOCATIONS)} if roll > 0.8 else {}
        activity = {"activity": rng.choice(("meetup", "mentoring"))} if roll > 0.95 else {}
        return None if roll < 0.4 else {**location, **activity, "subject": rng.choice(SUBJECTS)}

    def give(self, n: int) -> tuple[str, str, dict[str, Any]]:
        giver = self.skewed()
        receiver = giver
        while receiver == giver:
            receiver = self.rng.randrange(self.participants)
        body: dict[str, Any] = {"giver": f"p{giver}", "receiver": f"p{receiver}"}
        body.update(kind=self.rng.choice(KINDS), value=self.rng.choice(VALUES))
        if context := self.context():
            body["context"] = context
        if len(self.open_gives) >= OPEN_GIVES_MAX:  # forget a random one
            self.open_gives[self.rng.randrange(OPEN_GIVES_MAX - 1)] = self.open_gives.pop()
        self.open_gives.append((f"g{n}", f"p{receiver}"))
        return "give.recorded", f"g{n}", body

    def introduction(self, n: int) -> tuple[str, str, dict[str, Any]]:
        a, b = self.rng.sample(range(self.participants), 2)
        introducer = a
        while introducer in (a, b):
            introducer = self.skewed()
        body: dict[str, Any] = {"introducer": f"p{introducer}", "introduced": [f"p{a}", f"p{b}"]}
        if context := self.context():
            body["context"] = context
        return "introduction.made", f"i{n}", body


def load(ledger: Ledger, generator: FactGenerator, batch: int) -> Counter[str]:
    """Writes the generator's facts; returns what was not recorded (should be nothing)."""
    writer, refused, done = FactWriter(ledger), Counter[str](), 0
    for first in range(0, generator.events, batch):
        chunk = [generator.fact(n) for n in range(first, min(first + batch, generator.events))]
        for outcome in writer.commit(chunk):
            if outcome.status != "recorded":
                refused[outcome.problem.title if outcome.problem else outcome.status] += 1
        done += len(chunk)
        if done % 100_000 < batch:
            note(f"  {generator.tenant}: {done:,} facts")
    return refused


def check_views(store: ViewStore, generator: FactGenerator) -> str:
    """The rebuilt view against what was generated: gives, live gives, acknowledged gives, given counts."""
    c = generator.counts
    expected = (c["give.recorded"], c["give.recorded"] - c["reversal.recorded"], c["acknowledgement.recorded"])
    found = store.read(
        "SELECT COUNT(*), SUM(live), SUM(acknowledged), (SELECT SUM(given_count) FROM view_participants"
        " WHERE tenant = ? AND scope = '') FROM view_gives WHERE tenant = ?", (generator.tenant, generator.tenant)
    )[0]  # fmt: skip
    found, expected = tuple(int(v or 0) for v in found), (*expected, expected[1])
    return "ok" if found == expected else f"{generator.tenant}: view {found} != generated {expected}"


def directed_pairs(store: ViewStore, tenant: str) -> int:
    counts = store.read("SELECT SUM(CASE WHEN decayed_ab > 0 THEN 1 ELSE 0 END), SUM(CASE WHEN decayed_ba > 0 THEN 1"
                        " ELSE 0 END) FROM view_pairs WHERE tenant = ? AND scope = ''", (tenant,))[0]  # fmt: skip
    return sum(int(n or 0) for n in counts)


def build_views(settings: Settings, args: argparse.Namespace, figures: dict[str, Any]) -> list[str]:
    """Load, rebuild, check, recompute influence; returns a sample of the main tenant's participants."""
    ledger = open_ledger(settings.database_url, settings.data_dir)
    store = open_view_store(settings.database_url, settings.data_dir)
    try:
        main = FactGenerator(TENANT, args.events, args.participants, seed=1)
        small = FactGenerator(SMALL_TENANT, args.small_events, args.small_participants, seed=2)
        started, refused = time.perf_counter(), Counter[str]()
        for generator in (main, small):
            note(f"loading {generator.events:,} facts for {generator.tenant}")
            refused += load(ledger, generator, args.batch)
        figures.update(load_events=args.events + args.small_events, load_s=time.perf_counter() - started)
        figures.update(load_per_s=figures["load_events"] / figures["load_s"], load_refused=dict(refused))
        figures["facts_generated"] = {g.tenant: dict(g.counts) for g in (main, small)}
        note(f"following the log: the first {FOLLOW_PAGES * FOLLOW_PAGE_FACTS:,} facts, page by page")
        store.reset(VIEW, TABLES)
        started = time.perf_counter()
        follower = Follower(ledger, ReciprocityProjection(store), lambda: store.position(VIEW),
                            page_facts_max=FOLLOW_PAGE_FACTS)  # fmt: skip
        followed = follower.catch_up(pages_max=FOLLOW_PAGES)
        figures["follow_per_s"] = followed / (time.perf_counter() - started)
        note("rebuilding the reciprocity views: `reciprocity rebuild reciprocity`, in a process of its own")
        store.reset(VIEW, TABLES)
        # As a rebuild runs: with nothing else holding the views file open (on SQLite it then writes through a
        # rollback journal rather than the WAL; ViewStore.bulk_transaction).
        store.close()
        started = time.perf_counter()
        rebuilt = cli_json(settings, "rebuild", "reciprocity", timeout_s=args.wait)
        figures.update(rebuild_events=rebuilt["facts"], rebuild_per_s=rebuilt["events_per_s"])
        figures["rebuild_s"] = time.perf_counter() - started  # with influence for every tenant
        figures["rebuild_hwm_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        store = open_view_store(settings.database_url, settings.data_dir)
        checks = [check_views(store, g) for g in (main, small)]
        figures["views_check"] = "ok" if checks == ["ok", "ok"] else "; ".join(c for c in checks if c != "ok")
        influence = InfluenceView(store, ReciprocityQueries(store))
        for tenant, prefix in ((SMALL_TENANT, "influence_small"), (TENANT, "influence")):
            note(f"recomputing influence for {tenant}")
            started = time.perf_counter()
            influence.recompute(tenant)
            figures[f"{prefix}_s"] = time.perf_counter() - started
            figures[f"{prefix}_pairs"] = directed_pairs(store, tenant)
        # As the influence worker runs it: the same InfluenceView, which kept the pairs it read, after more facts.
        later = FactGenerator(TENANT, LATER_FACTS, args.participants, seed=4, source="chat")
        note(f"recomputing influence for {TENANT} again after {LATER_FACTS:,} more facts")
        load(ledger, later, args.batch)
        Follower(ledger, ReciprocityProjection(store), lambda: store.position(VIEW)).catch_up()
        started = time.perf_counter()
        done = influence.recompute(TENANT)
        figures.update(influence_again_s=time.perf_counter() - started, influence_again_changed=done["changed"])
        rows = store.read("SELECT participant FROM view_participants WHERE tenant = ? AND scope = ''", (TENANT,))
        return random.Random(3).sample([r[0] for r in rows], min(20_000, len(rows)))
    finally:
        store.close()
        ledger.close()


def memory_mib(pid: int, when: str) -> dict[str, float]:
    """VmRSS/VmHWM of serve and of the processes it started (serve_processes)."""
    found = {}
    for process, name in serve_processes(pid):
        status = dict(line.split(":", 1) for line in Path(f"/proc/{process}/status").read_text().splitlines())
        # RssFile: pages of mapped files (SQLite maps the views file); the kernel drops them first.
        kinds = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
        found.update({f"{name}_{k}_{when}_mib": int(status[k].split()[0]) / 1024 for k in kinds})
    return found


def http_cpu_s(pid: int) -> float:
    """CPU seconds (user and system) that serve's HTTP processes used so far: serve and its http_worker
    children. Per request, it tells a run that did more work per request from one that got less of a
    shared machine's CPU."""
    processes = [process for process, name in serve_processes(pid) if name in ("serve", "http_worker")]
    ticks = 0
    for process in processes:
        fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime and stime, the stat file's fields 14 and 15
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_until(done: Callable[[], bool], timeout_s: float) -> float | None:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        with contextlib.suppress(OSError):
            if done():
                return time.perf_counter() - started
        time.sleep(0.2)
    return None


def views_caught_up(server: Server) -> bool:
    views = server.get("/readyz")[1].get("views")
    return isinstance(views, dict) and views["reciprocity"]["events"] == 0 == views["influence"]["events"]


async def relay_position(nats_url: str) -> int:
    async with await nats.connect(nats_url) as client:
        return (await stream_position(client.jetstream()))[0]


def background_caught_up(server: Server, store: ViewStore) -> bool:
    """Whether serve's relay (the stream's last message) and KV writer (its tracking rows) reached the head."""
    head = server.get("/readyz")[1]["head_position"]
    if min(store.position(f"kv/{bucket}") for bucket in BUCKETS) < head:
        return False
    return asyncio.run(relay_position(f"nats://127.0.0.1:{server.nats_port}")) >= head


# wrk (Debian's package) drives the queries when it is installed: a load generator in C leaves the server
# the CPU that the Python client would take on a 2-core machine. Paths come shuffled from a file.
WRK_SCRIPT = """
local paths, n, i = {}, 0, 0
for line in io.lines(os.getenv("BENCH_PATHS")) do n = n + 1; paths[n] = line end
local headers = {["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")}
request = function() i = i % n + 1; return wrk.format("GET", paths[i], headers) end
done = function(summary, latency, requests)
  io.write(string.format("BENCH %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), summary.errors.status + summary.errors.read +
    summary.errors.write + summary.errors.connect + summary.errors.timeout))
end
"""


def wrk_load(port: int, key: str, paths: list[str], concurrency: int, seconds: float, workdir: Path) -> tuple:
    """(requests/s, p50 ms, p99 ms, failures) from wrk on one thread with `concurrency` connections."""
    (workdir / "paths.txt").write_text("\n".join(paths) + "\n")
    (workdir / "bench.lua").write_text(WRK_SCRIPT)
    env = {**os.environ, "BENCH_PATHS": str(workdir / "paths.txt"), "BENCH_KEY": key}
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "-s", str(workdir / "bench.lua"),
               f"http://127.0.0.1:{port}"]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    requests, duration_us, p50_us, p99_us, failures = map(int, out.split("BENCH ")[1].split())
    return requests / (duration_us / 1e6), p50_us / 1000, p99_us / 1000, failures


def balance_load(server: Server, key: str, participants: list[str], store_name: str, args: argparse.Namespace):
    if shutil.which("wrk"):
        rng = random.Random(4)
        paths = [f"/v1/tenants/{TENANT}/participants/{rng.choice(participants)}/balance" for _ in range(200_000)]
        wrk_load(server.port, key, paths, args.concurrency, 3, server.settings.data_dir)  # warm-up
        workdir, cpu_s = server.settings.data_dir, http_cpu_s(server.process.pid)
        per_s, p50, p99, failures = wrk_load(server.port, key, paths, args.concurrency, args.seconds, workdir)
        cpu_us = (http_cpu_s(server.process.pid) - cpu_s) / (per_s * args.seconds) * 1e6
        return argparse.Namespace(requests_per_s=per_s, facts_per_s=per_s, p50_ms=p50, p99_ms=p99,
                                  non_2xx={"failed": failures} if failures else {}, client="wrk",
                                  cpu_us_per_request=cpu_us)  # fmt: skip
    rng, head = random.Random(4), f"HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {key}\r\n\r\n"
    path = f"GET /v1/tenants/{TENANT}/participants/{{}}/balance {head}"
    requests = lambda count: [path.format(rng.choice(participants)).encode() for _ in range(count)]  # noqa: E731
    drive(server.port, requests(5_000), args.concurrency, 3)  # warm-up
    measured = drive(server.port, requests(int(args.seconds * 15_000) + 2_000), args.concurrency, args.seconds)
    return _result(store_name, "balance", "-", args.concurrency, *measured, 1)


def load_figures(prefix: str, result: Any) -> dict[str, Any]:
    names = ("requests_per_s", "facts_per_s", "p50_ms", "p99_ms", "non_2xx")
    return {f"{prefix}_{name}": getattr(result, name) for name in names}


def serve_phase(settings, workdir, secret, participants, store_name, args, figures) -> None:
    # With an embedded NATS server, and as many HTTP processes as asked for (README: RECIPROCITY_HTTP_WORKERS).
    workers = str(args.http_workers)
    server = Server(settings, workdir / f"serve-{store_name}.log", RECIPROCITY_HTTP_WORKERS=workers).start()
    figures["http_workers"] = args.http_workers
    try:
        pid = server.process.pid
        note("waiting for serve's relay and KV writer to catch up with the log")
        store = open_view_store(settings.database_url, settings.data_dir)
        peaks: dict[str, float] = {}  # the most RssAnon/RssFile seen in each process while it caught up

        def caught_up() -> bool:
            for name, mib in memory_mib(pid, "catching_up").items():
                if "_Rss" in name:
                    key = name.replace("_catching_up", "_peak_catching_up")
                    peaks[key] = max(mib, peaks.get(key, 0.0))
            return background_caught_up(server, store)

        figures["background_catch_up_s"] = wait_until(caught_up, args.wait)
        figures.update(peaks)
        store.close()
        figures.update(memory_mib(pid, "after_start"))
        key = cli_json(settings, "key", "add", TENANT, "--scope", "read")["key"]
        note("balance queries")
        result = balance_load(server, key, participants, store_name, args)
        figures.update(load_figures("balance", result), balance_client=getattr(result, "client", "python asyncio"))
        figures["balance_cpu_us_per_request"] = getattr(result, "cpu_us_per_request", None)
        figures.update(memory_mib(pid, "after_queries"))
        note("forcing an influence recompute in serve")
        path = f"/v1/tenants/{TENANT}/webhooks/{SOURCE}"
        figures["force_non_2xx"] = drive(server.port, signed_requests(secret, server.port, path, [FORCE]), 1, 10)[1]
        figures["influence_in_serve_s"] = wait_until(lambda: views_caught_up(server), 300)
        figures.update(memory_mib(pid, "after_influence"))
        ingest_phase(server, secret, store_name, args, figures)
        figures.update(memory_mib(pid, "end"))
    finally:
        server.stop()


def ingest_phase(server: Server, secret: str, store_name: str, args: argparse.Namespace, figures: dict) -> None:
    """bench/ingest.py's measurement, now with the projections running inside `serve`; then the lag."""
    note("ingest with projections running in serve")
    ingest_args = argparse.Namespace(seconds=args.seconds, concurrency=args.concurrency, batch_concurrency=4)
    single, batch = measure(server, secret, store_name, "group", ingest_args)
    figures.update({**load_figures("ingest_single", single), **load_figures("ingest_batch", batch)})
    lag = server.get("/readyz")[1]["views"]
    figures.update(lag_end_events=lag["reciprocity"]["events"], lag_end_s=lag["reciprocity"]["seconds"])
    figures["influence_lag_end_events"] = lag["influence"]["events"]
    figures["catch_up_s"] = wait_until(lambda: views_caught_up(server), 600)


def run_store(store_name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    schema = f"bench_{uuid.uuid4().hex[:8]}" if store_name == "postgresql" else None
    database_url = f"{args.database_url}?schema={schema}" if schema else None
    settings = Settings(data_dir=workdir / store_name, database_url=database_url)
    figures: dict[str, Any] = {"store": store_name, "events": args.events, "participants": args.participants}
    try:
        cli_json(settings, "tenant", "create", TENANT)
        secret = cli_json(settings, "source", "add", TENANT, SOURCE)["secret"]
        participants = build_views(settings, args, figures)
        serve_phase(settings, workdir, secret, participants, store_name, args, figures)
    except Exception as failure:  # report what was measured, and what broke
        traceback.print_exc()
        figures["error"] = f"{type(failure).__name__}: {failure}"[:300]
        log = workdir / f"serve-{store_name}.log"
        if log.exists():
            print("serve log tail:\n" + "\n".join(log.read_text().splitlines()[-20:]), file=sys.stderr)
    finally:
        if schema:
            with psycopg.connect(args.database_url, autocommit=True) as conn:
                conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))
    return figures


ROWS = (  # key, label, format, target
    ("load_events", "load: facts written (both tenants)", "{:,}", "setup only"),
    ("load_s", "load: seconds", "{:.0f}", "setup only"),
    ("rebuild_per_s", "rebuild reciprocity (replay): events/s", "{:,.0f}", ">= 30,000 (SQLite)"),
    ("rebuild_hwm_mib", "rebuild process VmHWM MiB", "{:,.0f}", ""),
    ("follow_per_s", "follow the log, first 100k facts: events/s", "{:,.0f}", ""),
    ("views_check", "views agree with generated facts", "{}", "ok"),
    ("influence_small_pairs", "influence `pairs`: directed pairs", "{:,}", "~100k"),
    ("influence_small_s", "influence `pairs`: recompute s", "{:.2f}", ""),
    ("influence_pairs", "influence `bench`: directed pairs", "{:,}", "~1M"),
    ("influence_s", "influence `bench`: first recompute s (reads all pairs)", "{:.2f}", "< 5 s at 1M pairs"),
    ("influence_again_s", "influence `bench`: recompute after 2,000 more facts s", "{:.2f}", "< 5 s at 1M pairs"),
    ("influence_again_changed", "influence `bench`: rows that recompute rewrote", "{:,}", ""),
    ("http_workers", "serve's HTTP processes (RECIPROCITY_HTTP_WORKERS)", "{}", ""),
    ("balance_client", "GET balance: load generator", "{}", ""),
    ("balance_requests_per_s", "GET balance: req/s", "{:,.0f}", ">= 5,000"),
    ("balance_p50_ms", "GET balance: p50 ms", "{:.2f}", ""),
    ("balance_p99_ms", "GET balance: p99 ms", "{:.2f}", "<= 10 ms"),
    ("balance_cpu_us_per_request", "GET balance: CPU us per request, serve's HTTP processes", "{:.0f}", ""),
    ("background_catch_up_s", "serve start: relay + KV caught up, s", "{:.0f}", ""),
    ("serve_VmHWM_after_start_mib", "serve VmHWM after that, MiB", "{:.0f}", "< 1024"),
    ("background_VmHWM_after_start_mib", "serve's background process VmHWM, MiB", "{:.0f}", "< 1024"),
    ("background_RssAnon_peak_catching_up_mib", "  of which its own memory (RssAnon, sampled peak)", "{:.0f}", ""),
    ("background_RssFile_peak_catching_up_mib", "  of which the mapped view file (RssFile, peak)", "{:.0f}", ""),
    ("serve_VmRSS_after_queries_mib", "serve VmRSS after queries, MiB", "{:.0f}", "< 1024"),
    ("influence_in_serve_s", "serve: fact -> influence recomputed, s", "{:.1f}", ""),
    ("background_VmRSS_after_influence_mib", "background VmRSS after influence, MiB", "{:.0f}", "< 1024"),
    ("background_VmHWM_after_influence_mib", "background VmHWM after influence, MiB", "{:.0f}", "< 1024"),
    ("influence_VmHWM_after_influence_mib", "influence worker VmHWM after influence, MiB", "{:.0f}", "< 1024"),
    ("ingest_single_requests_per_s", "ingest single (+projections): req/s", "{:,.0f}", ""),
    ("ingest_single_p99_ms", "ingest single: p99 ms", "{:.2f}", ""),
    ("ingest_batch_facts_per_s", "ingest batch100 (+projections): facts/s", "{:,.0f}", ""),
    ("ingest_batch_p99_ms", "ingest batch100: p99 ms", "{:.2f}", ""),
    ("lag_end_events", "view lag after ingest: events", "{:,}", ""),
    ("catch_up_s", "time to zero lag after ingest, s", "{:.1f}", ""),
    ("serve_VmHWM_end_mib", "serve VmHWM at the end, MiB", "{:.0f}", "< 1024"),
    ("http_worker_VmHWM_end_mib", "serve's extra HTTP process VmHWM at the end, MiB", "{:.0f}", "< 1024"),
    ("background_VmHWM_end_mib", "background VmHWM at the end, MiB", "{:.0f}", "< 1024"),
    ("background_RssAnon_end_mib", "background RssAnon (its own memory) at the end, MiB", "{:.0f}", ""),
    ("background_RssFile_end_mib", "background RssFile (mapped view file) at the end, MiB", "{:.0f}", ""),
    ("influence_VmHWM_end_mib", "influence worker VmHWM at the end, MiB", "{:.0f}", "< 1024"),
    ("non_2xx", "non-2xx (balance; single; batch)", "{}", "none"),
)


def print_report(results: list[dict[str, Any]]) -> None:
    for r in results:
        r["non_2xx"] = "; ".join(
            str(r.get(f"{k}_non_2xx") or "-") for k in ("balance", "ingest_single", "ingest_batch")
        )
    print()
    cells = [[("-" if r.get(k) is None else f.format(r[k])) for k, _, f, _ in ROWS] for r in results]
    heads = [f"{r['store']} {r['events']:,}" for r in results]
    widths = [max(len(h), *map(len, c)) + 3 for h, c in zip(heads, cells, strict=True)]
    lw = max(len(label) for _, label, _, _ in ROWS) + 1
    lines = [("measurement", heads, "target"), *((row[1], [c[i] for c in cells], row[3]) for i, row in enumerate(ROWS))]
    for label, values, target in lines:
        print(f"{label:<{lw}}" + "".join(f"{v:>{w}}" for v, w in zip(values, widths, strict=True)) + f"   {target}")
    for r in results:
        if "error" in r:
            print(f"{r['store']} FAILED: {r['error']}")
    print("note: a shared 2-core machine (another engineer, the load generator, the server and the database),"
          " so figures are noisy; the ingest figures are with serve's projections running.")  # fmt: skip
    print(json.dumps(results, default=str))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="facts for the main tenant")
    parser.add_argument("--participants", type=int, default=100_000)
    parser.add_argument("--small-events", type=int, default=120_000, help="facts for the ~100k-pairs tenant")
    parser.add_argument("--small-participants", type=int, default=20_000)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=2_000, help="facts per load transaction")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--http-workers", type=int, default=2, help="serve's RECIPROCITY_HTTP_WORKERS")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--wait", type=float, default=1800, help="s to wait for serve's relay and KV writer")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reciprocity-views-") as tmp:
        results = [run_store(store, args, Path(tmp)) for store in args.stores.split(",")]
    print_report(results)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
