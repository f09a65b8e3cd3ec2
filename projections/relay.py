"""The outbox relay: every committed fact onto the JetStream stream, in position order, exactly once.

The store is the source of truth and the stream follows it. The relay reads the log in pages and
publishes them pipelined, each message carrying its event id (`Nats-Msg-Id`), its position and, chained,
the previous message's id as `Nats-Expected-Last-Msg-Id`: if one publish in the pipeline fails, every
later one is refused by the server instead of leaving a gap. So only a page's last message asks for an
ack: when it is acknowledged, the whole page is stored, in order. The relay waits for it before it records
its position, reading the next page meanwhile (projections/publisher.py).
After any failure or restart it realigns from the stream's last message (its `Reciprocity-Position`),
so nothing is missing and nothing is published twice, even long after the duplicate window. The first
message after aligning expects the stream's last sequence (`Nats-Expected-Last-Sequence`) rather than its
last message id: a server that restarted remembers the sequence always, but the id only while that
message is inside the duplicate window (older nats-server releases), and a relay expecting a forgotten id
would be refused, realign to the same place and be refused again, for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import orjson
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from ledger.store import Ledger, StoredFact
from projections.nats_bus import (
    EXPECTED_LAST_MSG_ID_HEADER,
    EXPECTED_LAST_SEQUENCE_HEADER,
    MSG_ID_HEADER,
    POSITION_HEADER,
    STREAM,
    event_subject,
)
from projections.publisher import AckedPublisher, Message

log = structlog.get_logger(__name__)

PAGE_FACTS_MAX = 2_000
POLL_INTERVAL_S = 0.5
ACK_TIMEOUT_S = 10.0


class StreamEnd(NamedTuple):
    """Where the stream ends: its last message's position and event id, and its last sequence."""

    position: int  # 0 for an empty stream
    event_id: str | None
    sequence: int


async def stream_position(js: JetStreamContext) -> StreamEnd:
    """Where the stream ends ((0, None, 0) for an empty stream)."""
    info = await js.stream_info(STREAM)
    if info.state.messages == 0 or not info.state.last_seq:
        return StreamEnd(0, None, 0)
    try:
        message = await js.get_msg(STREAM, seq=info.state.last_seq)
    except NotFoundError:
        return StreamEnd(0, None, 0)
    headers = message.headers or {}
    return StreamEnd(int(headers[POSITION_HEADER]), headers[MSG_ID_HEADER], info.state.last_seq)


class Relay:
    def __init__(
        self,
        ledger: Ledger,
        on_position: Callable[[int], None] = lambda position: None,
        poll_s: float = POLL_INTERVAL_S,
    ) -> None:
        self.ledger = ledger
        self.on_position = on_position
        self.poll_s = poll_s
        self.position = 0

    async def run(self, client: Client, wakeup: asyncio.Event) -> None:
        """Publishes until cancelled, refused or reconnected (then the caller runs it again, which realigns:
        the server it reconnected to may have lost the stream, or be a new one)."""
        reconnects = client.stats["reconnects"]
        end = await stream_position(client.jetstream())
        self.position, last_id, last_sequence = end.position, end.event_id, end.sequence
        self.on_position(self.position)
        log.info("relay_aligned", position=self.position)
        async with AckedPublisher(client, PAGE_FACTS_MAX) as publisher:
            next_page = asyncio.create_task(self._read(self.position))
            try:
                while client.stats["reconnects"] == reconnects:
                    wakeup.clear()
                    page = await next_page
                    if not page:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self.poll_s):  # wait_for can lose a cancel (3.11)
                                await wakeup.wait()
                        next_page = asyncio.create_task(self._read(self.position))
                        continue
                    next_page = asyncio.create_task(self._read(page[-1].position))  # read while the acks come
                    messages = self.chained_messages(page, last_id, last_sequence)
                    await publisher.publish(messages, ACK_TIMEOUT_S, chained=True)
                    last_id, last_sequence = page[-1].fact.event_id, None
                    self.position = page[-1].position
                    self.on_position(self.position)
            finally:
                next_page.cancel()

    async def _read(self, after: int) -> list[StoredFact]:
        return await asyncio.to_thread(self.ledger.read_log, after, PAGE_FACTS_MAX)

    @staticmethod
    def chained_messages(
        page: list[StoredFact], last_id: str | None, last_sequence: int | None = None
    ) -> Iterator[Message]:
        """The page's messages, each expecting the one before it: the first by the stream's last sequence
        when the relay has just aligned (`last_sequence`), every other by its predecessor's id."""
        for stored in page:
            event_id = stored.fact.event_id
            headers = {MSG_ID_HEADER: event_id, POSITION_HEADER: str(stored.position)}
            if last_sequence:
                headers[EXPECTED_LAST_SEQUENCE_HEADER] = str(last_sequence)
                last_sequence = None
            elif last_id is not None:
                headers[EXPECTED_LAST_MSG_ID_HEADER] = last_id
            yield event_subject(stored.fact.tenant, stored.fact.type), orjson.dumps(stored.as_logged()), headers
            last_id = event_id
