"""Test helpers: a signing sender like any other app, and builders of facts."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.signatures import secret_key, sign

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
