"""A JetStream cluster of real `nats-server` processes on loopback, for tests: free client and route ports,
a store directory and a server name each, one user with a password (so failover must authenticate)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

from nats.aio.client import Client
from nats.js.api import StorageType, StreamConfig

from projections.nats_bus import open_client
from services.natsserver import EmbeddedNatsServer
from tests.processes import free_port

USER = "service"
PASSWORD = "cluster-secret"
READY_CHECK_STREAM = "CLUSTER_READY_CHECK"


class NatsCluster:
    def __init__(self, home: Path, size: int = 3) -> None:
        routes = [free_port() for _ in range(size)]
        route_urls = ", ".join(f'"nats://127.0.0.1:{port}"' for port in routes)
        self.nodes: list[EmbeddedNatsServer] = []
        for number, route in enumerate(routes):
            config = home / f"node-{number}.conf"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(
                f'authorization {{ user: {USER}, password: "{PASSWORD}" }}\n'
                f'cluster {{ name: "reciprocity-test", listen: "127.0.0.1:{route}", routes: [{route_urls}] }}\n'
            )
            # EmbeddedNatsServer names each server reciprocity-<port> and gives it JetStream under its own dir.
            self.nodes.append(EmbeddedNatsServer(home / f"node-{number}", free_port(), config=config))

    def url(self, nodes: list[EmbeddedNatsServer] | None = None) -> str:
        """RECIPROCITY_NATS_URL naming `nodes` (all by default), each with the user and password."""
        return ",".join(f"nats://{USER}:{PASSWORD}@{node.host}:{node.port}" for node in nodes or self.nodes)

    def start(self) -> NatsCluster:
        """Starts every node (from the main thread: a node dies with the thread that started it)."""
        for node in self.nodes:
            node.start()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def node_named(self, server_name: str) -> EmbeddedNatsServer:
        (node,) = [node for node in self.nodes if f"reciprocity-{node.port}" == server_name]
        return node

    @staticmethod
    def kill(node: EmbeddedNatsServer) -> None:
        """kill -9: no lame-duck mode, no flush."""
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)

    async def client(self) -> Client:
        return await open_client(self.url(), "test", max_reconnect_attempts=-1, reconnect_time_wait=0.2)

    async def until_ready(self, replicas: int, timeout_s: float = 30.0) -> None:
        """Until JetStream can place a stream on `replicas` servers: a meta leader elected and the peers
        known to it (before that, a stream of three replicas is refused for want of peers)."""
        client = await self.client()
        js = client.jetstream()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    config = StreamConfig(
                        name=READY_CHECK_STREAM, subjects=["cluster.ready"], storage=StorageType.MEMORY,
                        num_replicas=replicas,
                    )  # fmt: skip
                    await js.add_stream(config)
                    await js.delete_stream(READY_CHECK_STREAM)
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    with contextlib.suppress(Exception):
                        await js.delete_stream(READY_CHECK_STREAM)
                    await asyncio.sleep(0.25)
        finally:
            await client.close()
