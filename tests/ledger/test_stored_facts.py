"""What the store holds, and what the log shows of it.

`stored_events.json` is what the store held after SCENARIO was recorded by the code before participants had
tokens (store format 1): the facts as the log showed them then. Today the store holds tokens and sealed notes
(format 2, DESIGN section 7), and the log must show exactly the same facts as before.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import orjson
import pytest

from contracts.webhook_bodies import WEBHOOK_FACT_TYPES, FactType, read_webhook, webhook_adapter
from ledger.facts import FACT_RECORDS, FACT_TOPIC, HISTORIES, ReceivedFact, fact_event_id, fact_from_json
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


def recorded_facts() -> list[dict]:
    return [orjson.loads(row["state"])["fact"] for row in STORED_EVENTS if row["originator_version"] == 1]


def record_scenario(ledger) -> None:
    writer = FactWriter(ledger, clock=lambda: RECORDED_AT)
    for batch in SCENARIO:
        assert [outcome.status for outcome in writer.commit(batch)] == ["recorded"] * len(batch)


def test_the_log_shows_the_same_facts_as_before_tokens(ledger):
    """Ids, notes, key order: every fact reads back as the log showed it when the store held ids."""
    record_scenario(ledger)
    read = ledger.read_log(0, 100)
    expected = [{**fact, "position": stored.position} for fact, stored in zip(recorded_facts(), read, strict=True)]
    assert [orjson.dumps(fact) for fact in ledger.logged(read)] == [orjson.dumps(fact) for fact in expected]
    assert ledger.logged(ledger.tenant_log("acme", 0, 100)) == expected
    gives = [fact for fact in expected if fact["type"] == "give.recorded"]
    assert ledger.logged(ledger.read_log(0, 100, [FactType.GIVE])) == gives


def test_stored_events_hold_tokens_and_sealed_notes_never_ids_or_notes(ledger):
    record_scenario(ledger)
    rows = ledger.recorder.select_notifications(start=0, limit=100)
    # The same events as before, by the same topics: only what is inside a state changed.
    assert [(str(n.originator_id), n.originator_version, n.topic) for n in rows] == [
        (row["originator_id"], row["originator_version"], row["topic"]) for row in STORED_EVENTS
    ]
    states = b"".join(bytes(n.state) for n in rows)
    for text in (b'"ann"', b'"bob"', b'"cas"', b'"dan"', "héllo".encode(), b"thanks", b'"meet"'):
        assert text not in states
    names = ledger.names()
    token = {name: token for token, name in names.names.items()}
    assert sorted(token) == ["ann", "bob", "cas", "dan"]
    assert all(re.fullmatch("[0-9a-f]{16}", value) for value in token.values())
    facts = {stored.fact.external_id: stored for stored in ledger.read_log(0, 100)}
    assert (facts["g1"].fact.giver, facts["g1"].fact.receiver) == (token["ann"], token["bob"])
    # Whom each fact concerns: those it names, then those of the fact it refers to.
    assert facts["g1"].participants == (token["ann"], token["bob"])
    assert facts["i1"].participants == (token["cas"], token["ann"], token["bob"])
    assert facts["a1"].participants == (token["bob"], token["ann"])
    assert facts["r1"].participants == (token["bob"], token["ann"])
    assert "sealed_note" in facts["g1"].stored_json["data"] and "note" not in facts["g1"].stored_json["data"]
    assert ledger.repository.get(event_id("crm", "i1")).acknowledgements == {token["ann"]: event_id("crm", "a2")}


def test_the_rules_hold_on_tokens(ledger):
    record_scenario(ledger)
    outcomes = FactWriter(ledger).commit([
        incoming(acknowledgement("a4", "ann", "g3")),
        incoming(acknowledgement("a5", "ann", "g2")),
        incoming(reversal("r4", "r1")),
        incoming(acknowledgement("a6", "bob", "g1")),
        incoming(acknowledgement("a7", "cas", "g1")),
        incoming(acknowledgement("a8", "ann", "i1")),
        incoming(give("g1", "ann", "bob", value="2.50", kind="knowledge")),
    ])  # fmt: skip
    rules = [outcome.problem.errors[0].rule if outcome.problem else outcome.status for outcome in outcomes]
    assert rules == [
        "recorded", "ref_not_reversed", "reversal_not_reversible", "recorded", "acknowledger_was_helped",
        "one_acknowledgement_per_acknowledger", "same_id_same_fact",
    ]  # fmt: skip
    assert outcomes[-1].problem.status == 409  # the same identity with other content (the note is left out)


def test_a_resent_fact_is_a_duplicate_its_note_compared_in_the_open(ledger):
    record_scenario(ledger)
    again = FactWriter(ledger).commit([batch[0] for batch in SCENARIO])
    assert [outcome.status for outcome in again] == ["duplicate"] * len(SCENARIO)


def test_a_fact_round_trips_through_its_record():
    """`to_json` gives back exactly the stored JSON, key order included, for every recorded fact."""
    for fact in recorded_facts():
        assert orjson.dumps(fact_from_json(fact).to_json()) == orjson.dumps(fact)


def test_every_fact_type_has_its_record_history_and_stored_topic():
    """The webhook's tags name the four facts a sender may send; the enum, the records and the aggregates also
    name the erasure, which only the ledger records. The topics are those the store has always held."""
    tags = webhook_adapter.json_schema()["discriminator"]["mapping"]
    assert set(tags) == set(WEBHOOK_FACT_TYPES) == set(FactType) - {FactType.ERASURE}
    assert set(FactType) == set(FACT_RECORDS) == set(HISTORIES)
    assert all(FACT_RECORDS[fact_type].type is fact_type for fact_type in FactType)
    assert FACT_TOPIC == {
        FactType.GIVE: "ledger.facts:Give.Recorded",
        FactType.INTRODUCTION: "ledger.facts:Introduction.Recorded",
        FactType.ACKNOWLEDGEMENT: "ledger.facts:Acknowledgement.Recorded",
        FactType.REVERSAL: "ledger.facts:Reversal.Recorded",
        FactType.ERASURE: "ledger.facts:Erasure.Recorded",
    }
