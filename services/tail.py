"""`reciprocity tail T`: follow one tenant's facts on the JetStream stream (from the start or from now).

With `--durable NAME` the consumer remembers where it was, so the next `tail --durable NAME` continues
there; without it an ephemeral consumer is used and forgotten.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TextIO

import nats
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ledger.facts import Acknowledgement, Fact, Give, Introduction, fact_from_json
from projections.nats_bus import POSITION_HEADER, STREAM, open_client

FETCH_BATCH = 100
FETCH_WAIT_S = 1.0


class DurableOfAnotherTenant(Exception):
    """`--durable NAME` names a consumer that follows another tenant's facts."""


async def tail(
    url: str,
    tenant: str,
    *,
    durable: str | None,
    from_start: bool,
    limit: int | None,
    as_json: bool,
    creds: Path | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Prints facts until `limit` (or forever); returns how many it printed."""
    client = await open_client(url, "reciprocity-tail", creds=creds, max_reconnect_attempts=-1)
    try:
        js = client.jetstream()
        subject = f"reciprocity.events.{tenant}.>"
        if durable is not None:
            await _check_durable(js, durable, subject)
        config = ConsumerConfig(
            filter_subject=subject,
            deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
        )
        subscription = await js.pull_subscribe(subject, durable=durable, stream=STREAM, config=config)
        printed = 0
        while limit is None or printed < limit:
            try:
                messages = await subscription.fetch(
                    FETCH_BATCH if limit is None else min(FETCH_BATCH, limit - printed), timeout=FETCH_WAIT_S
                )
            except nats.errors.TimeoutError:
                continue
            for message in messages:
                out.write(_line(message.data, message.headers or {}, as_json) + "\n")
                out.flush()
                await message.ack()
                printed += 1
        return printed
    finally:
        await client.drain()


async def _check_durable(js: JetStreamContext, durable: str, subject: str) -> None:
    """An existing durable consumer is taken as it is (nats-py does not compare its filter), so one made for
    another tenant would print that tenant's facts."""
    try:
        info = await js.consumer_info(STREAM, durable)
    except nats.js.errors.NotFoundError:
        return  # made below, for this tenant
    if info.config.filter_subject != subject:
        raise DurableOfAnotherTenant(
            f"durable consumer {durable!r} follows {info.config.filter_subject!r}, not {subject!r}; "
            "choose another --durable name for this tenant"
        )


def _line(body: bytes, headers: dict[str, str], as_json: bool) -> str:
    if as_json:
        return body.decode()
    logged = json.loads(body)
    fact = fact_from_json(logged)
    who, whom = _parties(fact)
    position = headers.get(POSITION_HEADER, logged["position"])
    return f"{position:>8}  {fact.occurred_at}  {fact.type:<25} {who} -> {whom}"


def _parties(fact: Fact) -> tuple[str, str]:
    """Who acted, and for whom (or on which fact)."""
    if isinstance(fact, Give):
        return fact.giver, fact.receiver
    if isinstance(fact, Introduction):
        return fact.introducer, " & ".join(fact.introduced)
    if isinstance(fact, Acknowledgement):
        return fact.acknowledger, fact.ref.id
    return "", fact.ref.id


def run_tail(url: str, tenant: str, **options: object) -> int:
    try:
        return asyncio.run(tail(url, tenant, **options))  # type: ignore[arg-type]
    except KeyboardInterrupt:
        return 0
