"""What the store holds does not change with the code that reads it: a store written before opens and reads the
same, and new facts are stored exactly as before (topics, state, key order).

`stored_events.json` is what the store held after SCENARIO was recorded by the code before facts were typed
records (the library's `timestamp` in each state is the moment of that run, and is not compared).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import orjson
import pytest
from eventsourcing.persistence import StoredEvent

from contracts.webhook_bodies import FactType, read_webhook, webhook_adapter
from ledger.facts import (
    FACT_RECORDS,
    FACT_TOPIC,
    HISTORIES,
    Give,
    ReceivedFact,
    Ref,
    fact_event_id,
    fact_from_json,
)
from ledger.group_commit import FactWriter
from ledger.store import open_ledger
from services.settings import Settings
from tests.helpers import acknowledgement, envelope, give, introduction, reversal

STORED_EVENTS = json.loads((Path(__file__).parent / "stored_events.json").read_text())
RECEIVED_AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
RECORDED_AT = datetime(2026, 6, 1, 12, 0, 1, tzinfo=UTC)


def incoming(fact, source="crm"):
    webhook = read_webhook(json.dumps(envelope(fact)).encode())
    return ReceivedFact.from_webhook("acme", source, webhook, RECEIVED_AT)


# Every fact type, every optional field present and absent, an empty context, refs within and across sources,
# an acknowledgement withdrawn by reversing it.
SCENARIO = [
    [
        incoming(
            give(
                "g1", "ann", "bob", value="2.50", kind="knowledge", note="héllo ✓",
                context={"location": "Utrecht", "subject": "Python"}, occurred_at="2026-05-01T10:00:00+02:00",
            )
        )
    ],
    [incoming(give("g2", "bob", "ann")), incoming(give("g3", "cas", "ann", context={}, value="0.000001"))],
    [incoming(introduction("i1", "cas", "ann", "bob", context={"activity": "meetup"}, note="meet"))],
    [incoming(acknowledgement("a1", "bob", "g1", note="thanks", value="1"))],
    [incoming(acknowledgement("a2", "ann", "i1", occurred_at="2026-05-02T00:00:00Z"))],
    [incoming(give("c1", "dan", "bob"), source="chat")],
    [incoming(acknowledgement("a3", "bob", "c1", ref={"id": "c1", "source": "chat"}))],
    [incoming(reversal("r1", "a1", reason="oops"))],
    [incoming(reversal("r2", "g2")), incoming(reversal("r3", "c1", ref={"id": "c1", "source": "chat"}), source="chat")],
]  # fmt: skip


def event_id(source: str, external_id: str) -> UUID:
    return fact_event_id("acme", source, external_id)


@pytest.fixture
def ledger(settings: Settings):
    ledger = open_ledger(settings.database_url, settings.data_dir)
    yield ledger
    ledger.close()


def without_timestamp(state: bytes | str) -> bytes:
    decoded = orjson.loads(state)
    del decoded["timestamp"]
    return orjson.dumps(decoded)


def recorded_facts() -> list[dict]:
    return [orjson.loads(row["state"])["fact"] for row in STORED_EVENTS if row["originator_version"] == 1]


def test_a_store_written_before_reads_the_same(ledger):
    """The facts read back byte for byte, and every history (acknowledged, reversed) is what it was."""
    for row in STORED_EVENTS:
        stored = StoredEvent(UUID(row["originator_id"]), row["originator_version"], row["topic"], row["state"].encode())
        ledger.recorder.insert_events([stored], fact_tenants={stored.originator_id: "acme"})
    read = ledger.read_log(0, 100)
    expected = [{**fact, "position": stored.position} for fact, stored in zip(recorded_facts(), read, strict=True)]
    assert [orjson.dumps(stored.as_logged()) for stored in read] == [orjson.dumps(fact) for fact in expected]
    assert [stored.as_logged() for stored in ledger.tenant_log("acme", 0, 100)] == expected
    gives = [fact for fact in expected if fact["type"] == "give.recorded"]
    assert [stored.as_logged() for stored in ledger.read_log(0, 100, [FactType.GIVE])] == gives

    def history(source: str, external_id: str):
        return ledger.repository.get(event_id(source, external_id))

    assert history("crm", "g1").acknowledgements == {}  # a1 was reversed
    assert history("crm", "a1").reversed_by == event_id("crm", "r1")
    assert history("crm", "i1").acknowledgements == {"ann": event_id("crm", "a2")}
    assert history("chat", "c1").acknowledgements == {"bob": event_id("crm", "a3")}
    assert history("chat", "c1").reversed_by == event_id("chat", "r3")
    assert history("crm", "g2").reversed_by == event_id("crm", "r2")
    assert history("crm", "g1").fact == Give(
        event_id=str(event_id("crm", "g1")), tenant="acme", source="crm", external_id="g1",
        occurred_at="2026-05-01T08:00:00.000000Z", recorded_at="2026-06-01T12:00:01.000000Z", occurred_at_sent=True,
        giver="ann", receiver="bob", kind="knowledge", value="2.5",
        context={"location": "Utrecht", "subject": "Python"}, note="héllo ✓",
    )  # fmt: skip
    assert history("crm", "r1").fact.ref == Ref(source="crm", id="a1")

    writer = FactWriter(ledger)
    outcomes = writer.commit([
        incoming(acknowledgement("a4", "ann", "g3")),
        incoming(acknowledgement("a5", "ann", "g2")),
        incoming(reversal("r4", "r1")),
        incoming(acknowledgement("a6", "bob", "g1")),
    ])  # fmt: skip
    rules = [outcome.problem.errors[0].rule if outcome.problem else outcome.status for outcome in outcomes]
    assert rules == ["recorded", "ref_not_reversed", "reversal_not_reversible", "recorded"]


def test_new_facts_are_stored_as_before(ledger):
    """Same topics, same state, same key order as the store held before facts were typed records."""
    writer = FactWriter(ledger, clock=lambda: RECORDED_AT)
    for batch in SCENARIO:
        assert [outcome.status for outcome in writer.commit(batch)] == ["recorded"] * len(batch)
    rows = [
        (str(n.originator_id), n.originator_version, n.topic, without_timestamp(n.state))
        for n in ledger.recorder.select_notifications(start=0, limit=100)
    ]
    assert rows == [
        (row["originator_id"], row["originator_version"], row["topic"], without_timestamp(row["state"]))
        for row in STORED_EVENTS
    ]


def test_a_fact_round_trips_through_its_record():
    """`to_json` gives back exactly the stored JSON, key order included, for every recorded fact."""
    for fact in recorded_facts():
        assert orjson.dumps(fact_from_json(fact).to_json()) == orjson.dumps(fact)


def test_every_fact_type_has_its_webhook_record_history_and_stored_topic():
    """The enum, the webhook's tags, the records and the aggregates name the same four types, stored by the
    topics the store has always held."""
    tags = webhook_adapter.json_schema()["discriminator"]["mapping"]
    assert set(tags) == set(FactType) == set(FACT_RECORDS) == set(HISTORIES)
    assert all(FACT_RECORDS[fact_type].type is fact_type for fact_type in FactType)
    assert FACT_TOPIC == {
        FactType.GIVE: "ledger.facts:Give.Recorded",
        FactType.INTRODUCTION: "ledger.facts:Introduction.Recorded",
        FactType.ACKNOWLEDGEMENT: "ledger.facts:Acknowledgement.Recorded",
        FactType.REVERSAL: "ledger.facts:Reversal.Recorded",
    }
