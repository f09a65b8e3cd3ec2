"""Test helpers: a signing sender like any other app, and builders of facts."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from contracts.webhook_bodies import read_webhook
from ledger.facts import ReceivedFact
from ledger.signatures import secret_key, sign

Fact = tuple[str, dict[str, Any]]


def give(fact_id: str, giver: str, receiver: str, **extra: Any) -> Fact:
    return "give.recorded", {"id": fact_id, "giver": giver, "receiver": receiver, "kind": "help", **extra}


def introduction(fact_id: str, introducer: str, first: str, second: str, **extra: Any) -> Fact:
    return "introduction.made", {"id": fact_id, "introducer": introducer, "introduced": [first, second], **extra}


def acknowledgement(fact_id: str, acknowledger: str, ref_id: str, **extra: Any) -> Fact:
    return "acknowledgement.recorded", {"id": fact_id, "acknowledger": acknowledger, "ref": {"id": ref_id}, **extra}


def reversal(fact_id: str, ref_id: str, reason: str = "sent by mistake", **extra: Any) -> Fact:
    return "reversal.recorded", {"id": fact_id, "ref": {"id": ref_id}, "reason": reason, **extra}


def envelope(fact: Fact) -> dict[str, Any]:
    fact_type, data = fact
    return {"type": fact_type, "timestamp": datetime.now(UTC).isoformat(), "data": data}


@dataclass
class Sender:
    """Signs requests as one source of one tenant, with that tenant's read key at hand."""

    tenant: str
    source: str
    secret: str
    read_key: str

    @property
    def path(self) -> str:
        return f"/v1/tenants/{self.tenant}/webhooks/{self.source}"

    def headers(
        self, body: bytes, *, timestamp: int | None = None, secret: str | None = None, message_id: str | None = None
    ) -> dict[str, str]:
        timestamp = int(time.time()) if timestamp is None else timestamp
        message_id = message_id or f"msg_{uuid.uuid4().hex}"
        return {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret_key(secret or self.secret), message_id, timestamp, body),
        }

    async def post(self, client: Any, fact: Fact) -> Any:
        body = json.dumps(envelope(fact)).encode()
        return await client.post(self.path, data=body, headers=self.headers(body))

    async def post_batch(self, client: Any, facts: list[Fact | dict[str, Any]]) -> Any:
        items = [item if isinstance(item, dict) else envelope(item) for item in facts]
        body = json.dumps({"events": items}).encode()
        return await client.post(self.path + "/batch", data=body, headers=self.headers(body))

    def read_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.read_key}"}


# Shared by tests in several folders.
PROBLEM = "application/problem+json"
COMMUNITY_START = datetime(2026, 6, 1, tzinfo=UTC)


async def problem_of(response, status: int) -> dict:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body = await response.json()
    assert body["status"] == status and body["type"] and body["title"] and body["detail"]
    return body


async def post_all(client, facts) -> int:
    """Posts facts in order; returns the position of the last one."""
    position = 0
    for fact in facts:
        response = await client.sender.post(client, fact)
        assert response.status in (200, 201), await response.text()
        position = (await response.json())["position"]
    return position


def received(fact, tenant="acme", source="crm"):
    webhook = read_webhook(json.dumps(envelope(fact)).encode())
    return ReceivedFact.from_webhook(tenant, source, webhook, datetime.now(UTC))


def at(minutes: int) -> str:
    return (COMMUNITY_START + timedelta(minutes=minutes)).isoformat()


def community(n_facts: int = 400) -> list:
    """Background activity: 40 people giving, introducing, thanking and sometimes reversing."""
    people = [f"p{i:02d}" for i in range(40)]
    facts = []
    for n in range(n_facts):
        giver, receiver = people[(n * 7) % 40], people[(n * 11 + 3) % 40]
        if giver == receiver:
            continue
        facts.append(give(f"g{n}", giver, receiver, value=str(1 + n % 5), occurred_at=at(n)))
        if n % 3 == 0:
            facts.append(acknowledgement(f"a{n}", receiver, f"g{n}", occurred_at=at(n + 1)))
        if n % 17 == 0:
            facts.append(introduction(f"i{n}", giver, receiver, people[(n + 5) % 40], occurred_at=at(n)))
        if n % 29 == 0:
            facts.append(reversal(f"r{n}", f"g{n}"))
    return facts


async def until(condition, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s} s"
        await asyncio.sleep(0.1)


def view_columns(views, table: str) -> list[str]:
    """A view table's columns as the store declares them, but changed_position: which page changed a row
    depends on how the log was paged, and tests compare views built by different pagings."""
    if views.postgres:
        statement = (
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position"
        )
        names = views.read(statement, (table,))
    else:
        names = views.read("SELECT name FROM pragma_table_info(?)", (table,))
    return [name for (name,) in names if name != "changed_position"]


def assert_woken_once_per_interval(wakes: list[float], commits: int, last_commit: float, interval_s: float) -> None:
    """Commits during a spell of load woke followers at most once per interval, and after the last one."""
    assert commits >= 8, "too few commits to tell"
    assert 2 <= len(wakes) < commits, (len(wakes), commits)
    assert all(later - earlier >= interval_s * 0.99 for earlier, later in pairwise(wakes)), wakes
    assert wakes[-1] >= last_commit  # woken after the last commit, not left for the poll
