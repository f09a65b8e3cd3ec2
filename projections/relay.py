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

Each message is the fact as the log shows it: ids (or tombstones) for the tokens the store holds, resolved
once per page through a cache of names kept across pages, and a `Reciprocity-Participants` header with the
tokens of everyone the fact concerns, so subscribers can index their copies by token. Once the stream holds a
`participant.erased` fact, a task beside the publishing loop deletes the earlier messages of that
participant's facts (projections/stream_erasure.py). What it has still to delete is a row of the store's
`stream_erasures`, written with the erasure and deleted when its messages are gone: a relay that dies midway
leaves the rest to the next one (deleting again what is gone already is harmless), and publishing never waits
for a deletion (a secure erase costs milliseconds per message).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import orjson
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from ledger.facts import Erasure
from ledger.participants import ParticipantNames
from ledger.store import Ledger, StoredFact
from projections.nats_bus import (
    EXPECTED_LAST_MSG_ID_HEADER,
    EXPECTED_LAST_SEQUENCE_HEADER,
    MSG_ID_HEADER,
    PARTICIPANTS_HEADER,
    POSITION_HEADER,
    REQUEST_TIMEOUT_S,
    STREAM,
    event_subject,
)
from projections.publisher import AckedPublisher, Message
from projections.stream_erasure import Located, StreamEraser
from projections.supervision import in_thread, retry_forever

log = structlog.get_logger(__name__)

PAGE_FACTS_MAX = 2_000
POLL_INTERVAL_S = 0.5
# The last message of a page is acked within milliseconds (2,000 messages, 3 replicas); silence for this long
# means the stream's leader died with the page in flight. The relay then aligns again on the new leader (the
# chained headers make a page sent twice stored once), so this bounds how long a failover leaves it waiting.
ACK_TIMEOUT_S = 3.0
# Between tries while the stream has no leader: a stream_info request a second, and the relay starts again
# within about a second of the election, not after a backoff grown to 5 s.
RETRY_MAX_S = 1.0
# Names kept across pages: every live participant's id would fit in most deployments, but not in all.
NAMES_CACHED_MAX = 200_000
ERASURES_POLL_S = 5.0


class StreamEnd(NamedTuple):
    """Where the stream ends: its last message's position and event id, and its last sequence."""

    position: int  # 0 for an empty stream
    event_id: str | None
    sequence: int


async def stream_position(js: JetStreamContext) -> StreamEnd:
    """Where the stream ends ((0, None, 0) for an empty stream)."""
    return stream_end(await last_message(js))


async def last_message(js: JetStreamContext) -> RawStreamMsg | None:
    """The stream's last message (None for an empty stream)."""
    info = await js.stream_info(STREAM)
    if info.state.messages == 0 or not info.state.last_seq:
        return None
    try:
        return await js.get_msg(STREAM, seq=info.state.last_seq)
    except NotFoundError:
        return None


def stream_end(message: RawStreamMsg | None) -> StreamEnd:
    if message is None or message.seq is None:
        return StreamEnd(0, None, 0)
    headers = message.headers or {}
    return StreamEnd(int(headers[POSITION_HEADER]), headers[MSG_ID_HEADER], message.seq)


