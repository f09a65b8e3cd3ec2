"""Pipelined JetStream publishing that waits for the acks: what the relay and the KV writer share.

A batch of messages goes out back to back, each with a reply subject on one inbox subscription of the
publisher's own that names the batch; the acks coming back are counted per batch. nats-py's
`publish_async` spends a task (a `wait_for` on a semaphore), a random token and a future on every message:
more per message than the relay can afford (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterable
from typing import Any

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg

Message = tuple[str, bytes, dict[str, str] | None]  # subject, payload, headers


class PublishRefused(Exception):
    """The server refused a message of the batch, or its acks did not all come in time."""


class BatchAcks:
    """One batch's acks as they arrive (some while it is still being sent): done when all came."""

    def __init__(self) -> None:
        self.received = 0
        self.expected: int | None = None  # known once the whole batch is out
        self.failures: list[str] = []
        self.sequence = 0  # the highest stream sequence acknowledged
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def sent(self, count: int) -> None:
        self.expected = count
        self._check()

    def _check(self) -> None:
        if self.expected is not None and self.received >= self.expected and not self.done.done():
            self.done.set_result(None)

    def receive(self, message: Msg) -> None:
        if message.headers and message.headers.get("Status") == "503":
            self.failures.append("no stream takes the subject (503 no responders)")
        else:
            ack = orjson.loads(message.data)
            if error := ack.get("error"):
                self.failures.append(f"{error.get('code')} {error.get('description')}")
            else:
                self.sequence = max(self.sequence, ack.get("seq", 0))
        self.received += 1
        self._check()


class AckedPublisher:
    """Publishes batches on one client and returns once the stream acknowledged every message."""

    def __init__(self, client: Client, pending_max: int = 10_000) -> None:
        self.client = client
        self.pending_max = pending_max
        self._inbox = ""
        self._subscription: Any = None
        self._batches = itertools.count(1)
        self._acks: dict[int, BatchAcks] = {}
        self.sequence = 0  # the highest stream sequence any batch had acknowledged

    async def __aenter__(self) -> AckedPublisher:
        self._inbox = self.client.new_inbox()
        self._subscription = await self.client.subscribe(
            f"{self._inbox}.*", cb=self._on_ack, pending_msgs_limit=4 * self.pending_max
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):  # the connection may be gone: nothing to unsubscribe from
            await self._subscription.unsubscribe()
        self._acks.clear()

    async def _on_ack(self, message: Msg) -> None:
        acks = self._acks.get(int(message.subject.rsplit(".", 1)[1]))
        if acks is not None:  # else a late ack of a batch given up on, which its caller goes over again
            acks.receive(message)

    async def publish(self, messages: Iterable[Message], timeout_s: float, *, chained: bool = False) -> int:
        """Publishes the messages in order and waits for all their acks; returns how many there were.
        Raises PublishRefused when any was refused or the acks did not come within `timeout_s` (a lost
        connection never brings them).

        `chained`: each message names the one before it (`Nats-Expected-Last-Msg-Id`), so the stream stores
        a message only right after its predecessor, and the last one's ack proves that all were stored, in
        order. Only the last asks for an ack then, so the relay reads one ack per page, not one per message."""
        number = next(self._batches)
        acks = self._acks[number] = BatchAcks()
        reply = f"{self._inbox}.{number}"
        sent = 0
        try:
            if chained:
                messages = list(messages)
            last = len(messages) - 1 if chained else -1  # type: ignore[arg-type]
            for index, (subject, payload, headers) in enumerate(messages):
                asks = not chained or index == last
                await self.client.publish(subject, payload, reply=reply if asks else "", headers=headers)
                sent += 1
            acks.sent(min(sent, 1) if chained else sent)
            try:
                await asyncio.wait_for(asyncio.shield(acks.done), timeout_s)
            except TimeoutError:
                missing = (acks.expected or 0) - acks.received
                raise PublishRefused(f"{missing} of {acks.expected} acks missing after {timeout_s} s") from None
            if acks.failures:
                raise PublishRefused(f"{len(acks.failures)} of {acks.expected} acks refused: {acks.failures[0]}")
            self.sequence = max(self.sequence, acks.sequence)
            return sent
        finally:
            del self._acks[number]
