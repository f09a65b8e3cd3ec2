"""Erasure end to end (DESIGN section 7), on both stores with a real nats-server: after a participant is erased,
no HTTP answer, log page, export, micro reply, stream message or KV key or value names them or their notes;
every other number is as it was (their own under the tombstone); a rebuild gives the same views; the stored
events are the same rows plus one; and no file of the data directory (nor a pg_dump) holds the id or a note."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import subprocess
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest

from ledger.registry import Registry
from ledger.store import open_ledger
from projections.nats_bus import STREAM, open_client
from services.bootstrap import open_components, registry_database
from services.http.app import create_app
from tests.conftest import make_sender
from tests.helpers import acknowledgement, give, introduction, reversal, until
from tests.processes import cli_json

pytestmark = pytest.mark.slow

PERSON = "Zelda_Quartermaine-7"  # distinctive, so a search of raw bytes means something
BUCKETS = ("reciprocity_balances", "reciprocity_pairs", "reciprocity_influence")


def at(day: int) -> str:
    return (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day)).isoformat()


def random_history(seed: int) -> tuple[list, list[str], list[str]]:
    """Facts among seven people (one of them PERSON), with notes; and the notes of the facts naming PERSON."""
    rng = random.Random(seed)
    people = [PERSON, "ann", "bob", "cas", "dan", "eve", "fay"]
    facts, person_notes, other_notes = [], [], []
    gives: list[tuple[str, str, set[str]]] = []  # external id, receiver, whom it names
    for n in range(90):
        roll = rng.random()
        note = f"note-{n}-{rng.getrandbits(40):010x}"
        if roll < 0.55 or not gives:
            giver, receiver = rng.sample(people, 2)
            facts.append(give(f"g{n}", giver, receiver, value=str(rng.randint(1, 9)), occurred_at=at(n), note=note))
            named = {giver, receiver}
            gives.append((f"g{n}", receiver, named))
        elif roll < 0.7:
            introducer, first, second = rng.sample(people, 3)
            facts.append(introduction(f"i{n}", introducer, first, second, occurred_at=at(n), note=note))
            named = {introducer, first, second}
        elif roll < 0.92:
            ref, receiver, named_ref = rng.choice(gives)
            facts.append(acknowledgement(f"a{n}", receiver, ref, occurred_at=at(n), note=note))
            named = named_ref | {receiver}
        else:
            ref, _, named = rng.choice(gives)
            facts.append(reversal(f"r{n}", ref, occurred_at=at(n)))
            continue
        (person_notes if PERSON in named else other_notes).append(note)
    return facts, person_notes, other_notes


def renamed(answer: Any, old: str, new: str) -> Any:
    """The answer with one participant's id replaced wherever it is a whole string."""
    if isinstance(answer, dict):
        return {key: renamed(value, old, new) for key, value in answer.items()}
    if isinstance(answer, list | tuple):
        return type(answer)(renamed(value, old, new) for value in answer)
    return new if answer == old else answer


def without(answer: Any, *keys: str) -> Any:
    if isinstance(answer, dict):
        return {key: without(value, *keys) for key, value in answer.items() if key not in keys}
    if isinstance(answer, list | tuple):
        return type(answer)(without(value, *keys) for value in answer)
    return answer


def pair_by_direction(pair: dict[str, Any]) -> dict[str, Any]:
    """A pair answer that does not depend on which of the two is `a`: values per direction."""
    a, b = pair["a"], pair["b"]
    return {
        (a, b): pair["a_to_b"], (b, a): pair["b_to_a"], "first_at": pair["first_at"], "last_at": pair["last_at"],
        "reciprocity": pair["reciprocity"], "introduced_by": pair["introduced_by"],
    }  # fmt: skip


def influence_by_participant(page: dict[str, Any]) -> dict[str, Any]:
    found = {}
    for item in page["items"]:
        contributions = sorted((c["from"], c["weight"], tuple(c["facts"])) for c in item["contributions"])
        numbers = (item["score"], item["constraint"], item["effective_size"], item["introductions_paid_off"])
        found[item["participant"]] = (numbers, contributions)
    return found


def unordered(items: list[Any]) -> list[str]:
    return sorted(json.dumps(item, sort_keys=True) for item in without(items, "position"))


def maintenance(answer: tuple[int, Any]) -> tuple[int, Any]:
    """A maintenance answer whose lists do not depend on how ties are ordered (by id)."""
    status, body = answer
    if status != 200:
        return answer
    return status, {
        "as_of": body["as_of"],
        "dormant_ties": unordered(body["dormant_ties"]),
        "pending_thanks": unordered(body["pending_thanks"]),
    }


