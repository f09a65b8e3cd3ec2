"""The rules of DESIGN section 2, on the aggregates alone (no store)."""

import json
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from contracts.types import utc_text
from contracts.webhook_bodies import read_webhook
from ledger.facts import (
    AlreadyReversed,
    ReceivedFact,
    Ref,
    RuleViolation,
    fact_event_id,
    history_of,
    received_fact_json,
    same_fact,
)
from tests.helpers import acknowledgement, envelope, give, introduction, reversal

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def recorded(fact, source="crm", received_at=NOW):
    webhook = read_webhook(json.dumps(envelope(fact)).encode())
    # The aggregate works the same on ids as on the tokens the writer gives it.
    received = ReceivedFact.from_webhook("acme", source, webhook, received_at)
    return history_of(received_fact_json(received, utc_text(NOW)), received.event_id)


def broken_rule(fact, source="crm"):
    with pytest.raises(RuleViolation) as broken:
        recorded(fact, source)
    return broken.value.path, broken.value.rule


def test_event_id_is_the_uuid5_of_tenant_source_and_external_id():
    """The same sender's same fact always has the same id; another tenant or source gives another."""
    assert fact_event_id("acme", "crm", "g1") == fact_event_id("acme", "crm", "g1")
    assert fact_event_id("acme", "crm", "g1") != fact_event_id("acme", "chat", "g1")
    assert fact_event_id("acme", "crm", "g1") != fact_event_id("other", "crm", "g1")
    assert fact_event_id("acme", "crm", "g1").version == 5


def test_a_participant_cannot_give_to_themselves():
    assert broken_rule(give("g1", "ann", "ann")) == ("data.receiver", "giver_is_not_receiver")


def test_the_two_introduced_must_differ():
    assert broken_rule(introduction("i1", "ann", "bob", "bob")) == ("data.introduced", "introduced_differ")


def test_the_introducer_is_neither_of_the_introduced():
    assert broken_rule(introduction("i1", "ann", "ann", "bob")) == ("data.introducer", "introducer_not_introduced")


def test_occurred_at_may_be_at_most_five_minutes_ahead():
    ahead = (NOW + timedelta(minutes=5, seconds=1)).isoformat()
    assert broken_rule(give("g1", "ann", "bob", occurred_at=ahead)) == ("data.occurred_at", "not_in_future")
    just_in_time = (NOW + timedelta(minutes=5)).isoformat()
    assert recorded(give("g1", "ann", "bob", occurred_at=just_in_time)).fact.occurred_at.startswith("2026-05-01")


def test_only_the_recording_source_may_reverse():
    fact = reversal("r1", "g1")
    fact[1]["ref"]["source"] = "chat"
    assert broken_rule(fact) == ("data.ref.source", "reversed_by_recording_source")


def test_a_defaulted_occurred_at_is_the_time_of_receipt_and_not_part_of_the_data():
    fact = recorded(give("g1", "ann", "bob"))
    assert fact.fact.occurred_at == "2026-05-01T12:00:00.000000Z"
    assert "occurred_at" not in fact.fact.data_json() and not fact.fact.occurred_at_sent


def test_a_give_is_acknowledged_only_by_its_receiver_and_once():
    g = recorded(give("g1", "ann", "bob"))
    with pytest.raises(RuleViolation, match="receiver"):
        g.acknowledge("ann", uuid4())
    g.acknowledge("bob", uuid4())
    with pytest.raises(RuleViolation) as again:
        g.acknowledge("bob", uuid4())
    assert again.value.rule == "one_acknowledgement_per_acknowledger"


def test_an_introduction_is_acknowledged_by_either_introduced_once_each():
    i = recorded(introduction("i1", "ann", "bob", "cas"))
    i.acknowledge("bob", uuid4())
    i.acknowledge("cas", uuid4())
    with pytest.raises(RuleViolation):
        i.acknowledge("ann", uuid4())
    assert set(i.acknowledgements) == {"bob", "cas"}


def test_a_withdrawn_acknowledgement_frees_its_acknowledger():
    """Reversing an acknowledgement makes the give unacknowledged again, so it can be thanked again."""
    g = recorded(give("g1", "ann", "bob"))
    first = uuid4()
    g.acknowledge("bob", first)
    g.withdraw_acknowledgement(first)
    assert g.acknowledgements == {}
    g.acknowledge("bob", uuid4())


def test_a_reversed_fact_cannot_be_acknowledged():
    g = recorded(give("g1", "ann", "bob"))
    g.reverse(uuid4())
    with pytest.raises(RuleViolation) as broken:
        g.acknowledge("bob", uuid4())
    assert broken.value.rule == "ref_not_reversed"


def test_reversing_twice_names_the_first_reversal():
    g = recorded(give("g1", "ann", "bob"))
    first = uuid4()
    g.reverse(first)
    with pytest.raises(AlreadyReversed) as again:
        g.reverse(uuid4())
    assert again.value.reversal_id == first


def test_a_reversal_cannot_be_reversed_and_an_acknowledgement_cannot_be_acknowledged():
    with pytest.raises(RuleViolation, match="reversal cannot be reversed"):
        recorded(reversal("r1", "g1")).reverse(uuid4())
    with pytest.raises(RuleViolation, match="give or an introduction"):
        recorded(acknowledgement("a1", "bob", "g1")).acknowledge("bob", uuid4())


def test_the_same_fact_ignores_defaults_decimal_spelling_and_context_case():
    """Duplicates are judged on validated content: value 1 == "1.000", " Utrecht" == "utrecht"."""
    first = recorded(give("g1", "ann", "bob", context={"location": " Utrecht"}))
    again = recorded(give("g1", "ann", "bob", value="1.000", context={"location": "utrecht"}))
    other = recorded(give("g1", "ann", "bob", value="2"))
    assert same_fact(first.fact, again.fact)
    assert not same_fact(first.fact, other.fact)


def test_an_acknowledgements_ref_source_defaults_to_the_sender():
    fact = recorded(acknowledgement("a1", "bob", "g1"), source="chat")
    assert fact.fact.ref == Ref(source="chat", id="g1")
    assert fact.acknowledged_id == fact_event_id("acme", "chat", "g1")