class NameCache:
    """What tokens show as, kept across the relay's pages: each token is looked up once, not once per page.

    An id never changes while its key exists; erasure only takes it away, and the relay forgets a token when
    it publishes the token's erasure, so the facts after it show the tombstone."""

    def __init__(self, names_max: int = NAMES_CACHED_MAX) -> None:
        self.names_max = names_max
        self.names = ParticipantNames({}, {})
        self.looked_up: set[str] = set()  # with or without a name: a token without one is erased

    def missing(self, page: list[StoredFact]) -> list[str]:
        if len(self.looked_up) > self.names_max:
            self.names, self.looked_up = ParticipantNames({}, {}), set()
        return sorted({token for stored in page for token in stored.participants} - self.looked_up)

    def add(self, asked: list[str], found: ParticipantNames) -> None:
        self.names.names.update(found.names)
        self.names.keys.update(found.keys)
        self.looked_up.update(asked)

    def forget(self, token: str) -> None:
        self.names.forget(token)
        self.looked_up.add(token)


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
        self.names = NameCache()

    async def run(self, client: Client, wakeup: asyncio.Event) -> None:
        """Publishes until cancelled, refused or reconnected (then the caller runs it again, which realigns:
        the server it reconnected to may have lost the stream, or be a new one)."""
        reconnects = client.stats["reconnects"]
        js = client.jetstream(timeout=REQUEST_TIMEOUT_S)
        last = await last_message(js)
        end = stream_end(last)
        self.position, last_id, last_sequence = end.position, end.event_id, end.sequence
        self.on_position(self.position)
        log.info("relay_aligned", position=self.position)
        published = asyncio.Event()
        # Retried on its own: a failed erasure pass (the store or NATS away a moment) must not end erasures
        # for as long as the relay runs.
        # (with nats-py's own 5 s timeout: a secure erase rewrites the message where it lies, slower than a lookup)
        erasures = retry_forever(lambda: self._erase_pending(client.jetstream(), published), "relay-stream-erasures")
        eraser = asyncio.create_task(erasures, name="relay-stream-erasures")
        async with AckedPublisher(client, PAGE_FACTS_MAX) as publisher:
            # Cleared before each read that is not read ahead: a commit after it wakes the relay again.
            wakeup.clear()
            next_page: asyncio.Task[list[StoredFact]] | None = asyncio.create_task(self._read(self.position))
            try:
                while client.stats["reconnects"] == reconnects:
                    if next_page is None:  # the last page was short: the log held no more when it was read
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self.poll_s):  # wait_for can lose a cancel (3.11)
                                await wakeup.wait()
                        wakeup.clear()
                        next_page = asyncio.create_task(self._read(self.position))
                    page = await next_page
                    next_page = None
                    if not page:
                        continue
                    if len(page) == PAGE_FACTS_MAX:  # more is likely waiting: read it while the acks come
                        next_page = asyncio.create_task(self._read(page[-1].position))
                    await self._resolve_names(page)
                    messages = self.chained_messages(page, last_id, last_sequence, self.names)
                    await publisher.publish(messages, ACK_TIMEOUT_S, chained=True)
                    last_id, last_sequence = page[-1].fact.event_id, None
                    self.position = page[-1].position
                    self.on_position(self.position)
                    if any(isinstance(stored.fact, Erasure) for stored in page):
                        published.set()
            finally:
                if next_page is not None:
                    next_page.cancel()
                eraser.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await eraser

    async def _read(self, after: int) -> list[StoredFact]:
        return await in_thread(self.ledger.read_log, after, PAGE_FACTS_MAX)

    async def _erase_pending(self, js: JetStreamContext, published: asyncio.Event) -> None:
        """Carries out the erasures the stream holds, oldest first, until cancelled; woken when a page held one,
        and looking again now and then (an erasure pending from an earlier relay)."""
        while True:
            published.clear()
            for position, tenant, token in await in_thread(self.ledger.pending_stream_erasures, self.position):
                await self.erase(js, tenant, token, position)
                await in_thread(self.ledger.stream_erasure_done, position)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ERASURES_POLL_S):
                    await published.wait()

    async def _resolve_names(self, page: list[StoredFact]) -> None:
        if missing := self.names.missing(page):
            self.names.add(missing, await in_thread(self.ledger.names, missing))

    async def erase(self, js: JetStreamContext, tenant: str, token: str, position: int) -> int:
        """Deletes the stream's messages of the facts before the erasure (at `position`, in the stream already)
        that concerned the token."""
        started = time.perf_counter()
        positions = await in_thread(self.ledger.participant_positions, tenant, token, position)
        end = stream_end(await last_message(js))  # at or after the erasure: bounds every search from above
        eraser = StreamEraser(js)
        deleted = await eraser.erase(positions, Located(end.sequence, end.position))
        log.info(
            "relay_erased", token=token, position=position, facts=len(positions), deleted=deleted,
            probes=eraser.probes, seconds=round(time.perf_counter() - started, 3),
        )  # fmt: skip
        return deleted

    @staticmethod
    def chained_messages(
        page: list[StoredFact],
        last_id: str | None,
        last_sequence: int | None = None,
        names: NameCache | None = None,
    ) -> Iterator[Message]:
        """The page's messages, each expecting the one before it: the first by the stream's last sequence
        when the relay has just aligned (`last_sequence`), every other by its predecessor's id."""
        names = names or NameCache()
        for stored in page:
            event_id = stored.fact.event_id
            headers = {
                MSG_ID_HEADER: event_id,
                POSITION_HEADER: str(stored.position),
                PARTICIPANTS_HEADER: " ".join(stored.participants),
            }
            if last_sequence:
                headers[EXPECTED_LAST_SEQUENCE_HEADER] = str(last_sequence)
                last_sequence = None
            elif last_id is not None:
                headers[EXPECTED_LAST_MSG_ID_HEADER] = last_id
            body = orjson.dumps(stored.as_logged(names.names))
            yield event_subject(stored.fact.tenant, stored.fact.type), body, headers
            if isinstance(stored.fact, Erasure):
                names.forget(stored.fact.token)
            last_id = event_id
