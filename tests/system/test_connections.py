"""Each role's share of PostgreSQL's connections, counted where an operator counts them: pg_stat_activity,
by the `application_name` every process gives its connections (`reciprocity-<role>-<pid>`)."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections import Counter, defaultdict

import psycopg
import pytest

from services.settings import Settings
from tests.helpers import Sender, envelope, give
from tests.processes import Server, cli, cli_json

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

# README, "Connections": the most one process of each role holds with the default settings, and what a
# standby projector or relay holds (the influence process's connections count as its projector's).
MOST = {"ingest": 6, "query": 10, "projector": 14, "relay": 7}
STANDBY_MOST = 4
LOAD_S = 6.0


def connections_by_name(database_url: str) -> Counter[str]:
    with psycopg.connect(database_url.split("?")[0], autocommit=True) as admin:
        rows = admin.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity "
            "WHERE application_name LIKE 'reciprocity-%%' AND datname = current_database() GROUP BY 1"
        ).fetchall()
    return Counter(dict(rows))


def test_each_role_holds_no_more_connections_than_the_readme_says(postgres_schema_url, nats_server, tmp_path):
    """Two ingest, a query, two projectors and two relays as processes, under load for a few seconds: every
    process names its connections, none holds more than its role's bound, and the standby projector and relay
    hold no more than a standby's."""
    settings = Settings(data_dir=tmp_path / "data", database_url=postgres_schema_url)
    done = cli(settings, "migrate")
    assert done.returncode == 0, done.stderr
    cli_json(settings, "tenant", "create", "acme")
    secret = cli_json(settings, "source", "add", "acme", "crm")["secret"]
    read_key = cli_json(settings, "key", "add", "acme", "--scope", "read")["key"]
    sender = Sender("acme", "crm", secret, read_key)
    roles = ["ingest", "ingest", "query", "projector", "projector", "relay", "relay"]
    servers: list[tuple[str, Server]] = []
    try:
        for n, role in enumerate(roles):
            server = Server(
                settings, tmp_path / f"{role}-{n}.log", RECIPROCITY_ROLE=role, RECIPROCITY_NATS_URL=nats_server.url,
                RECIPROCITY_MIGRATE="false",
            )  # fmt: skip
            servers.append((role, server.start()))
        ingest = [server for role, server in servers if role == "ingest"]
        query = next(server for role, server in servers if role == "query")
        most: dict[str, int] = defaultdict(int)
        deadline = time.monotonic() + LOAD_S
        sent = 0
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            while time.monotonic() < deadline:
                facts = [give(f"g{sent + k}", f"p{k % 7}", f"p{(k + 3) % 7}") for k in range(8)]
                sent += len(facts)
                posts = [
                    pool.submit(ingest[k % 2].post, sender.path, body, sender.headers(body))
                    for k, body in enumerate(json.dumps(envelope(fact)).encode() for fact in facts)
                ]
                reads = [
                    pool.submit(query.get, f"/v1/tenants/acme/participants/p{k}/balance", sender.read_headers())
                    for k in range(7)
                ]
                assert {future.result()[0] for future in posts} <= {201}
                assert {future.result()[0] for future in reads} <= {200, 404}
                for name, count in connections_by_name(settings.database_url).items():
                    most[name] = max(most[name], count)
        states = {server.process.pid: (role, server.get("/readyz")[1]) for role, server in servers}
        projecting = [
            pid for pid, (role, body) in states.items() if role == "projector" and body["views"]["projecting"]
        ]
        assert len(projecting) == 1, states
        influence = sum(count for name, count in most.items() if name.startswith("reciprocity-influence-"))
        held = {pid: most.get(f"reciprocity-{role}-{pid}", 0) for pid, (role, _) in states.items()}
        report = {f"{states[pid][0]}-{pid}": count for pid, count in held.items()} | {"influence": influence}
        assert all(held.values()), f"a process whose connections are not named: {report}"
        for pid, (role, _) in states.items():
            assert held[pid] + (influence if pid in projecting else 0) <= MOST[role], report
        standby = next(pid for pid, (role, _) in states.items() if role == "projector" and pid not in projecting)
        assert held[standby] <= STANDBY_MOST, report
        relays = sorted(held[pid] for pid, (role, _) in states.items() if role == "relay")
        assert relays[0] <= STANDBY_MOST, report  # the relay that stands by
        print("connections held at most:", report)
    finally:
        for _, server in servers:
            server.stop()
