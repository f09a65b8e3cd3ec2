"""`reciprocity tail T`: follow one tenant's facts on the JetStream stream (from the start or from now).

With `--durable NAME` the consumer remembers where it was, so the next `tail --durable NAME` continues
there; without it an ephemeral consumer is used and forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import TextIO

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ledger.facts import Acknowledgement, Fact, Give, Introduction, fact_from_json
from projections.nats_bus import POSITION_HEADER, STREAM
from projections.nats_servers import parse_servers
from services.logs import redact_url

FETCH_BATCH = 100
FETCH_WAIT_S = 1.0
CONNECT_RETRY_S = 30.0  # how long tail tries to reach NATS, at start or after losing it, before it gives up
RECONNECT_WAIT_S = 1.0


class TailError(Exception):
    """tail cannot follow the stream; the message says why, plainly (no traceback)."""


class DurableOfAnotherTenant(TailError):
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
    notes: TextIO = sys.stderr,
    retry_s: float = CONNECT_RETRY_S,
) -> int:
    """Prints facts until `limit` (or forever); returns how many it printed. Raises TailError when NATS
    cannot be reached for `retry_s` (at start or later), or has no stream of facts."""
    shown = redact_url(url)
    connection = Connection(shown)
    client = await connection.open(url, creds, retry_s)
    try:
        return await _follow(client, connection, tenant, durable, from_start, limit, as_json, out, notes, retry_s)
    except nats.errors.Error as failure:  # a request NATS did not answer, a refusal: said, not a traceback
        raise TailError(f"NATS at {shown}: {redact_url(str(failure)) or type(failure).__name__}") from None
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.drain(), FETCH_WAIT_S * 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), FETCH_WAIT_S * 5)


async def _follow(
    client: Client, connection: Connection, tenant: str, durable: str | None, from_start: bool, limit: int | None,
    as_json: bool, out: TextIO, notes: TextIO, retry_s: float,
) -> int:  # fmt: skip
    """Checks the stream is there, then prints the tenant's facts until `limit`, or until NATS has been
    lost for `retry_s`."""
    shown = connection.shown_url
    js = client.jetstream()
    subject = f"reciprocity.events.{tenant}.>"
    try:
        known = await js.stream_info(STREAM, subjects_filter=subject)
    except nats.js.errors.NotFoundError:
        raise TailError(f"no stream {STREAM} on {shown}: is the relay running?") from None
    except nats.js.errors.ServiceUnavailableError:
        raise TailError(f"{shown} does not answer JetStream requests: is JetStream enabled?") from None
    if not known.state.subjects:  # the tenant may be new: tail waits, but says what it sees
        notes.write(f"no facts of tenant {tenant!r} on stream {STREAM} yet: waiting (is the name right?)\n")
        notes.flush()
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
        connection.check(retry_s)
        try:
            messages = await subscription.fetch(
                FETCH_BATCH if limit is None else min(FETCH_BATCH, limit - printed), timeout=FETCH_WAIT_S
            )
        except nats.errors.TimeoutError:
            continue
        except nats.errors.Error:  # disconnected meanwhile: the client reconnects, `check` bounds the wait
            await asyncio.sleep(RECONNECT_WAIT_S)
            continue
        for message in messages:
            out.write(_line(message.data, message.headers or {}, as_json) + "\n")
            out.flush()
            await message.ack()
            printed += 1
    return printed


class Connection:
    """tail's NATS connection: quiet while it retries (the client's own error callback logs a traceback
    per attempt), and given up on after a bounded time."""

    def __init__(self, shown_url: str) -> None:
        self.shown_url = shown_url
        self.last_error: Exception | None = None
        self.lost_at: float | None = None  # when the connection was lost, while it is

    async def open(self, url: str, creds: Path | None, retry_s: float) -> Client:
        client = Client()
        try:
            async with asyncio.timeout(retry_s):
                await client.connect(
                    **parse_servers(url).client_options(),  # credentials apart, as everywhere (nats_bus.open_client)
                    max_reconnect_attempts=-1,  # bounded by the timeout instead
                    reconnect_time_wait=RECONNECT_WAIT_S,
                    connect_timeout=min(2.0, retry_s),
                    error_cb=self._error,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    user_credentials=str(creds) if creds else None,
                )
        except TimeoutError:
            with contextlib.suppress(Exception):
                await client.close()
            raise TailError(f"cannot reach NATS at {self.shown_url} for {retry_s:g} s{self._why()}") from None
        return client

    def check(self, retry_s: float) -> None:
        """Raises TailError once the connection has been lost for `retry_s`."""
        if self.lost_at is not None and time.monotonic() - self.lost_at >= retry_s:
            raise TailError(f"lost NATS at {self.shown_url} for {retry_s:g} s{self._why()}")

    def _why(self) -> str:
        error = self.last_error
        return "" if error is None else f" ({redact_url(str(error)) or type(error).__name__})"

    async def _error(self, error: Exception) -> None:
        self.last_error = error

    async def _disconnected(self) -> None:
        if self.lost_at is None:
            self.lost_at = time.monotonic()

    async def _reconnected(self) -> None:
        self.lost_at = None


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
