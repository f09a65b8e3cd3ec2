"""The roles as separate processes on PostgreSQL and a NATS cluster, as Kubernetes runs them, for the cluster
system test and bench/cluster.py: signed load from sender threads, the active projector and relay found from
what the processes report, and JetStream asked again until it answers (a node's death may leave the cluster
electing a meta leader for a while, and a request meanwhile times out)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nats.js import JetStreamContext
from prometheus_client.parser import text_string_to_metric_families

from ledger.store import open_ledger
from projections.nats_bus import BUCKETS, STREAM, bucket_stream
from services.settings import Settings
from tests.helpers import Sender, envelope, give, until
from tests.nats_cluster import NatsCluster
from tests.processes import Server, cli, cli_json

T = TypeVar("T")
ROLES = ("ingest", "ingest", "query", "projector", "projector", "relay", "relay")
STREAMS = (STREAM, *(bucket_stream(bucket) for bucket in BUCKETS))
JETSTREAM_TIMEOUT_S = 2.0  # one request; `retried` asks again until its deadline
RETRY_PAUSE_S = 0.25
READY_TIMEOUT_S = 120.0
FAILOVER_S = 60.0  # generous: a standby asks for its lock every 2 s, on two loaded cores


class RoleCluster:
    """Two ingest, a query, two projectors and two relays (ROLES), each a `reciprocity serve --role` process on
    one PostgreSQL schema and the servers of `nats`, with the stream and the buckets on `replicas` servers."""

    def __init__(self, home: Path, database_url: str, nats: NatsCluster, replicas: int, roles=ROLES) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.nats = nats
        self.settings = Settings(data_dir=home / "data", database_url=database_url)
        self.replicas = replicas
        self.roles = roles
        self.servers: list[tuple[str, Server]] = []
        self.sender: Sender | None = None

    def start(self) -> RoleCluster:
        """Migrates, makes tenant `acme` with source `crm` and a read key, then starts every role at once."""
        done = cli(self.settings, "migrate")
        assert done.returncode == 0, done.stderr
        cli_json(self.settings, "tenant", "create", "acme")
        secret = cli_json(self.settings, "source", "add", "acme", "crm")["secret"]
        read_key = cli_json(self.settings, "key", "add", "acme", "--scope", "read")["key"]
        self.sender = Sender("acme", "crm", secret, read_key)
        env = {
            "RECIPROCITY_NATS_URL": self.nats.url(),
            "RECIPROCITY_NATS_REPLICAS": str(self.replicas),
            "RECIPROCITY_MIGRATE": "false",
        }
        for n, role in enumerate(self.roles):
            log = self.home / f"{role}-{n}.log"
            # Seven processes starting at once on two loaded cores: slower than one alone.
            server = Server(self.settings, log, ready_timeout_s=READY_TIMEOUT_S, RECIPROCITY_ROLE=role, **env)
            self.servers.append((role, server))
        with concurrent.futures.ThreadPoolExecutor(len(self.servers)) as pool:
            list(pool.map(lambda pair: pair[1].start(), self.servers))  # raises the first that failed to start
        return self

    def stop(self) -> None:
        for _, server in self.servers:
            server.stop()

    def of_role(self, role: str) -> list[Server]:
        return [server for name, server in self.servers if name == role]

    def alive(self, role: str) -> list[Server]:
        return [server for server in self.of_role(role) if server.process and server.process.poll() is None]

    def active(self, worker: str) -> Server | None:
        """The live `worker` (projector or relay) process holding its lock, by what it reports on /metrics."""
        for server in self.alive(worker):
            if scraped(server, "reciprocity_worker_active", worker=worker) == 1:
                return server
        return None

    def log_ids(self) -> list[str]:
        """Every fact's event id, in log order, read from the store itself."""
        ledger = open_ledger(self.settings.database_url, self.settings.data_dir)
        try:
            return [stored.fact.event_id for stored in ledger.read_log(0, 10_000_000)]
        finally:
            ledger.close()

    def view_position(self, timeout_s: float = 30.0) -> int:
        """The reciprocity view's position, as the query process reports it (asked again while it cannot say:
        its probe reads the views with a 2 s timeout, which a loaded machine may exceed)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                _, body = self.of_role("query")[0].get("/readyz")
            except OSError as failure:
                body = {"error": str(failure)}
            if isinstance(body, dict) and isinstance(body.get("views"), dict):
                return body["views"]["reciprocity"]["position"]
            assert time.monotonic() < deadline, f"the query process reports no view position: {body}"
            time.sleep(0.1)


def scraped(server: Server, name: str, **labels: str) -> float | None:
    """One sample of a process's /metrics (None when it has none, or does not answer)."""
    try:
        with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    return None


@dataclass
class Acknowledged:
    event_id: str
    at: float  # time.monotonic() of the 2xx