class Reader:
    def __init__(self, client, read_key: str, admin_key: str) -> None:
        self.client, self.read_key, self.admin_key = client, read_key, admin_key

    async def get(self, path: str, admin: bool = False) -> tuple[int, Any]:
        key = self.admin_key if admin else self.read_key
        response = await self.client.get(path, headers={"Authorization": f"Bearer {key}"})
        return response.status, await response.json()

    async def answers(self, people: list[str], position: int) -> dict[str, Any]:
        """Every read of the tenant's views and log, each at least at `position`."""
        base, found = "/v1/tenants/acme", {}
        for person in people:
            for path in (
                f"{base}/participants/{person}/balance", f"{base}/maintenance?participant={person}",
                f"{base}/participants/{person}/influence",
            ):  # fmt: skip
                found[path] = await self.get(f"{path}{'&' if '?' in path else '?'}min_position={position}")
        for a, b in itertools.combinations(people, 2):
            found[f"pair {a} {b}"] = await self.get(f"{base}/pairs/{a}/{b}?min_position={position}")
        for order in ("balance", "given", "received"):
            found[f"balances {order}"] = await self.get(f"{base}/balances?order={order}&limit=1000")
        found["influence"] = await self.get(f"{base}/influence?limit=1000")
        found["events"] = await self.get(f"{base}/events?limit=1000")
        return found


async def influence_settled(reader: Reader, position: int) -> None:
    async def settled() -> bool:
        status, page = await reader.get(f"/v1/tenants/acme/influence?limit=1000&min_position={position}")
        return status == 200 and page["position"] >= position

    await until(settled, 30, what="influence recomputed")


async def nats_text(url: str) -> tuple[str, str]:
    """Everything NATS holds for tenant acme: the stream's messages (headers and bodies) and every message in
    the KV buckets' streams (keys, values and markers), as text."""
    client = await open_client(url, "test")
    try:
        js = client.jetstream()
        found = []
        for stream in (STREAM, *(f"KV_{bucket}" for bucket in BUCKETS)):
            info = await js.stream_info(stream)
            if info.state.messages == 0:
                found.append("")
                continue
            text = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    message = await js.get_msg(stream, seq=seq)
                except nats.js.errors.NotFoundError:
                    continue  # deleted
                if ".acme." in message.subject:
                    text.append(f"{message.subject} {message.headers} {(message.data or b'').decode()}")
            found.append("\n".join(text))
        return found[0], "\n".join(found[1:])
    finally:
        await client.close()


async def micro_text(url: str, people: list[str]) -> str:
    client = await open_client(url, "test")
    try:
        replies = []
        for person in people:
            for endpoint, asked in (("balance", {"participant": person}), ("maintenance", {"participant": person})):
                reply = await client.request(f"reciprocity.query.acme.{endpoint}", json.dumps(asked).encode(), 5)
                replies.append(reply.data.decode())
        for a, b in itertools.combinations(people, 2):
            reply = await client.request("reciprocity.query.acme.pair", json.dumps({"a": a, "b": b}).encode(), 5)
            replies.append(reply.data.decode())
        reply = await client.request("reciprocity.query.acme.influence", b'{"limit": 1000}', 5)
        return "\n".join([*replies, reply.data.decode()])
    finally:
        await client.close()


def stored_rows(settings) -> list[tuple]:
    ledger = open_ledger(settings.database_url, settings.data_dir)
    try:
        return [
            (n.id, n.originator_id, n.originator_version, n.topic, bytes(n.state))
            for n in ledger.recorder.select_notifications(start=0, limit=100_000)
        ]
    finally:
        ledger.close()


def raw_contents(settings) -> bytes:
    """What a look at the disk finds: every file of the data directory but the NATS store, or a pg_dump."""
    if settings.database_url is None:
        return b"".join(
            path.read_bytes()
            for path in sorted(settings.data_dir.rglob("*"))
            if path.is_file() and "nats" not in path.relative_to(settings.data_dir).parts
        )
    url = urllib.parse.urlsplit(settings.database_url)
    schema = urllib.parse.parse_qs(url.query)["schema"][0]
    plain = urllib.parse.urlunsplit(url._replace(query=""))
    return subprocess.run(["pg_dump", "--schema", schema, plain], capture_output=True, check=True).stdout


