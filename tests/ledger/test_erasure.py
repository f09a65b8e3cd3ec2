"""Erasure by crypto-shredding on the write side (DESIGN section 7): the key goes, the events stay, the log shows
the tombstone, a later fact naming the same id is a new person, and erasure racing ingest never splits a fact."""

from __future__ import annotations

import json
import random
import threading
import time
from datetime import UTC, datetime

import pytest

from contracts.webhook_bodies import read_webhook
from ledger.facts import ReceivedFact
from ledger.group_commit import FactWriter
from ledger.participants import tombstone
from ledger.store import open_ledger
from services.settings import Settings
from tests.helpers import acknowledgement, envelope, give, introduction, reversal


def incoming(fact, source="crm", tenant="acme"):
    webhook = read_webhook(json.dumps(envelope(fact)).encode())
    return ReceivedFact.from_webhook(tenant, source, webhook, datetime.now(UTC))


@pytest.fixture
def ledger(settings: Settings):
    ledger = open_ledger(settings.database_url, settings.data_dir)
    yield ledger
    ledger.close()


def stored_rows(ledger) -> list[tuple]:
    return [
        (n.id, n.originator_id, n.originator_version, n.topic, bytes(n.state))
        for n in ledger.recorder.select_notifications(start=0, limit=10_000)
    ]


def record(writer: FactWriter, *facts, source="crm", tenant="acme") -> list:
    outcomes = writer.commit([incoming(fact, source, tenant) for fact in facts])
    assert [outcome.status for outcome in outcomes] == ["recorded"] * len(facts), outcomes
    return outcomes


def test_erasure_deletes_the_key_appends_a_fact_and_the_log_shows_the_tombstone(ledger):
    writer = FactWriter(ledger)
    record(
        writer,
        give("g1", "ann", "bob", note="ann helped bob with the move"),
        give("g2", "bob", "cas", note="bob to cas"),
        introduction("i1", "cas", "ann", "dan", note="ann meets dan"),
        acknowledgement("a1", "bob", "g1", note="thanks ann"),
        reversal("r1", "g2"),
    )
    record(writer, give("x1", "ann", "bob"), tenant="other")  # another tenant's ann is another person
    before = stored_rows(ledger)

    erased = writer.erase("acme", "ann")
    assert erased is not None
    assert writer.erase("acme", "ann") is None  # the id is gone
    assert writer.erase("acme", "nobody") is None

    after = stored_rows(ledger)
    assert after[: len(before)] == before  # nothing stored was changed or deleted...
    assert len(after) == len(before) + 1  # ...one fact was appended
    log = ledger.logged(ledger.tenant_log("acme", 0, 100))
    assert log[-1] == {
        "event_id": str(erased.event_id), "tenant": "acme", "source": "reciprocity",
        "external_id": f"erase-{erased.token}", "type": "participant.erased",
        "occurred_at": log[-1]["occurred_at"], "recorded_at": log[-1]["recorded_at"],
        "data": {"token": erased.token}, "position": erased.position,
    }  # fmt: skip
    shown = json.dumps(log)
    assert '"ann"' not in shown and "ann helped" not in shown and "thanks ann" not in shown
    assert "ann meets dan" not in shown
    gone = tombstone(erased.token)
    by_id = {fact["external_id"]: fact["data"] for fact in log}
    assert (by_id["g1"]["giver"], by_id["g1"]["receiver"]) == (gone, "bob")
    assert by_id["i1"]["introduced"] == [gone, "dan"]
    assert "note" not in by_id["a1"]  # an acknowledgement of ann's give concerned her too
    assert by_id["g2"]["note"] == "bob to cas"  # a fact that never named her keeps its note
    assert ledger.logged(ledger.tenant_log("other", 0, 100))[0]["data"]["giver"] == "ann"


def test_a_later_fact_naming_the_same_id_is_a_new_person(ledger):
    writer = FactWriter(ledger)
    record(writer, give("g1", "ann", "bob"))
    erased = writer.erase("acme", "ann")
    record(writer, give("g2", "ann", "bob", note="hello again"))
    log = ledger.logged(ledger.tenant_log("acme", 0, 100))
    assert [fact["data"].get("giver") for fact in log] == [tombstone(erased.token), None, "ann"]
    assert log[-1]["data"]["note"] == "hello again"
    again = writer.erase("acme", "ann")
    assert again is not None and again.token != erased.token


