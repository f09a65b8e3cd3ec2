"""Ingest benchmark: the real server, driven from a separate process with pre-signed requests.

    .venv/bin/python bench/ingest.py                       # SQLite and PostgreSQL, group commit and naive
    .venv/bin/python bench/ingest.py --stores sqlite --seconds 5

For each store it starts `reciprocity serve` (JSON logs to a file, as in production), creates a tenant
and a source, and measures, each for a fixed time after a warm-up:
  single  single-fact webhooks on 32 keep-alive connections
  batch   batches of 100 facts (facts/s is what counts)
and the same with RECIPROCITY_GROUP_COMMIT=false (one transaction per request) in the same run, so the
gain from group commit is a ratio. The load generator is a raw-socket asyncio client in its own process
that only writes bytes signed beforehand and reads status lines, so it is not the bottleneck.

First, unless --no-edge-only, it drives bench/edge_only.py the same way: our signature check and contract
with nothing behind them (no store, middleware, log or metric), in one process. That row is the machine's
ceiling for any ingest path built on aiohttp and pydantic, and the speed of these shared machines moves a
lot from day to day; compare the other rows with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.sql import SQL, Identifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.process_tree import cpu_by_role
from ledger.signatures import new_secret, secret_key, sign
from services.settings import Settings
from tests.processes import Server, cli_json, free_port

HTTP_ROLES = ("serve", "http_worker")  # serve's processes that answer HTTP (and run the writer)
CONTENT_LENGTH = re.compile(rb"(?i)content-length: *(\d+)")
DEFAULT_DATABASE_URL = os.environ.get("RECIPROCITY_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Result:
    store: str
    mode: str
    commit: str
    concurrency: int
    requests: int
    facts: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: dict[int, int]
    http_cpu_s: float = float("nan")  # serve's HTTP processes (and their writers) while measured
    other_cpu_s: float = float("nan")  # the rest of serve's tree: background, influence, nats-server

    def cpu_us_per_fact(self, seconds: float) -> float:
        return seconds / self.facts * 1e6 if self.facts else float("nan")

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def facts_per_s(self) -> float:
        return self.facts / self.seconds


# --- requests signed beforehand -----------------------------------------------------------------------


def signed_requests(secret: str, port: int, path: str, bodies: list[bytes]) -> list[bytes]:
    key = secret_key(secret)
    now = int(time.time())
    requests = []
    for body in bodies:
        message_id = f"msg_{uuid.uuid4().hex}"
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nwebhook-id: {message_id}\r\nwebhook-timestamp: {now}\r\n"
            f"webhook-signature: {sign(key, message_id, now, body)}\r\n\r\n"
        )
        requests.append(head.encode() + body)
    return requests


def give_body(run: str, n: int) -> dict:
    return {
        "type": "give.recorded",
        "timestamp": "2026-11-26T00:00:00Z",
        "data": {
            "id": f"{run}-{n}",
            "giver": f"p{n % 997}",
            "receiver": f"p{(n % 997 + 1 + n % 5) % 997}",
            "kind": "knowledge",
            "value": "2.5",
            "context": {"subject": "python"},
        },
    }


# --- the load generator (its own process) ------------------------------------------------------------


async def _connection(port: int, requests: list[bytes], deadline: float, latencies: list[float], bad: list[int]):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for request in requests:
        if time.perf_counter() >= deadline:
            break
        started = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(CONTENT_LENGTH.search(head).group(1)))
        latencies.append(time.perf_counter() - started)
        if head[9:10] != b"2":
            bad.append(int(head[9:12]))
    writer.close()


async def _drive(port: int, per_connection: list[list[bytes]], seconds: float) -> tuple[list[float], list[int], float]:
    latencies: list[float] = []
    bad: list[int] = []
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(_connection(port, chunk, deadline, latencies, bad) for chunk in per_connection))
    return latencies, bad, time.perf_counter() - started


def _drive_in_process(port, per_connection, seconds, queue) -> None:
    queue.put(asyncio.run(_drive(port, per_connection, seconds)))


def drive(port: int, requests: list[bytes], concurrency: int, seconds: float) -> tuple[list[float], list[int], float]:
    per_connection = [requests[i::concurrency] for i in range(concurrency)]
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_drive_in_process, args=(port, per_connection, seconds, queue))
    process.start()
    result = queue.get(timeout=seconds + 600)
    process.join()
    return result


# --- one store, one commit mode --------------------------------------------------------------------------


def commit_name(group: bool) -> str:
    return "group" if group else "naive"


def run_store(store: str, group: bool, args: argparse.Namespace, workdir: Path) -> list[Result]:
    database_url = None
    schema = None
    if store == "postgresql":
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        database_url = f"{args.database_url}?schema={schema}"
    settings = Settings(data_dir=workdir / f"{store}-{commit_name(group)}", database_url=database_url)
    try:
        cli_json(settings, "tenant", "create", "bench")
        secret = cli_json(settings, "source", "add", "bench", "crm")["secret"]
        extra_env = {"RECIPROCITY_HTTP_WORKERS": str(args.http_workers)}
        if not group:
            extra_env["RECIPROCITY_GROUP_COMMIT"] = "false"
        server = Server(settings, workdir / f"serve-{store}-{commit_name(group)}.log", **extra_env).start()
        try:
            return measure(server, secret, store, commit_name(group), args)
        finally:
            server.stop()
    finally:
        if schema:
            with psycopg.connect(args.database_url, autocommit=True) as conn:
                conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))


@dataclass
class EdgeOnly:
    """bench/edge_only.py in a process of its own: the machine's ceiling for our webhook edge."""

    port: int
    process: subprocess.Popen[bytes]  # as Server's: what measure() reads the CPU seconds of

    @staticmethod
    def run(args: argparse.Namespace) -> list[Result]:
        secret, port = new_secret(), free_port()
        script = Path(__file__).resolve().parent / "edge_only.py"
        process = subprocess.Popen([sys.executable, str(script), "--port", str(port), "--secret", secret])
        edge = EdgeOnly(port, process)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", edge.port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError("bench/edge_only.py did not start") from None
                    time.sleep(0.1)
            return measure(edge, secret, "edge only", "-", args)
        finally:
            process.terminate()
            process.wait(10)