async def test_after_erasure_nothing_names_the_person_and_every_other_number_is_unchanged(
    aiohttp_client, settings, nats_server
):
    settings = settings.with_(nats_url=nats_server.url)
    sender = make_sender(settings, "acme", "crm")
    registry = Registry(registry_database(settings), settings.schema_mode())
    admin_key = registry.add_key("acme", ["admin"]).key
    registry.db.close()
    facts, person_notes, other_notes = random_history(seed=7)
    people = [PERSON, "ann", "bob", "cas", "dan", "eve", "fay"]

    components = await open_components(settings)
    try:
        await asyncio.wait_for(components.bus.prepared.wait(), 20)
        client = await aiohttp_client(create_app(settings, components))
        client.sender = sender
        reader = Reader(client, sender.read_key, admin_key)
        position = 0
        for fact in facts:
            response = await sender.post(client, fact)
            assert response.status in (200, 201, 422), await response.text()  # a rule may refuse a random fact
            if response.status != 422:
                position = (await response.json())["position"]
        await influence_settled(reader, position)
        before = await reader.answers(people, position)
        status, export = await reader.get(f"/v1/tenants/acme/participants/{PERSON}/export", admin=True)
        assert status == 200 and export["facts"], export
        concerning = {fact["event_id"] for fact in export["facts"]}
        rows_before = await asyncio.to_thread(stored_rows, settings)

        started = time.monotonic()
        response = await client.delete(
            f"/v1/tenants/acme/participants/{PERSON}", headers={"Authorization": f"Bearer {admin_key}"}
        )
        erased = await response.json()
        assert response.status == 200 and erased["status"] == "erased", erased
        tomb = f"erased-{erased['token']}"
        again = await client.delete(
            f"/v1/tenants/acme/participants/{PERSON}", headers={"Authorization": f"Bearer {admin_key}"}
        )
        assert again.status == 404

        await influence_settled(reader, erased["position"])
        after = await reader.answers([tomb, *people[1:]], erased["position"])

        # The person's own answers are gone; under the tombstone they are what they were.
        for path in (
            f"/v1/tenants/acme/participants/{PERSON}/balance", f"/v1/tenants/acme/maintenance?participant={PERSON}",
        ):  # fmt: skip
            assert (await reader.get(path))[0] == 404
        assert (await reader.get(f"/v1/tenants/acme/participants/{PERSON}/export", admin=True))[0] == 404
        status, own = after[f"/v1/tenants/acme/participants/{tomb}/balance"]
        assert status == 200
        assert without(own, "position") == without(
            renamed(before[f"/v1/tenants/acme/participants/{PERSON}/balance"][1], PERSON, tomb), "position"
        )
        # Everyone else's numbers: as they were, with the tombstone where the person was.
        for person in people[1:]:
            path = f"/v1/tenants/acme/participants/{person}/balance"
            assert without(after[path], "position") == without(renamed(before[path], PERSON, tomb), "position"), path
            path = f"/v1/tenants/acme/maintenance?participant={person}"
            assert maintenance(after[path]) == maintenance(renamed(before[path], PERSON, tomb)), path
        for a, b in itertools.combinations(people, 2):
            old = before[f"pair {a} {b}"]
            new = after[f"pair {tomb if a == PERSON else a} {tomb if b == PERSON else b}"]
            assert old[0] == new[0]
            if old[0] == 200:
                assert pair_by_direction(new[1]) == pair_by_direction(renamed(old[1], PERSON, tomb)), (a, b)
        assert influence_by_participant(after["influence"][1]) == influence_by_participant(
            renamed(before["influence"][1], PERSON, tomb)
        )
        for order in ("balance", "given", "received"):  # ties are ordered by id: compared as sets
            old_items = renamed(before[f"balances {order}"][1]["items"], PERSON, tomb)
            new_items = after[f"balances {order}"][1]["items"]
            assert unordered(new_items) == unordered(old_items), order
        # The log: the same facts, the tombstone for the id, no note on a fact that concerned the person.
        old_events = renamed(before["events"][1]["events"], PERSON, tomb)
        for event in old_events:
            if event["event_id"] in concerning:
                event["data"].pop("note", None)
        new_events = after["events"][1]["events"]
        assert new_events[:-1] == old_events and new_events[-1]["type"] == "participant.erased"
        assert new_events[-1]["data"] == {"token": erased["token"]}

        # Nothing anywhere names the person or their notes; other notes are still readable.
        shown = json.dumps(after)
        assert PERSON not in shown and not any(note in shown for note in person_notes)
        assert any(note in shown for note in other_notes)

        async def nats_clean() -> bool:
            stream, kv = await nats_text(settings.nats_url)
            return PERSON not in stream + kv and not any(note in stream for note in person_notes)

        await until(nats_clean, 20, what="the stream and the buckets without the person")
        took_s = time.monotonic() - started
        assert took_s < 20
        stream, kv = await nats_text(settings.nats_url)
        assert "participant_erased" in stream and erased["token"] in stream
        assert tomb in kv  # the pairs and balances rewritten under the tombstone
        micro = await micro_text(settings.nats_url, [tomb, *people[1:]])
        assert PERSON not in micro and tomb in micro
        views_after = {path: without(answer, "position") for path, answer in after.items() if path != "events"}
    finally:
        await components.close()

    rows_after = await asyncio.to_thread(stored_rows, settings)
    assert rows_after[: len(rows_before)] == rows_before and len(rows_after) == len(rows_before) + 1

    rebuilt = await asyncio.to_thread(cli_json, settings, "rebuild")
    assert rebuilt["position"] >= erased["position"]
    components = await open_components(settings)
    try:
        client = await aiohttp_client(create_app(settings, components))
        reader = Reader(client, sender.read_key, admin_key)
        await influence_settled(reader, erased["position"])
        again = await reader.answers([tomb, *people[1:]], erased["position"])
        assert {path: without(answer, "position") for path, answer in again.items() if path != "events"} == views_after
    finally:
        await components.close()

    raw = await asyncio.to_thread(raw_contents, settings)
    assert PERSON.encode() not in raw
    assert not [note for note in person_notes if note.encode() in raw]
