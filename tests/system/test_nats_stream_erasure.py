"""Erasure on the stream, against a real nats-server: messages show ids, carry the participants' tokens in a
header, and once the relay has published a participant's erasure no message in the stream names them, also
when the relay died between publishing the erasure and deleting (DESIGN section 7)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from dataclasses import dataclass

import nats
import pytest

from contracts.answers import LoggedFact
from contracts.asyncapi import ParticipantErased
from ledger.group_commit import FactWriter
from ledger.store import open_ledger
from projections.nats_bus import PARTICIPANTS_HEADER, POSITION_HEADER, STREAM, connect, ensure_stream, open_client
from projections.relay import Relay
from projections.stream_erasure import Located, StreamEraser
from tests.helpers import acknowledgement, give, introduction, received, reversal, until
from tests.system.test_nats import start_relay

ANN = "ann-erasable"  # an id no other text contains
ANN_NOTE = "ann's private note"
ERASURE_DEADLINE_S = 5.0  # DESIGN: within 5 seconds of the relay publishing the erasure


@pytest.fixture
def ledger(settings):
    opened = open_ledger(settings.database_url, settings.data_dir)
    yield opened
    opened.close()


@pytest.fixture
async def js(nats_server):
    client = await connect(nats_server.url, "test-stream-erasure")
    await ensure_stream(client.jetstream(), 1.0)
    yield client.jetstream()
    await client.close()


@dataclass
class StreamMessage:
    sequence: int
    subject: str
    headers: dict[str, str]
    body: dict

    @property
    def position(self) -> int:
        return int(self.headers[POSITION_HEADER])

    @property
    def participants(self) -> list[str]:
        return self.headers[PARTICIPANTS_HEADER].split(" ")

    def text(self) -> str:
        return json.dumps([self.subject, self.headers, self.body])


async def whole_stream(js) -> list[StreamMessage]:
    """Every message the stream holds, read one sequence at a time (a deleted one is a gap)."""
    info = await js.stream_info(STREAM)
    messages = []
    for sequence in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
        try:
            raw = await js.get_msg(STREAM, seq=sequence)
        except nats.js.errors.NotFoundError:
            continue
        messages.append(StreamMessage(sequence, raw.subject, dict(raw.headers), json.loads(raw.data)))
    return messages


@contextlib.asynccontextmanager
async def relaying(relay: Relay, url: str):
    client = await open_client(url, "test")
    task = asyncio.create_task(relay.run(client, asyncio.Event()))
    try:
        yield relay
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


async def relayed_up_to(js, position: int, timeout_s: float = 20.0) -> None:
    async def there() -> bool:
        info = await js.stream_info(STREAM)
        if not info.state.messages:
            return False
        last = await js.get_msg(STREAM, seq=info.state.last_seq)
        return int(last.headers[POSITION_HEADER]) >= position

    await until(there, timeout_s, what=f"the stream reaching position {position}")


def ann_facts() -> list:
    return [
        give("g1", ANN, "bob", value="5", note=ANN_NOTE),
        give("g2", "bob", ANN, value="2"),
        introduction("i1", ANN, "bob", "cas", note="introduced by ann"),
        acknowledgement("a1", "bob", "g1", note="bob thanks for g1"),
        give("g3", "bob", "cas", value="3", note="between bob and cas"),
        reversal("r1", "g2"),
    ]


def commit(ledger, facts) -> int:
    outcomes = FactWriter(ledger).commit([received(fact) for fact in facts])
    assert all(outcome.status == "recorded" for outcome in outcomes), outcomes
    return outcomes[-1].position


async def test_messages_show_ids_and_notes_and_carry_the_tokens_of_everyone_their_fact_concerns(
    ledger, js, nats_server
):
    """The body is the fact as the log shows it; the header names everyone the stored fact concerns."""
    head = commit(ledger, ann_facts())
    async with relaying(Relay(ledger), nats_server.url):
        await relayed_up_to(js, head)
    messages = await whole_stream(js)
    stored = {fact.position: fact for fact in ledger.read_log(0, 100)}
    assert [m.body for m in messages] == ledger.logged(list(stored.values()))
    for message in messages:
        assert message.participants == list(stored[message.position].participants)
    g1, acknowledged = messages[0], messages[3]
    assert g1.body["data"]["giver"] == ANN and g1.body["data"]["note"] == ANN_NOTE
    assert set(acknowledged.participants) == set(g1.participants), "an acknowledgement concerns the give's people"


async def test_after_an_erasure_no_stream_message_names_the_participant(ledger, js, nats_server):
    """Within 5 s of the erasure's message, every earlier message naming ann is gone; the erasure and the
    facts that did not concern her stay, and facts after it show her tombstone."""
    commit(ledger, [*ann_facts(), give("g4", "cas", "dan", note="cas and dan only")])
    erased = FactWriter(ledger).erase("acme", ANN)
    head = commit(ledger, [acknowledgement("a2", "cas", "i1")])  # i1 named ann: a2 concerns her token
    async with relaying(Relay(ledger), nats_server.url):
        await relayed_up_to(js, erased.position)
        published_at = time.monotonic()

        async def nothing_names_ann() -> bool:
            messages = await whole_stream(js)
            return not any(erased.token in m.participants for m in messages if m.position < erased.position)

        await until(nothing_names_ann, ERASURE_DEADLINE_S, what="the stream without ann's messages")
        assert time.monotonic() - published_at < ERASURE_DEADLINE_S
        await relayed_up_to(js, head)
    messages = await whole_stream(js)
    for message in messages:
        assert ANN not in message.text() and ANN_NOTE not in message.text()
    assert [m.body["external_id"] for m in messages] == ["g3", "g4", f"erase-{erased.token}", "a2"]
    erasure = messages[2]
    assert erasure.subject == "reciprocity.events.acme.participant_erased"
    assert erasure.participants == [erased.token] and erasure.body["data"] == {"token": erased.token}
    assert erasure.body["type"] == "participant.erased" and erasure.body["position"] == erased.position
    ParticipantErased.model_validate(erasure.body)  # as contracts/asyncapi.json describes it
    for message in messages[:2] + messages[3:]:
        LoggedFact.model_validate(message.body)


class DiesBeforeDeleting(Relay):
    """A relay whose deleting stops before it deletes anything (as if the process died there)."""

    async def erase(self, js, tenant, token, position):
        raise asyncio.CancelledError


async def test_the_deletion_survives_a_relay_restart_between_publishing_the_erasure_and_deleting(
    ledger, js, nats_server
):
    """What is left to delete is a row of the store's stream_erasures until it is done, so the next relay
    finishes it; publishing went on meanwhile."""
    commit(ledger, ann_facts())
    erased = FactWriter(ledger).erase("acme", ANN)
    with contextlib.suppress(asyncio.CancelledError):
        async with relaying(DiesBeforeDeleting(ledger), nats_server.url):
            await relayed_up_to(js, erased.position)
    later = commit(ledger, [give("g5", "cas", "dan")])
    assert any(erased.token in m.participants for m in await whole_stream(js) if m.position < erased.position)
    async with relaying(Relay(ledger), nats_server.url):
        await relayed_up_to(js, later)
    messages = await whole_stream(js)
    assert not any(erased.token in m.participants or ANN in m.text() for m in messages if m.position < erased.position)
    assert [m.body["external_id"] for m in messages][-2:] == [f"erase-{erased.token}", "g5"]


async def test_a_second_erasure_finds_its_messages_among_the_gaps_of_the_first(ledger, js, nats_server):
    """Bob shared facts with ann: her erasure deleted some of his messages already; his deletes the rest."""
    commit(ledger, [*ann_facts(), *(give(f"x{n}", "cas", "dan") for n in range(50)), give("g6", "bob", "eve")])
    first = FactWriter(ledger).erase("acme", ANN)
    second = FactWriter(ledger).erase("acme", "bob")
    async with relaying(Relay(ledger), nats_server.url):
        await relayed_up_to(js, second.position)

        async def both_gone() -> bool:
            messages = await whole_stream(js)
            return not any({first.token, second.token} & set(m.participants) for m in messages[:-2])

        await until(both_gone, ERASURE_DEADLINE_S, what="ann's and bob's messages deleted")
    kept = [m.body["external_id"] for m in await whole_stream(js)]
    assert kept == [*(f"x{n}" for n in range(50)), f"erase-{first.token}", f"erase-{second.token}"]


async def test_the_search_costs_few_probes_per_message_however_the_stream_is_gapped(ledger, js, nats_server):
    """A participant in every third fact of a thousand, the stream already gapped by another erasure: each
    message is found with a few direct gets, not a scan."""
    facts = []
    for n in range(1_000):
        facts.append(give(f"h{n}", "hub", f"q{n % 7}") if n % 3 == 0 else give(f"o{n}", f"q{n % 7}", "zed"))
    for start in range(0, len(facts), 500):
        commit(ledger, facts[start : start + 500])
    zed = FactWriter(ledger).erase("acme", "zed")
    hub = FactWriter(ledger).erase("acme", "hub")
    positions = ledger.participant_positions("acme", hub.token, hub.position)
    async with relaying(DiesBeforeDeleting(ledger), nats_server.url):  # publishes both erasures, deletes nothing
        await relayed_up_to(js, hub.position)
    messages = await whole_stream(js)
    upper = next(m for m in messages if m.position == zed.position)
    gapper = StreamEraser(js)
    await gapper.erase(ledger.participant_positions("acme", zed.token, zed.position), upper_of(upper))
    eraser = StreamEraser(js)
    assert await eraser.erase(positions, upper_of(upper)) == len(positions) == 334
    assert eraser.probes <= 3 * len(positions), f"{eraser.probes} probes for {len(positions)} messages"
    assert [m.body["external_id"] for m in await whole_stream(js)] == [f"erase-{zed.token}", f"erase-{hub.token}"]
    assert await StreamEraser(js).erase(positions, upper_of(upper)) == 0, "erasing again deletes nothing more"


def upper_of(message: StreamMessage) -> Located:
    return Located(message.sequence, message.position)


async def test_a_relay_killed_while_deleting_leaves_the_rest_to_the_next_one(ledger, js, nats_server, settings):
    """SIGKILL in the middle of deleting 3,000 messages: the next relay process deletes what is left."""
    for start in range(0, 3_000, 500):
        commit(ledger, [give(f"k{n}", ANN, "bob", note=ANN_NOTE) for n in range(start, start + 500)])
    assert FactWriter(ledger).erase("acme", ANN) is not None
    relay_settings = settings.with_(nats_url=nats_server.url)

    async def remaining() -> int:
        return (await js.stream_info(STREAM)).state.messages

    relay = start_relay(relay_settings)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # no pause between looks: the deletion is quick
            if (await last_subject(js)).endswith("participant_erased") and await remaining() < 3_001:
                break
    finally:
        relay.send_signal(signal.SIGKILL)
        relay.wait(10)
    assert 1 < await remaining() < 3_001, "killed in the middle of deleting"
    relay = start_relay(relay_settings)
    try:
        await until(lambda: finished(remaining), 60, what="the rest deleted by the next relay")
    finally:
        relay.kill()
        relay.wait(10)
    [left] = await whole_stream(js)
    assert left.body["type"] == "participant.erased" and ANN_NOTE not in left.text()


async def last_subject(js) -> str:
    """The subject of the stream's last message ('' while there is none)."""
    info = await js.stream_info(STREAM)
    return (await js.get_msg(STREAM, seq=info.state.last_seq)).subject if info.state.messages else ""


