"""Memory and catch-up benchmark: serve's whole process tree under sustained batch ingest.

    .venv/bin/python bench/memory.py                                  # 1M facts, 100k people
    .venv/bin/python bench/memory.py --facts 100000 --participants 10000
    .venv/bin/python bench/memory.py --env GOMEMLIMIT=off             # an extra variable for serve

It starts `reciprocity serve` on a fresh SQLite data directory with the embedded defaults (its own
nats-server; `--http-workers` HTTP processes, 2 as in the issue's first measurement), generates N facts
among P people (bench/views.py's generator: skewed givers, gives, introductions, acknowledgements,
reversals), and posts them as signed batch webhooks from a client in its own process. Meanwhile it samples
every process in serve's tree (VmRSS and VmHWM from /proc/<pid>/status, CPU seconds from /proc/<pid>/stat,
by role) and the views' position from /readyz, until the views have caught up, influence has recomputed, and
the relay and the KV writer have reached the head. It prints each role's peak memory and CPU seconds (while
ingest ran, and in all: where the two cores went), the tree's peak sum, batch ingest's facts/s and the
follower's facts/s (the reciprocity view's position over time), and the raw figures as JSON on the last
line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import re
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.process_tree import cpu_seconds, serve_processes
from bench.views import SOURCE, TENANT, FactGenerator, background_caught_up, note
from ledger.signatures import secret_key, sign
from projections.runtime import open_view_store
from services.settings import Settings
from tests.processes import Server, cli_json

CONTENT_LENGTH = re.compile(rb"(?i)content-length: *(\d+)")
RETRY_AFTER = re.compile(rb"(?i)retry-after: *(\d+)")
REJECTED_EXAMPLES_MAX = 5  # facts finally rejected, shown with their problem
RETRY_ROUNDS_MAX = 5  # rounds of resending what was refused as retryable (refs to facts still in flight)
SETTLE_S = 5.0  # sampling goes on this long after everything caught up: memory a process frees late shows


# --- the facts, written to a file before serve starts (generating them would compete with serve) --------


def write_batches(path: Path, facts: int, participants: int, batch: int) -> int:
    """One batch body per line; returns the number of batches."""
    generator = FactGenerator(TENANT, facts, participants, seed=1)
    batches = 0
    with path.open("wb") as out:
        for first in range(0, facts, batch):
            events = []
            for n in range(first, min(first + batch, facts)):
                fact = generator.fact(n)
                events.append({"type": fact.type.value, "timestamp": fact.data["occurred_at"], "data": fact.data})
            out.write(json.dumps({"events": events}).encode() + b"\n")
            batches += 1
            if first and first % 200_000 == 0:
                note(f"  generated {first:,} facts")
    return batches


# --- the client: signed batches on a few keep-alive connections, in its own process ---------------------


def _request(secret: bytes, port: int, path: str, body: bytes) -> bytes:
    message_id, now = f"msg_{uuid.uuid4().hex}", int(time.time())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nwebhook-id: {message_id}\r\nwebhook-timestamp: {now}\r\n"
        f"webhook-signature: {sign(secret, message_id, now, body)}\r\n\r\n"
    )
    return head.encode() + body


async def _post_all(
    port: int, path: str, secret: bytes, bodies: asyncio.Queue, outcomes: Counter, retry: list, examples: list
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while (body := await bodies.get()) is not None:
        while True:
            writer.write(_request(secret, port, path, body))
            head = await reader.readuntil(b"\r\n\r\n")
            answer = json.loads(await reader.readexactly(int(CONTENT_LENGTH.search(head).group(1))))
            if head[9:12] != b"503" or not answer.get("retryable"):
                break
            outcomes[f"http 503 {answer['type'].rsplit('/', 1)[-1]}, sent again"] += 1  # views catching up
            await asyncio.sleep(float(RETRY_AFTER.search(head).group(1)))
        if head[9:10] != b"2":
            outcomes[f"http {head[9:12].decode()}"] += 1
            continue
        events = json.loads(body)["events"]
        for event, result in zip(events, answer["results"], strict=True):
            outcomes[result["status"]] += 1
            if result["status"] == "rejected" and result["problem"].get("retryable"):
                retry.append(event)  # an acknowledgement whose give is in a batch still in flight
            elif result["status"] == "rejected":
                outcomes[f"rejected: {result['problem']['type'].rsplit('/', 1)[-1]}"] += 1
                if len(examples) < REJECTED_EXAMPLES_MAX:
                    examples.append({"event": event, "problem": result["problem"]})
        if b"connection: close" in head.lower():
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()


async def _post_file(port: int, secret: str, batches: Path, connections: int, batch: int) -> dict[str, Any]:
    path, key = f"/v1/tenants/{TENANT}/webhooks/{SOURCE}/batch", secret_key(secret)
    outcomes: Counter[str] = Counter()
    started, retried, examples = time.time(), 0, []
    pending: list[bytes] = [line.rstrip(b"\n") for line in batches.open("rb")]
    for _ in range(RETRY_ROUNDS_MAX):
        if not pending:
            break
        bodies: asyncio.Queue = asyncio.Queue()
        for body in pending:
            bodies.put_nowait(body)
        for _ in range(connections):
            bodies.put_nowait(None)
        retry: list[dict] = []
        await asyncio.gather(
            *(_post_all(port, path, key, bodies, outcomes, retry, examples) for _ in range(connections))
        )
        outcomes["rejected"] -= len(retry)  # counted again when sent again
        retried += len(retry)
        pending = [json.dumps({"events": retry[i : i + batch]}).encode() for i in range(0, len(retry), batch)]
    if pending:
        outcomes["rejected"] += len(retry)
        outcomes[f"rejected: still retryable after {RETRY_ROUNDS_MAX} rounds"] += len(retry)
    return {
        "started": started, "ended": time.time(), "outcomes": dict(outcomes), "retried": retried,
        "rejected_examples": examples,
    }  # fmt: skip


def _post_in_process(port, secret, batches, connections, batch, queue) -> None:
    queue.put(asyncio.run(_post_file(port, secret, batches, connections, batch)))


# --- sampling serve's tree ----------------------------------------------------------------------------


@dataclass
class Samples:
    """What the sampler saw: each role's peaks, the tree's peak sum, and the views' position over time."""

    hwm_mib: dict[str, float] = field(default_factory=dict)  # role -> the highest VmHWM of any of its processes
    rss_mib: dict[str, float] = field(default_factory=dict)  # role -> the highest VmRSS sampled
    tree_rss_peak_mib: float = 0.0  # the highest sum of VmRSS over the tree in one sample
    positions: list[tuple[float, int, int, int]] = field(default_factory=list)  # (time, head, views, influence)
    processes: dict[str, int] = field(default_factory=dict)  # role -> pids seen
    cpu_s: dict[str, tuple[str, float]] = field(default_factory=dict)  # pid -> (role, its CPU seconds so far)
    cpu_timeline: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (time, role -> CPU s)

    def take(self, pid: int, server: Server) -> None:
        total, seen = 0.0, Counter[str]()
        for process, role in serve_processes(pid):
            try:
                status = dict(line.split(":", 1) for line in Path(f"/proc/{process}/status").read_text().splitlines())
                self.cpu_s[process] = (role, cpu_seconds(process))
            except OSError:
                continue  # it ended between the listing and the read
            rss, hwm = (int(status[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))
            self.hwm_mib[role] = max(hwm, self.hwm_mib.get(role, 0.0))
            self.rss_mib[role] = max(rss, self.rss_mib.get(role, 0.0))
            total += rss
            seen[role] += 1
        self.tree_rss_peak_mib = max(total, self.tree_rss_peak_mib)
        by_role = Counter[str]()
        for role, seconds in self.cpu_s.values():  # processes that ended keep their last reading
            by_role[role] += seconds
        self.cpu_timeline.append((time.time(), dict(by_role)))
        self.processes = {role: max(n, self.processes.get(role, 0)) for role, n in seen.items()}
        ready = server.get("/readyz")[1]
        views = ready["views"]
        positions = (ready["head_position"], views["reciprocity"]["position"], views["influence"]["position"])
        self.positions.append((time.time(), *positions))


def sample_until(stop: threading.Event, samples: Samples, pid: int, server: Server, interval_s: float) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        try:
            samples.take(pid, server)
        except (OSError, KeyError, TypeError) as missed:  # readyz busy for a moment: the next sample counts
            note(f"  sample missed: {type(missed).__name__}: {missed}")
        stop.wait(max(0.0, interval_s - (time.perf_counter() - started)))


# --- one run ------------------------------------------------------------------------------------------


def cpu_figures(samples: Samples, ingest: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each role's CPU seconds while ingest ran, and over the whole run: where the machine's two cores went."""
    during = [c for t, c in samples.cpu_timeline if ingest["started"] <= t <= ingest["ended"]]
    last = samples.cpu_timeline[-1][1] if samples.cpu_timeline else {}
    first = during[0] if during else {}
    end = during[-1] if during else {}
    return {
        "cpu_s_during_ingest": {role: end.get(role, 0.0) - first.get(role, 0.0) for role in end},
        "cpu_s_total": last,
    }


def first_time_at(positions: list[tuple[float, int, int, int]], column: int, target: int) -> float | None:
    return next((p[0] for p in positions if p[column] >= target), None)


def follower_figures(samples: Samples, ingest: dict[str, Any], recorded: int) -> dict[str, Any]:
    """Batch ingest's facts/s against the follower's: the reciprocity view's position over the same time."""
    started, ended = ingest["started"], ingest["ended"]
    during = [p for p in samples.positions if started <= p[0] <= ended]
    head = samples.positions[-1][1]
    caught_up = first_time_at(samples.positions, 2, head)
    influenced = first_time_at(samples.positions, 3, head)
    figures: dict[str, Any] = {"ingest_s": ended - started, "ingest_facts_per_s": recorded / (ended - started)}
    if len(during) >= 2:
        (t0, _, v0, _), (t1, h1, v1, _) = during[0], during[-1]
        figures["follower_during_ingest_facts_per_s"] = (v1 - v0) / (t1 - t0)
        figures["view_lag_at_ingest_end_facts"] = h1 - v1
    if caught_up is not None:
        figures["views_caught_up_after_ingest_s"] = max(0.0, caught_up - ended)
        figures["follower_facts_per_s"] = recorded / (caught_up - started)  # from the first fact to the head
    if influenced is not None:
        figures["influence_caught_up_after_ingest_s"] = max(0.0, influenced - ended)
    return figures


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    settings = Settings(data_dir=workdir / "data")
    cli_json(settings, "tenant", "create", TENANT)
    secret = cli_json(settings, "source", "add", TENANT, SOURCE)["secret"]
    note(f"generating {args.facts:,} facts among {args.participants:,} people")
    batches = workdir / "batches.jsonl"
    write_batches(batches, args.facts, args.participants, args.batch)
    extra_env = dict(pair.split("=", 1) for pair in args.env)
    server = Server(settings, workdir / "serve.log", RECIPROCITY_HTTP_WORKERS=str(args.http_workers), **extra_env)
    server.start()
    samples, stop = Samples(), threading.Event()
    sampler = threading.Thread(
        target=sample_until, args=(stop, samples, server.process.pid, server, args.interval), daemon=True
    )
    try:
        sampler.start()
        note(f"posting {args.facts:,} facts in batches of {args.batch:,} on {args.connections} connections")
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        client = context.Process(
            target=_post_in_process, args=(server.port, secret, batches, args.connections, args.batch, queue)
        )
        client.start()
        ingest = queue.get(timeout=args.wait)
        client.join()
        note(f"ingest done: {ingest['outcomes']}; waiting for views, influence, relay and KV")
        store = open_view_store(None, settings.data_dir)
        try:
            deadline = time.monotonic() + args.wait
            while not _all_caught_up(server, store) and time.monotonic() < deadline:
                time.sleep(1.0)
            caught_up = time.monotonic() < deadline
        finally:
            store.close()
        time.sleep(SETTLE_S)
    finally:
        stop.set()
        sampler.join()
        server.stop()
    recorded = ingest["outcomes"].get("recorded", 0)
    figures = {"facts": args.facts, "participants": args.participants, "recorded": recorded, "caught_up": caught_up}
    figures.update(outcomes=ingest["outcomes"], retried=ingest["retried"], env=extra_env)
    figures.update(rejected_examples=ingest["rejected_examples"])
    figures.update(follower_figures(samples, ingest, recorded))
    figures.update(cpu_figures(samples, ingest))
    figures.update(hwm_mib=samples.hwm_mib, rss_mib=samples.rss_mib, processes=samples.processes)
    figures.update(tree_rss_peak_mib=samples.tree_rss_peak_mib, tree_hwm_sum_mib=sum(samples.hwm_mib.values()))
    return figures


def _all_caught_up(server: Server, store: Any) -> bool:
    views = server.get("/readyz")[1]["views"]
    if views["reciprocity"]["events"] or views["influence"]["events"]:
        return False
    return background_caught_up(server, store)


def print_report(figures: dict[str, Any]) -> None:
    print(f"\n{figures['recorded']:,} facts recorded of {figures['facts']:,}, {figures['participants']:,} people")
    during, total = figures["cpu_s_during_ingest"], figures["cpu_s_total"]
    print(f"{'process':<14}{'count':>6}{'VmHWM MiB':>11}{'VmRSS peak MiB':>16}{'CPU s in ingest':>17}{'CPU s':>8}")
    for role, hwm in sorted(figures["hwm_mib"].items(), key=lambda item: -item[1]):
        print(
            f"{role:<14}{figures['processes'].get(role, 0):>6}{hwm:>11.0f}{figures['rss_mib'][role]:>16.0f}"
            f"{during.get(role, 0.0):>17.1f}{total.get(role, 0.0):>8.1f}"
        )
    print(f"{'tree':<14}{'':>6}{figures['tree_hwm_sum_mib']:>11.0f}{figures['tree_rss_peak_mib']:>16.0f}"
          "   (sum of peaks; highest sampled sum)")  # fmt: skip
    for key, label in (
        ("ingest_facts_per_s", "batch ingest, facts/s"),
        ("follower_during_ingest_facts_per_s", "follower during ingest, facts/s"),
        ("follower_facts_per_s", "follower, first fact to head, facts/s"),
        ("view_lag_at_ingest_end_facts", "view lag when ingest ended, facts"),
        ("views_caught_up_after_ingest_s", "views caught up after ingest, s"),
        ("influence_caught_up_after_ingest_s", "influence caught up after ingest, s"),
    ):
        value = figures.get(key)
        print(f"{label:<40}{'-' if value is None else f'{value:,.1f}':>12}")
    for example in figures["rejected_examples"]:
        event, problem = example["event"], example["problem"]
        print(f"rejected: {event['type']} {event['data'].get('external_id')}: {problem.get('detail')}")
    print(json.dumps(figures, default=str))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--participants", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000, help="facts per batch webhook (1,000 at most)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--http-workers", type=int, default=2, help="serve's RECIPROCITY_HTTP_WORKERS")
    parser.add_argument("--interval", type=float, default=0.5, help="s between samples")
    parser.add_argument("--wait", type=float, default=3600, help="s to wait for ingest, then for catching up")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for serve; repeatable")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reciprocity-memory-") as tmp:
        figures = run(args, Path(tmp))
    print_report(figures)
    return 0 if figures["caught_up"] else 1


if __name__ == "__main__":
    sys.exit(main())