@dataclass
class SignedLoad:
    """Sender threads posting signed gives, each to its own ingest process, as apps do: a retryable answer
    (503 with `retryable`) or no answer at all is sent again until it is acknowledged (201, or 200 duplicate
    when the first try was recorded after all). Every answer other than a 2xx is kept, to be judged."""

    targets: list[Server]
    sender: Sender
    people: int = 12
    pause_s: float = 0.0
    acknowledged: list[Acknowledged] = field(default_factory=list)
    refusals: list[tuple[int | str, Any]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> SignedLoad:
        for number, target in enumerate(self.targets):
            thread = threading.Thread(
                target=self.send_until_stopped, args=(number, target), name=f"load-{number}", daemon=True
            )
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)

    def send_until_stopped(self, number: int, target: Server) -> None:
        n = 0
        while not self.stopping.is_set():
            a, b = (n * 7 + number) % self.people, (n * 5 + 3 * number + 1) % self.people
            fact = give(f"s{number}-{n}", f"p{a}", f"p{b if b != a else (a + 1) % self.people}", value=str(1 + n % 3))
            self.post_until_acknowledged(target, json.dumps(envelope(fact)).encode())
            n += 1
            if self.pause_s:
                time.sleep(self.pause_s)

    def post_until_acknowledged(self, target: Server, body: bytes) -> None:
        while True:
            try:
                status, answer = target.post(self.sender.path, body, self.sender.headers(body))
            except OSError as failure:
                status, answer = type(failure).__name__, str(failure)
            if status in (200, 201):
                with self.lock:
                    self.acknowledged.append(Acknowledged(answer["event_id"], time.monotonic()))
                return
            with self.lock:
                self.refusals.append((status, answer))
            retryable = status == 503 and isinstance(answer, dict) and answer.get("retryable") is True
            if not retryable:
                return  # judged by the test: only a retryable 503 is an answer ingest may give
            time.sleep(0.1)

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)

    def longest_gap_s(self, start: float, end: float) -> float:
        """The longest time between two acknowledgements (or the window's ends) within [start, end]."""
        with self.lock:
            moments = sorted(ack.at for ack in self.acknowledged if start <= ack.at <= end)
        edges = [start, *moments, end]
        return max(later - earlier for earlier, later in itertools.pairwise(edges))


async def retried(call: Callable[[], Awaitable[T]], timeout_s: float, what: str) -> T:
    """`call` asked again until it answers or `timeout_s` passed (then its last failure is raised)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except Exception:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: JetStream did not answer in {timeout_s} s") from None
            await asyncio.sleep(RETRY_PAUSE_S)


async def replicated(js: JetStreamContext, replicas: int) -> bool:
    """The stream and every bucket on `replicas` servers, each follower current (False while unknown)."""
    return await current_streams(js, replicas) == set(STREAMS)


async def current_streams(js: JetStreamContext, replicas: int) -> set[str]:
    """Those of the stream and the buckets that are on `replicas` servers with every follower current now."""
    current = set()
    for stream in STREAMS:
        try:
            info = await js.stream_info(stream)
        except Exception:
            continue
        if info.config.num_replicas != replicas or info.cluster is None:
            continue
        followers = info.cluster.replicas or []
        if len(followers) == replicas - 1 and all(peer.current and not peer.offline for peer in followers):
            current.add(stream)
    return current


async def stream_last_seq(js: JetStreamContext) -> int | None:
    try:
        return (await js.stream_info(STREAM)).state.last_seq
    except Exception:
        return None


async def stream_ids(js: JetStreamContext, timeout_s: float = 60.0) -> list[str]:
    """Every message's Nats-Msg-Id, in stream order."""
    info = await retried(lambda: js.stream_info(STREAM), timeout_s, "the stream's info")
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        message = await retried(lambda seq=seq: js.get_msg(STREAM, seq=seq), timeout_s, f"message {seq}")
        ids.append(message.headers["Nats-Msg-Id"])
    return ids


Condition = Callable[[], Awaitable[bool]]


async def kill_the_active(roles: RoleCluster, worker: str, progress: Callable[[], Awaitable[Condition]]) -> float:
    """Kills the process holding `worker`'s lock; returns the seconds until the standby made progress, which
    `progress` defines from where the killed one left off (read after the kill: it can move nothing since)."""
    active = await wait_for(lambda: roles.active(worker), FAILOVER_S, f"an active {worker}")
    killed_at = time.monotonic()
    active.kill()
    await until(await progress(), FAILOVER_S, what=f"the standby {worker} taking over")
    return time.monotonic() - killed_at


async def projector_progress(roles: RoleCluster) -> Condition:
    """The view moved past where the killed projector left it, and the standby holds the lock."""
    before = await asyncio.to_thread(roles.view_position)

    async def moved() -> bool:
        standby = await asyncio.to_thread(roles.active, "projector")
        return standby is not None and await asyncio.to_thread(roles.view_position) > before

    return moved


async def relay_progress(roles: RoleCluster, js: JetStreamContext) -> Condition:
    """The standby relay published a fact past the stream's last when the active one was killed (its position
    after aligning is that one, so only a publish moves it further)."""
    info = await retried(lambda: js.stream_info(STREAM), FAILOVER_S, "the stream's info")
    last = await retried(lambda: js.get_msg(STREAM, seq=info.state.last_seq), FAILOVER_S, "the stream's last")
    before = int(last.headers["Reciprocity-Position"])

    async def published() -> bool:
        standby = await asyncio.to_thread(roles.active, "relay")
        position = standby and await asyncio.to_thread(scraped, standby, "reciprocity_relay_position")
        return bool(position and position > before)

    return published


async def on_stream(js: JetStreamContext, messages: int) -> bool:
    """The stream holds at least `messages` (False while it does not answer)."""
    last = await stream_last_seq(js)
    return last is not None and last >= messages


async def more_than(load: SignedLoad, count: int) -> bool:
    return load.count() > count


async def wait_for(find: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """What `find` returns once it returns something (it blocks: run on a thread)."""
    found: list[T | None] = [None]

    async def present() -> bool:
        found[:] = [await asyncio.to_thread(find)]
        return found[0] is not None

    await until(present, timeout_s, what=what)
    assert found[0] is not None
    return found[0]
