"""The embedded nats-server runs within the memory bounds its settings give it, and still serves the stream."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nats
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import APIError

from projections.nats_bus import STREAM
from tests.conftest import make_sender
from tests.helpers import envelope, give
from tests.processes import Server


def _environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in raw if b"=" in entry)


def _nats_pid(server: Server) -> int:
    return int((server.settings.data_dir / "nats" / "nats-server.pid").read_text())


async def _memory_streams(url: str, bound_mib: int) -> tuple[bool, str]:
    """Whether a memory stream within the bound is created, and why one over it is refused (a stranger's
    streams: ours are on file)."""
    async with await nats.connect(url) as client:
        js = client.jetstream()
        within = StreamConfig(name="WITHIN", subjects=["within.>"], storage=StorageType.MEMORY,
                              max_bytes=(bound_mib // 2) << 20)  # fmt: skip
        created = (await js.add_stream(within)).config.name == "WITHIN"
        over = StreamConfig(name="OVER", subjects=["over.>"], storage=StorageType.MEMORY,
                            max_bytes=(bound_mib * 2) << 20)  # fmt: skip
        try:
            await js.add_stream(over)
        except APIError as refused:
            return created, str(refused.description)
        return created, "created"


async def _stream_messages(url: str, wanted: int, timeout_s: float) -> int:
    async with await nats.connect(url) as client:
        js, deadline = client.jetstream(), time.monotonic() + timeout_s
        while (found := (await js.stream_info(STREAM)).state.messages) < wanted and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return found


def test_serve_starts_nats_with_its_memory_limit_and_jetstream_bound_and_the_stream_fills(sqlite_settings, tmp_path):
    """RECIPROCITY_NATS_MEMORY_LIMIT_MIB reaches the embedded server as GOMEMLIMIT and
    RECIPROCITY_NATS_JETSTREAM_MEMORY_MIB bounds its memory streams; facts still reach the stream."""
    sender = make_sender(sqlite_settings, "acme", "crm")
    server = Server(
        sqlite_settings, tmp_path / "serve.log", RECIPROCITY_NATS_MEMORY_LIMIT_MIB="200",
        RECIPROCITY_NATS_JETSTREAM_MEMORY_MIB="32",
    ).start()  # fmt: skip
    try:
        assert _environment_of(_nats_pid(server))["GOMEMLIMIT"] == "200MiB"
        url = f"nats://127.0.0.1:{server.nats_port}"
        created, refusal = asyncio.run(_memory_streams(url, 32))
        assert created and "insufficient" in refusal.lower(), refusal
        body = json.dumps({"events": [envelope(give(f"g{n}", "ann", "bob")) for n in range(3)]}).encode()
        status, answer = server.post(sender.path + "/batch", body, sender.headers(body))
        assert status == 200 and [r["status"] for r in answer["results"]] == ["recorded"] * 3
        assert asyncio.run(_stream_messages(url, 3, timeout_s=10)) == 3
    finally:
        server.stop()


def test_a_memory_limit_of_zero_leaves_the_server_without_one(sqlite_settings, tmp_path):
    """RECIPROCITY_NATS_MEMORY_LIMIT_MIB=0 starts the server without GOMEMLIMIT, even when serve's own
    environment has one: the setting speaks for the embedded server."""
    server = Server(sqlite_settings, tmp_path / "serve.log", RECIPROCITY_NATS_MEMORY_LIMIT_MIB="0", GOMEMLIMIT="1GiB")
    server.start()
    try:
        assert "GOMEMLIMIT" not in _environment_of(_nats_pid(server))
    finally:
        server.stop()
