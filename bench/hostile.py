"""Hostile-batch benchmark: how long other requests wait while signed batches of millions of items arrive.

    .venv/bin/python bench/hostile.py                  # 20 s of hostile batches, 2 senders
    .venv/bin/python bench/hostile.py --seconds 10 --senders 4

Starts `reciprocity serve` on SQLite, creates a tenant and a source, then sends signed 8 MiB batches of
2.7 million empty items (each must be refused with 422) from `--senders` connections in a loop, while a
prober asks `/healthz` ten times a second. Prints the probe latency (p50, p99, max) with and without the
hostile load, and how long each hostile batch took to be refused. Target: p99 under 250 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger.signatures import secret_key, sign
from services.settings import Settings
from tests.processes import Server, cli_json

ITEMS = 2_700_000
PROBE_INTERVAL_S = 0.1


def hostile_request(secret: str, port: int, path: str) -> bytes:
    body = b'{"events": [' + b",".join([b"{}"] * ITEMS) + b"]}"
    message_id = f"msg_{uuid.uuid4().hex}"
    now = int(time.time())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nwebhook-id: {message_id}\r\nwebhook-timestamp: {now}\r\n"
        f"webhook-signature: {sign(secret_key(secret), message_id, now, body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    await reader.readexactly(length)
    return int(head.split(b" ")[1])


async def hostile_sender(port: int, request: bytes, until: float, seconds: list[float], statuses: set[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < until:
            started = time.monotonic()
            writer.write(request)
            await writer.drain()
            statuses.add(await read_answer(reader))
            seconds.append(time.monotonic() - started)
    finally:
        writer.close()


async def probe(port: int, until: float) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    latencies = []
    try:
        while time.monotonic() < until:
            started = time.monotonic()
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            await read_answer(reader)
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(PROBE_INTERVAL_S)
    finally:
        writer.close()
    return latencies


def figures(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered) * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  "
        f"max {ordered[-1] * 1000:7.1f} ms  ({len(ordered)} probes)"
    )


async def measure(port: int, request: bytes, seconds: float, senders: int) -> None:
    quiet = await probe(port, time.monotonic() + 3)
    print(f"healthz, quiet:          {figures(quiet)}")
    until = time.monotonic() + seconds
    batch_seconds: list[float] = []
    statuses: set[int] = set()
    _, loaded = await asyncio.gather(
        asyncio.gather(*(hostile_sender(port, request, until, batch_seconds, statuses) for _ in range(senders))),
        probe(port, until),
    )
    print(f"healthz, under attack:   {figures(loaded)}")
    print(
        f"hostile batches: {len(batch_seconds)} answered {sorted(statuses)}, "
        f"median {statistics.median(batch_seconds) * 1000:.0f} ms each (8 MiB sent and refused)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--senders", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        settings = Settings(data_dir=Path(directory) / "data")
        cli_json(settings, "tenant", "create", "bench")
        secret = cli_json(settings, "source", "add", "bench", "crm")["secret"]
        server = Server(settings, Path(directory) / "serve.log").start()
        try:
            request = hostile_request(secret, server.port, "/v1/tenants/bench/webhooks/crm/batch")
            asyncio.run(measure(server.port, request, args.seconds, args.senders))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
