"""Recording facts in the real store (SQLite file and PostgreSQL): identity, order, rules, conflicts."""

from __future__ import annotations

import json
import multiprocessing
import threading
from datetime import UTC, datetime

import psycopg
import pytest

from contracts.webhook_bodies import FactType, read_webhook
from ledger.facts import ReceivedFact, fact_event_id
from ledger.group_commit import FactWriter
from ledger.locks import schema_lock
from ledger.store import open_ledger
from services.settings import Settings
from tests.helpers import acknowledgement, envelope, give, introduction, reversal


def incoming(fact, tenant="acme", source="crm"):
    webhook = read_webhook(json.dumps(envelope(fact)).encode())
    return ReceivedFact.from_webhook(tenant, source, webhook, datetime.now(UTC))


@pytest.fixture
def writer(settings: Settings):
    ledger = open_ledger(settings.database_url, settings.data_dir)
    yield FactWriter(ledger)
    ledger.close()


def statuses(outcomes):
    return [o.status if o.problem is None else (o.problem.status, o.problem.errors[0].rule) for o in outcomes]


def test_a_fact_is_recorded_once_and_its_duplicates_answer_the_original(writer):
    """The same fact again, in the same transaction or later, is answered with the original's id and position."""
    first, again_in_batch = writer.commit([incoming(give("g1", "ann", "bob")), incoming(give("g1", "ann", "bob"))])
    (later,) = writer.commit([incoming(give("g1", "ann", "bob", value="1.0"))])
    assert (first.status, again_in_batch.status, later.status) == ("recorded", "duplicate", "duplicate")
    assert first.event_id == again_in_batch.event_id == later.event_id == fact_event_id("acme", "crm", "g1")
    assert first.position == again_in_batch.position == later.position
    assert [f.fact.external_id for f in writer.ledger.tenant_log("acme", 0, 10)] == ["g1"]


def test_the_same_id_with_other_content_is_a_conflict(writer):
    writer.commit([incoming(give("g1", "ann", "bob"))])
    (outcome,) = writer.commit([incoming(give("g1", "ann", "cas"))])
    assert outcome.problem.status == 409 and outcome.problem.retryable is False


def test_a_batch_with_a_duplicate_and_a_new_fact_records_the_new_one(writer):
    writer.commit([incoming(give("g1", "ann", "bob"))])
    outcomes = writer.commit([incoming(give("g1", "ann", "bob")), incoming(give("g2", "bob", "ann"))])
    assert statuses(outcomes) == ["duplicate", "recorded"]
    assert [f.fact.external_id for f in writer.ledger.tenant_log("acme", 0, 10)] == ["g1", "g2"]


def test_facts_apply_in_order_and_positions_follow_it(writer):
    """Later items see earlier ones: an acknowledgement after its give in one batch is fine."""
    outcomes = writer.commit(
        [
            incoming(give("g1", "ann", "bob")),
            incoming(acknowledgement("a1", "bob", "g1")),
            incoming(acknowledgement("a0", "bob", "g9")),
            incoming(give("g9", "ann", "bob")),
        ]
    )
    assert statuses(outcomes) == ["recorded", "recorded", (409, "ref_recorded"), "recorded"]
    assert outcomes[0].position < outcomes[1].position < outcomes[3].position
    assert outcomes[2].problem.retryable is True


def test_one_acknowledgement_per_fact_and_acknowledger(writer):
    writer.commit([incoming(introduction("i1", "ann", "bob", "cas"))])
    outcomes = writer.commit(
        [
            incoming(acknowledgement("a1", "bob", "i1")),
            incoming(acknowledgement("a2", "bob", "i1")),
            incoming(acknowledgement("a3", "cas", "i1")),
            incoming(acknowledgement("a4", "ann", "i1")),
        ]
    )
    assert statuses(outcomes) == [
        "recorded",
        (422, "one_acknowledgement_per_acknowledger"),
        "recorded",
        (422, "acknowledger_was_helped"),
    ]


def test_reversing_again_answers_the_first_reversal(writer):
    """A second reversal of a reversed fact is a duplicate of the first reversal, not a new fact."""
    writer.commit([incoming(give("g1", "ann", "bob"))])
    (first,) = writer.commit([incoming(reversal("r1", "g1"))])
    (second,) = writer.commit([incoming(reversal("r2", "g1"))])
    assert first.status == "recorded"
    assert (second.status, second.event_id, second.position) == ("duplicate", first.event_id, first.position)
    (late_ack,) = writer.commit([incoming(acknowledgement("a1", "bob", "g1"))])
    assert late_ack.problem.errors[0].rule == "ref_not_reversed"


def test_a_reversed_acknowledgement_can_be_given_again(writer):
    writer.commit([incoming(give("g1", "ann", "bob")), incoming(acknowledgement("a1", "bob", "g1"))])
    outcomes = writer.commit([incoming(reversal("r1", "a1")), incoming(acknowledgement("a2", "bob", "g1"))])
    assert statuses(outcomes) == ["recorded", "recorded"]


def test_only_the_recording_source_may_reverse_and_refs_may_cross_sources(writer):
    writer.commit([incoming(give("g1", "ann", "bob"), source="crm")])
    chat_ack = acknowledgement("a1", "bob", "g1")
    chat_ack[1]["ref"]["source"] = "crm"
    (acknowledged,) = writer.commit([incoming(chat_ack, source="chat")])
    (reversed_elsewhere,) = writer.commit([incoming(reversal("r1", "g1"), source="chat")])
    assert acknowledged.status == "recorded"
    assert reversed_elsewhere.problem.status == 409  # chat has no fact g1 of its own


