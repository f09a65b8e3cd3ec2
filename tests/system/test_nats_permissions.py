"""Tenant isolation on NATS: a client confined to one tenant by ordinary user permissions (the set the
README documents) reads its own tenant's queries, KV keys and events, and is denied everyone else's."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import pytest
from nats.js.api import ConsumerConfig

from projections.nats_bus import open_client
from services.bootstrap import open_components
from services.natsserver import EmbeddedNatsServer
from tests.conftest import make_sender
from tests.helpers import until
from tests.processes import free_port

SERVICE_PASSWORD = "service-secret"
ACME_PASSWORD = "acme-secret"


def documented_user() -> str:
    """Tenant acme's user entry exactly as README "Tenant isolation on NATS" shows it (nats-server reads it
    as it is), with a password: the test proves the documented set, not a copy that could drift from it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Tenant isolation on NATS")[1]
    entry = section.split("```")[1].strip()
    assert entry.startswith("{user: acme,") and 'password: "..."' in entry, entry
    return entry.replace('password: "..."', f'password: "{ACME_PASSWORD}"')


@pytest.fixture
def confining_server(tmp_path):
    config = tmp_path / "nats.conf"
    config.write_text(
        "accounts {\n  APP {\n    jetstream: enabled\n    users: [\n"
        f'      {{user: service, password: "{SERVICE_PASSWORD}"}}\n'
        f"      {documented_user()}\n"
        "    ]\n  }\n}\n"
    )
    server = EmbeddedNatsServer(tmp_path / "nats-home", free_port(), config=config)
    server.start()
    yield server
    server.stop()


async def test_a_tenant_confined_client_is_denied_other_tenants_queries_keys_and_events(settings, confining_server):
    port = confining_server.port
    service_settings = settings.with_(nats_url=f"nats://service:{SERVICE_PASSWORD}@127.0.0.1:{port}")
    senders = {tenant: make_sender(service_settings, tenant, "crm") for tenant in ("acme", "zeta")}
    components = await open_components(service_settings)
    try:
        await asyncio.wait_for(components.bus.prepared.wait(), 20)
        await record(components, senders)
        await create_analytics_consumers(service_settings.nats_url)
        await check_confinement(port)
    finally:
        await components.close()


async def record(components, senders) -> None:
    for tenant, sender in senders.items():
        outcomes = await components.committer.submit([sender_fact(sender, tenant)])
        assert outcomes[0].status == "recorded"
    head = components.ledger.head_position()

    async def published() -> bool:
        return components.bus.relay.position >= head and all(
            components.projections.store.position(f"kv/{bucket}") >= head
            for bucket in ("reciprocity_balances", "reciprocity_pairs")
        )

    await until(published, what="the stream and the buckets")


def sender_fact(sender, tenant: str):
    from datetime import UTC, datetime

    from contracts.webhook_bodies import read_webhook
    from ledger.facts import ReceivedFact
    from tests.helpers import envelope, give

    webhook = read_webhook(json.dumps(envelope(give(f"{tenant}-g1", "ann", "bob"))).encode())
    return ReceivedFact.from_webhook(tenant, sender.source, webhook, datetime.now(UTC))


async def create_analytics_consumers(url: str) -> None:
    """Durable pull consumers per tenant, made by a trusted client (an operator, or `reciprocity tail`)."""
    admin = await open_client(url, "test")
    js = admin.jetstream()
    for tenant in ("acme", "zeta"):
        await js.add_consumer(
            "RECIPROCITY_EVENTS",
            ConsumerConfig(durable_name=f"{tenant}-analytics", filter_subject=f"reciprocity.events.{tenant}.>"),
        )
    await admin.close()


async def pull(client, consumer: str):
    """One message from a durable pull consumer. (A pulled message keeps its stream subject, so it is read
    from an inbox subscription rather than with request().)"""
    inbox = client.new_inbox()
    subscription = await client.subscribe(inbox)
    await client.publish(f"$JS.API.CONSUMER.MSG.NEXT.RECIPROCITY_EVENTS.{consumer}", b'{"batch": 1}', reply=inbox)
    try:
        return await subscription.next_msg(timeout=2)
    finally:
        await subscription.unsubscribe()


async def check_confinement(port: int) -> None:
    denied: list[str] = []

    async def collect(error: Exception) -> None:
        denied.append(str(error))

    acme = await nats.connect(
        f"nats://acme:{ACME_PASSWORD}@127.0.0.1:{port}", inbox_prefix="_INBOX_acme", error_cb=collect
    )
    try:
        own = await acme.request("reciprocity.query.acme.balance", b'{"participant": "ann"}', timeout=5)
        assert json.loads(own.data)["given"]["count"] == 1
        graph = await acme.request("reciprocity.query.acme.graph", b"{}", timeout=5)
        assert [(e["from"], e["to"]) for e in json.loads(graph.data)["edges"]] == [("ann", "bob")]
        ties = await acme.request("reciprocity.query.acme.ties", b'{"participant": "ann"}', timeout=5)
        assert [t["counterpart"] for t in json.loads(ties.data)["items"]] == ["bob"]
        assert "items" in json.loads((await acme.request("reciprocity.query.acme.upkeep", b"{}", timeout=5)).data)
        key = await acme.request("$JS.API.DIRECT.GET.KV_reciprocity_balances.$KV.reciprocity_balances.acme.ann", b"")
        assert json.loads(key.data)["participant"] == "ann"
        assert json.loads((await pull(acme, "acme-analytics")).data)["tenant"] == "acme"

        with pytest.raises(nats.errors.TimeoutError):
            await pull(acme, "zeta-analytics")
        for subject in (
            "reciprocity.query.zeta.balance",
            *(f"reciprocity.query.zeta.{endpoint}" for endpoint in ("graph", "ties", "upkeep")),
            "$JS.API.DIRECT.GET.KV_reciprocity_balances.$KV.reciprocity_balances.zeta.ann",
        ):
            with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                await acme.request(subject, b'{"participant": "ann"}', timeout=1)
        for subject in ("reciprocity.events.zeta.>", "$KV.reciprocity_balances.zeta.>"):
            await acme.subscribe(subject)
        await acme.publish("$KV.reciprocity_balances.acme.ann", b"{}")  # a confined client may never write a view
        await acme.flush()
        await asyncio.sleep(0.5)
    finally:
        await acme.close()
    violations = "\n".join(denied).lower()  # the client reports subjects lowercased
    for subject in (
        "reciprocity.query.zeta.balance",
        "reciprocity.query.zeta.graph",
        "reciprocity.query.zeta.ties",
        "reciprocity.query.zeta.upkeep",
        "KV_reciprocity_balances.$KV.reciprocity_balances.zeta.ann",
        "RECIPROCITY_EVENTS.zeta-analytics",
        "reciprocity.events.zeta.>",
        "$KV.reciprocity_balances.zeta.>",
        "$KV.reciprocity_balances.acme.ann",
    ):
        assert subject.lower() in violations, f"no permissions violation for {subject}: {violations}"