def test_a_writer_that_met_a_person_another_writer_erased_records_the_id_as_a_new_person(ledger):
    # Two writers on one store stand for two processes: the first keeps ann's token from its last commit.
    ingest, eraser = FactWriter(ledger), FactWriter(ledger)
    record(ingest, give("g1", "ann", "bob"), give("g2", "cas", "dan"))
    erased = eraser.erase("acme", "ann")
    record(ingest, give("g3", "ann", "bob"), give("g4", "cas", "dan"))
    log = ledger.logged(ledger.tenant_log("acme", 0, 100))
    assert [fact["data"].get("giver") for fact in log] == [tombstone(erased.token), "cas", None, "ann", "cas"]
    tokens = {fact["external_id"]: fact["data"]["giver"] for fact in stored_facts(ledger) if "giver" in fact["data"]}
    assert tokens["g3"] != erased.token and tokens["g4"] == tokens["g2"]  # a new ann; cas is who she was
    again = ingest.erase("acme", "ann")
    assert again is not None and again.token == tokens["g3"]


def stored_facts(ledger) -> list[dict]:
    return [stored.stored_json for stored in ledger.tenant_log("acme", 0, 100)]


def test_a_resent_fact_that_named_an_erased_person_is_a_duplicate_and_does_not_bring_them_back(ledger):
    writer = FactWriter(ledger)
    first = record(writer, give("g1", "ann", "bob", note="secret"))[0]
    erased = writer.erase("acme", "ann")
    resent = writer.commit([incoming(give("g1", "ann", "bob", note="other content"))])[0]
    assert (resent.status, resent.event_id, resent.position) == ("duplicate", first.event_id, first.position)
    assert ledger.names().names == {token: name for token, name in ledger.names().names.items() if name == "bob"}
    log = ledger.logged(ledger.tenant_log("acme", 0, 100))
    assert [fact["external_id"] for fact in log] == ["g1", f"erase-{erased.token}"]


def test_acknowledging_or_reversing_an_erased_persons_give_works_and_keeps_no_note(ledger):
    writer = FactWriter(ledger)
    record(writer, give("g1", "ann", "bob"), give("g2", "ann", "bob"), give("g3", "ann", "cas"))
    writer.erase("acme", "ann")
    record(writer, acknowledgement("a1", "bob", "g1", note="thank you, whoever you were"))
    record(writer, acknowledgement("a2", "bob", "g2"), reversal("r3", "g3"))
    log = ledger.logged(ledger.tenant_log("acme", 0, 100))
    assert [fact["external_id"] for fact in log[-3:]] == ["a1", "a2", "r3"]
    assert log[-3]["data"]["acknowledger"] == "bob" and "note" not in log[-3]["data"]


def test_a_new_person_named_twice_in_one_transaction_gets_one_token(ledger):
    writer = FactWriter(ledger)
    record(writer, give("g1", "ann", "bob"), give("g2", "bob", "ann"), introduction("i1", "cas", "ann", "bob"))
    assert sorted(ledger.names().names.values()) == ["ann", "bob", "cas"]