def test_tenants_never_see_each_others_facts(writer):
    writer.commit(
        [incoming(give("g1", "ann", "bob"), tenant="acme"), incoming(give("g1", "ann", "bob"), tenant="zeta")]
    )
    (ack,) = writer.commit([incoming(acknowledgement("a1", "bob", "g9"), tenant="zeta")])
    assert ack.problem.status == 409
    assert [f.fact.tenant for f in writer.ledger.tenant_log("zeta", 0, 10)] == ["zeta"]


RACE_ROUNDS = 5


def _race_acknowledgements(settings: Settings, racer: int, barrier, results) -> None:
    ledger = open_ledger(settings.database_url, settings.data_dir)
    writer = FactWriter(ledger)
    for round_number in range(RACE_ROUNDS):
        barrier.wait(timeout=20)  # both racers commit at the same moment
        (outcome,) = writer.commit([incoming(acknowledgement(f"a{round_number}-{racer}", "bob", f"g{round_number}"))])
        results.put((round_number, outcome.status if outcome.problem is None else outcome.problem.errors[0].rule))
    ledger.close()


def test_two_processes_racing_to_acknowledge_the_same_give_record_exactly_one(writer, settings):
    """Across processes the store's own conflict detection decides: exactly one acknowledgement wins."""
    writer.commit([incoming(give(f"g{n}", "ann", "bob")) for n in range(RACE_ROUNDS)])
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    racers = [context.Process(target=_race_acknowledgements, args=(settings, n, barrier, results)) for n in (1, 2)]
    for racer in racers:
        racer.start()
    answers: dict[int, list[str]] = {}
    for _ in range(2 * RACE_ROUNDS):
        round_number, answer = results.get(timeout=60)
        answers.setdefault(round_number, []).append(answer)
    for racer in racers:
        racer.join(30)
    assert all(sorted(a) == ["one_acknowledgement_per_acknowledger", "recorded"] for a in answers.values()), answers
    acknowledgements = [f for f in writer.ledger.tenant_log("acme", 0, 100) if f.fact.type == FactType.ACKNOWLEDGEMENT]
    assert len(acknowledgements) == RACE_ROUNDS


def test_a_conflicting_commit_is_replanned_against_the_newer_history(writer, settings):
    """When another writer commits in between our read and our write, the store refuses ours and we re-plan:
    the competing acknowledgement wins, ours is answered by the rule, and the neighbour is still recorded."""
    writer.commit([incoming(give("g1", "ann", "bob"))])
    other = FactWriter(open_ledger(settings.database_url, settings.data_dir))
    real_put, interleaved = writer.ledger.events.put, []

    def put_after_the_other_writer(events, **options):
        if not interleaved:
            interleaved.append(other.commit([incoming(acknowledgement("a-other", "bob", "g1"))])[0])
        return real_put(events, **options)

    writer.ledger.events.put = put_after_the_other_writer  # the library's event store: where our write lands
    outcomes = writer.commit([incoming(acknowledgement("a-mine", "bob", "g1")), incoming(give("g2", "bob", "ann"))])
    assert interleaved[0].status == "recorded"
    assert statuses(outcomes) == [(422, "one_acknowledgement_per_acknowledger"), "recorded"]
    other.ledger.close()


def test_a_person_another_writer_records_between_our_reads_is_not_taken_for_someone_new(writer, settings):
    """We look up the people a batch names, then the facts it refers to. When another writer records a give to
    someone new in between, our acknowledgement finds the give but took its receiver for a new person (a new
    token): it must be planned again, not refused as acknowledged by someone the give did not help."""
    other = FactWriter(open_ledger(settings.database_url, settings.data_dir))
    real_lookup, interleaved = writer.ledger.participant_keys, []

    def people_looked_up_then_the_other_writer(tenant, digests):
        keys = real_lookup(tenant, digests)
        if not interleaved:
            interleaved.append(other.commit([incoming(give("g1", "ann", "zoe"))])[0])
        return keys

    writer.ledger.participant_keys = people_looked_up_then_the_other_writer  # the plan's first read
    outcomes = writer.commit([incoming(acknowledgement("a1", "zoe", "g1"))])
    assert interleaved[0].status == "recorded"
    assert statuses(outcomes) == ["recorded"]
    give_fact, thanks = (f.fact for f in writer.ledger.tenant_log("acme", 0, 10))
    assert thanks.acknowledger == give_fact.receiver  # one person, one token
    other.ledger.close()


@pytest.mark.postgres
def test_creating_tables_in_one_schema_never_waits_for_another(postgres_url, tmp_path):
    """A store held up in its own schema (say, behind a rebuild) must not hold up the others."""
    busy, other = f"{postgres_url}?schema=test_busy_{id(tmp_path)}", f"{postgres_url}?schema=test_free_{id(tmp_path)}"
    opened = threading.Event()
    try:
        with schema_lock(busy):
            opener = threading.Thread(target=lambda: (open_ledger(other, tmp_path), opened.set()), daemon=True)
            opener.start()
            assert opened.wait(20), "opening a store in another schema waited for this schema's lock"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            for url in (busy, other):
                conn.execute(f"DROP SCHEMA IF EXISTS {url.rsplit('=', 1)[1]} CASCADE")
