"""The outbox relay: every committed fact onto the JetStream stream, in position order, exactly once.

The store is the source of truth and the stream follows it. The relay reads the log in pages and
publishes them pipelined, each message carrying its event id (`Nats-Msg-Id`), its position and, chained,
the previous message's id as `Nats-Expected-Last-Msg-Id`: if one publish in the pipeline fails, every
later one is refused by the server instead of leaving a gap. It waits for the acks before it moves on,
reading the next page meanwhile. The acks come back on one inbox subscription of the relay's own and are
counted per page: nats-py's `publish_async` spends a task, a random token and a future on each message,
which capped the relay well below what the server takes.
After any failure or restart it realigns from the stream's last message (its `Reciprocity-Position`),
so nothing is missing and nothing is published twice, even long after the duplicate window.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable

import orjson
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.bus import (
    EXPECTED_LAST_MSG_ID_HEADER,
    MSG_ID_HEADER,
    POSITION_HEADER,
    STREAM,
    event_subject,
)
from services.store import Ledger, StoredFact

log = structlog.get_logger(__name__)

PAGE_FACTS_MAX = 2_000
POLL_INTERVAL_S = 0.5
ACK_TIMEOUT_S = 10.0


class PublishRefused(Exception):
    """The stream refused or did not acknowledge a message of the page; realign and go again."""


async def stream_position(js: JetStreamContext) -> tuple[int, str | None]:
    """The position and event id of the stream's last message ((0, None) for an empty stream)."""
    info = await js.stream_info(STREAM)
    if info.state.messages == 0 or not info.state.last_seq:
        return 0, None
    try:
        message = await js.get_msg(STREAM, seq=info.state.last_seq)
    except NotFoundError:
        return 0, None
    headers = message.headers or {}
    return int(headers[POSITION_HEADER]), headers[MSG_ID_HEADER]


class PageAcks:
    """Counts one page's publish acks as they arrive; done when all came, failed at the first refusal."""

    def __init__(self, expected: int) -> None:
        self.missing = expected
        self.failures: list[str] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def receive(self, message: Msg) -> None:
        if message.headers and message.headers.get("Status") == "503":
            self.failures.append("no stream answers the subject (503 no responders)")
        else:
            error = orjson.loads(message.data).get("error")
            if error:
                self.failures.append(f"{error.get('code')} {error.get('description')}")
        self.missing -= 1
        if self.missing == 0 and not self.done.done():
            self.done.set_result(None)


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
        self._pages = itertools.count(1)
        self._acks: dict[int, PageAcks] = {}

    async def run(self, client: Client, wakeup: asyncio.Event) -> None:
        """Publishes until cancelled or refused (then the caller runs it again, which realigns)."""
        self.position, last_id = await stream_position(client.jetstream())
        self.on_position(self.position)
        log.info("relay_aligned", position=self.position)
        inbox = client.new_inbox()
        subscription = await client.subscribe(f"{inbox}.*", cb=self._on_ack, pending_msgs_limit=4 * PAGE_FACTS_MAX)
        try:
            next_page = asyncio.create_task(self._read(self.position))
            while True:
                wakeup.clear()
                page = await next_page
                if not page:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), self.poll_s)
                    next_page = asyncio.create_task(self._read(self.position))
                    continue
                next_page = asyncio.create_task(self._read(page[-1].position))  # read while the acks come
                last_id = await self._publish(client, inbox, page, last_id)
                self.position = page[-1].position
                self.on_position(self.position)
        finally:
            next_page.cancel()
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
            self._acks.clear()

    async def _read(self, after: int) -> list[StoredFact]:
        return await asyncio.to_thread(self.ledger.read_log, after, PAGE_FACTS_MAX)

    async def _on_ack(self, message: Msg) -> None:
        acks = self._acks.get(int(message.subject.rsplit(".", 1)[1]))
        if acks is not None:  # else a late ack of a page given up on: that page is realigned anyway
            acks.receive(message)

    async def _publish(self, client: Client, inbox: str, page: list[StoredFact], last_id: str | None) -> str | None:
        number = next(self._pages)
        acks = self._acks[number] = PageAcks(len(page))
        reply = f"{inbox}.{number}"
        try:
            for stored in page:
                event_id = stored.fact["event_id"]
                headers = {MSG_ID_HEADER: event_id, POSITION_HEADER: str(stored.position)}
                if last_id is not None:
                    headers[EXPECTED_LAST_MSG_ID_HEADER] = last_id
                subject = event_subject(stored.fact["tenant"], stored.fact["type"])
                await client.publish(subject, orjson.dumps(stored.as_logged()), reply=reply, headers=headers)
                last_id = event_id
            # A lost connection never brings the acks: bound the wait, then realign.
            try:
                await asyncio.wait_for(asyncio.shield(acks.done), ACK_TIMEOUT_S)
            except TimeoutError:
                missing = f"{acks.missing} of {len(page)} publishes"
                raise PublishRefused(f"{missing} unacknowledged after {ACK_TIMEOUT_S} s") from None
            if acks.failures:
                raise PublishRefused(f"{len(acks.failures)} of {len(page)} publishes failed: {acks.failures[0]}")
            return last_id
        finally:
            del self._acks[number]