def test_the_facts_concerning_a_participant_are_those_naming_them_and_what_refers_to_those(ledger):
    """What an export lists: on a random history, every fact naming p, and every acknowledgement or reversal of
    those (and a reversal of such an acknowledgement), in position order."""
    rng = random.Random(18)
    people = ["ann", "bob", "cas", "dan", "eve"]
    writer = FactWriter(ledger)
    names: dict[str, set[str]] = {}  # external id -> whom it concerns
    acknowledgeable: list[tuple[str, str]] = []  # (external id, an acknowledger allowed)
    for n in range(150):
        roll = rng.random()
        if roll < 0.5 or not acknowledgeable:
            giver, receiver = rng.sample(people, 2)
            fact, fact_id = give(f"g{n}", giver, receiver), f"g{n}"
            names[fact_id] = {giver, receiver}
            acknowledgeable.append((fact_id, receiver))
        elif roll < 0.65:
            introducer, first, second = rng.sample(people, 3)
            fact, fact_id = introduction(f"i{n}", introducer, first, second), f"i{n}"
            names[fact_id] = {introducer, first, second}
            acknowledgeable.append((fact_id, rng.choice([first, second])))
        elif roll < 0.85:
            ref, acknowledger = rng.choice(acknowledgeable)
            fact, fact_id = acknowledgement(f"a{n}", acknowledger, ref), f"a{n}"
            names[fact_id] = {acknowledger} | names[ref]
        else:
            ref = rng.choice(sorted(names))
            fact, fact_id = reversal(f"r{n}", ref), f"r{n}"
            names[fact_id] = set(names[ref])
        outcome = writer.commit([incoming(fact)])[0]
        if outcome.status != "recorded":  # a rule refused it (acknowledged twice, reversed): not in the log
            del names[fact_id]
    by_id = {stored.fact.external_id: stored.position for stored in ledger.tenant_log("acme", 0, 1_000)}
    tokens = {name: token for token, name in ledger.names().names.items()}
    for person in people:
        expected = sorted((by_id[fact_id], fact_id) for fact_id, named in names.items() if person in named)
        found = [
            (stored.position, stored.fact.external_id) for stored in ledger.participant_facts("acme", tokens[person])
        ]
        assert found == expected


def test_erasure_racing_ingest_never_splits_a_fact(settings: Settings):
    """One writer erases "pat" again and again while another records facts naming pat: every fact belongs to an
    erased pat (recorded before that erasure) or to the live one; none names an erased token after its erasure."""
    ledgers = [open_ledger(settings.database_url, settings.data_dir) for _ in range(2)]
    try:
        ingest, erase = (FactWriter(ledger) for ledger in ledgers)
        stop = threading.Event()
        erasures = []

        def keep_erasing() -> None:
            while not stop.is_set():
                erased = erase.erase("acme", "pat")
                if erased is not None:
                    erasures.append(erased)

        eraser = threading.Thread(target=keep_erasing)
        eraser.start()
        try:
            # Until the eraser has had its turns (a loaded machine may starve its thread for a while).
            deadline = time.monotonic() + 30
            n = 0
            while n < 60 or (len(erasures) < 3 and time.monotonic() < deadline):
                outcomes = ingest.commit([incoming(give(f"g{n}-{k}", "pat", f"q{k}")) for k in range(5)])
                assert {outcome.status for outcome in outcomes} == {"recorded"}
                n += 1
        finally:
            stop.set()
            eraser.join()
        assert len(erasures) >= 2
        erased_at = {erased.token: erased.position for erased in erasures}
        live = ledgers[0].names()
        pat_tokens = set()
        for stored in ledgers[0].tenant_log("acme", 0, 10_000):
            if stored.fact.type == "give.recorded":
                token = stored.fact.giver
                pat_tokens.add(token)
                if token in erased_at:
                    assert stored.position < erased_at[token]  # recorded before its erasure, erased with it
                else:
                    assert live.name(token) == "pat"  # the one live pat
        assert len(pat_tokens - set(erased_at)) <= 1
    finally:
        for ledger in ledgers:
            ledger.close()


def test_large_batches_of_new_and_known_people_commit(ledger):
    """Thousands of facts a transaction, people new and known: on PostgreSQL the library inserts them in a
    pipeline, whose cursor a key check must not share (it read the inserts' results instead of its own)."""
    writer = FactWriter(ledger)
    for batch in range(3):
        facts = [give(f"g{batch}-{n}", f"p{(n * 7 + batch) % 1500}", f"p{(n * 11 + 3) % 1500}") for n in range(2_000)]
        facts = [fact for fact in facts if fact[1]["giver"] != fact[1]["receiver"]]
        assert {outcome.status for outcome in writer.commit([incoming(fact) for fact in facts])} == {"recorded"}
    assert len(ledger.names().names) == 1_500