def measure(server: Server | EdgeOnly, secret: str, store: str, commit: str, args: argparse.Namespace) -> list[Result]:
    results = []
    path = "/v1/tenants/bench/webhooks/crm"
    budget = int(args.seconds * 12_000) + 2_000  # more signed requests than the server can take in time
    warm = signed_requests(secret, server.port, path, [json.dumps(give_body("warm", n)).encode() for n in range(500)])
    drive(server.port, warm, args.concurrency, 5)

    pid = server.process.pid
    bodies = [json.dumps(give_body(f"single-{commit}", n)).encode() for n in range(budget)]
    requests = signed_requests(secret, server.port, path, bodies)
    results.append(_measured(pid, store, "single", commit, args.concurrency, 1, server.port, requests, args.seconds))

    batches = []
    for b in range(max(200, int(args.seconds * 400))):
        events = [give_body(f"batch-{commit}-{b}", n) for n in range(100)]
        batches.append(json.dumps({"events": events}).encode())
    requests = signed_requests(secret, server.port, path + "/batch", batches)
    results.append(
        _measured(pid, store, "batch100", commit, args.batch_concurrency, 100, server.port, requests, args.seconds)
    )
    return results


def _measured(pid, store, mode, commit, concurrency, facts_per_request, port, requests, seconds) -> Result:
    """One drive, with the CPU seconds serve's tree used meanwhile: HTTP processes, and the rest."""
    before = cpu_by_role(pid)
    latencies, bad, elapsed = drive(port, requests, concurrency, seconds)
    used = cpu_by_role(pid) - before
    result = _result(store, mode, commit, concurrency, latencies, bad, elapsed, facts_per_request)
    result.http_cpu_s = sum(seconds for role, seconds in used.items() if role in HTTP_ROLES)
    result.other_cpu_s = sum(seconds for role, seconds in used.items() if role not in HTTP_ROLES)
    return result


def _result(store, mode, commit, concurrency, latencies, bad, elapsed, facts_per_request) -> Result:
    ordered = sorted(latencies)
    return Result(
        store=store,
        mode=mode,
        commit=commit,
        concurrency=concurrency,
        requests=len(ordered),
        facts=len(ordered) * facts_per_request,
        seconds=elapsed,
        p50_ms=statistics.median(ordered) * 1000 if ordered else float("nan"),
        p99_ms=ordered[int(len(ordered) * 0.99) - 1] * 1000 if ordered else float("nan"),
        non_2xx=dict(Counter(bad)),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch-concurrency", type=int, default=4)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--http-workers", type=int, default=1, help="serve's RECIPROCITY_HTTP_WORKERS")
    parser.add_argument(
        "--naive", action=argparse.BooleanOptionalAction, default=True, help="also measure one transaction per request"
    )
    parser.add_argument(
        "--edge-only",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure bench/edge_only.py (signature and contract, nothing stored): the machine's ceiling",
    )
    args = parser.parse_args()
    results: list[Result] = EdgeOnly.run(args) if args.edge_only else []
    with tempfile.TemporaryDirectory(prefix="reciprocity-bench-") as tmp:
        for store in args.stores.split(","):
            for group in (True, False) if args.naive else (True,):
                results.extend(run_store(store, group, args, Path(tmp)))
    print(
        f"\n{'store':<11}{'mode':<10}{'commit':<8}{'conns':>6}{'req/s':>10}{'facts/s':>10}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'HTTP CPU':>10}{'others':>8}  non-2xx"
    )
    for r in results:
        print(
            f"{r.store:<11}{r.mode:<10}{r.commit:<8}{r.concurrency:>6}{r.requests_per_s:>10.0f}"
            f"{r.facts_per_s:>10.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.cpu_us_per_fact(r.http_cpu_s):>10.0f}"
            f"{r.cpu_us_per_fact(r.other_cpu_s):>8.0f}  {r.non_2xx or '-'!s}"
        )
    print(
        "HTTP CPU: µs of CPU per fact that serve's HTTP processes (with their writers) used while measured; others:"
        " the rest of its tree meanwhile (background, influence, nats-server), which may finish the work later"
    )
    for store in dict.fromkeys(r.store for r in results):
        for mode in ("single", "batch100"):
            pair = {r.commit: r for r in results if r.store == store and r.mode == mode}
            if "group" in pair and "naive" in pair:
                ratio = pair["group"].facts_per_s / pair["naive"].facts_per_s
                print(f"group commit gain, {store} {mode}: x{ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