async def finished(remaining) -> bool:
    return await remaining() == 1


async def test_publishing_goes_on_while_a_deletion_runs(ledger, js, nats_server):
    """A fact committed while the relay is deleting a heavy participant's messages reaches the stream before the
    deletion is done: an erasure never holds the other facts back."""
    for start in range(0, 1_500, 500):
        commit(ledger, [give(f"k{n}", ANN, "bob", note=ANN_NOTE) for n in range(start, start + 500)])
    erased = FactWriter(ledger).erase("acme", ANN)

    async def remaining() -> int:
        return (await js.stream_info(STREAM)).state.messages - 1  # but the erasure itself

    async with relaying(Relay(ledger), nats_server.url):
        await relayed_up_to(js, erased.position)
        await until(lambda: deleting(remaining), 20, what="the deletion under way")
        later = commit(ledger, [give("g-later", "cas", "dan")])
        await relayed_up_to(js, later)
        assert await remaining() > 100, "published while the deletion was still running"
        await until(lambda: only_later_left(remaining), 60, what="the deletion done")
        # The relay records the erasure done just after its last deletion: wait for that before stopping it.
        await until(lambda: no_erasure_pending(ledger, later), 10, what="the erasure recorded done")
    assert ledger.pending_stream_erasures(later) == []


async def deleting(remaining) -> bool:
    return await remaining() < 1_500


async def no_erasure_pending(ledger, position: int) -> bool:
    return await asyncio.to_thread(ledger.pending_stream_erasures, position) == []


async def only_later_left(remaining) -> bool:
    return await remaining() == 1
