"""Erasure in the views (DESIGN section 7): the id becomes the tombstone everywhere, no number changes, a rebuild
gives the same views, the KV writer is told which keys to purge, and the views file keeps no trace of the id."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from ledger.group_commit import FactWriter
from ledger.participants import tombstone
from ledger.schema import SchemaError, SchemaMode
from ledger.store import open_ledger
from projections import influence_view, reciprocity
from projections.follower import Follower
from projections.influence_view import InfluenceView
from projections.nats_bus import BUCKETS
from projections.queries import ReciprocityQueries
from projections.rebuild import rebuild
from projections.runtime import open_view_store
from projections.viewstore import VIEWS_SCHEMA
from tests.helpers import acknowledgement, give, introduction, received, reversal, view_columns

PERSON = "Zelda_Quartermaine-7"  # distinctive, so a search of raw bytes means something
# Around the tombstone ("erased-..."): "Ann" sorts before both it and PERSON, "bob" and "cas" between PERSON and
# it (their pairs with PERSON change order), "fay" and "gus" after both.
OTHERS = ["Ann", "bob", "cas", "fay", "gus"]
PEOPLE = [PERSON, *OTHERS]
CONTEXTS = [None, {"subject": "Python"}, {"location": "Utrecht"}]


def at(day: int) -> str:
    return (datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=day)).isoformat()


def history(seed: int = 3, count: int = 120) -> list:
    """Gives (some with a context and a note), introductions, acknowledgements and reversals among PEOPLE."""
    rng = random.Random(seed)
    facts: list = []
    gives: list[tuple[str, str]] = []  # external id, receiver
    for n in range(count):
        roll = rng.random()
        context = rng.choice(CONTEXTS)
        extra = {"context": context} if context else {}
        if roll < 0.6 or not gives:
            giver, receiver = rng.sample(PEOPLE, 2)
            value = str(rng.randint(1, 9))
            facts.append(give(f"g{n}", giver, receiver, value=value, occurred_at=at(n), note=f"n{n}", **extra))
            gives.append((f"g{n}", receiver))
        elif roll < 0.75:
            introducer, first, second = rng.sample(PEOPLE, 3)
            facts.append(introduction(f"i{n}", introducer, first, second, occurred_at=at(n), **extra))
        elif roll < 0.93:
            ref, receiver = gives.pop(rng.randrange(len(gives)))
            facts.append(acknowledgement(f"a{n}", receiver, ref, occurred_at=at(n + 1)))
        else:
            facts.append(reversal(f"r{n}", gives.pop(rng.randrange(len(gives)))[0]))  # not acknowledged after
    return facts


def record(writer: FactWriter, facts: list) -> None:
    outcomes = writer.commit([received(fact) for fact in facts])
    assert all(outcome.status == "recorded" for outcome in outcomes), outcomes


def follower(ledger, views, page_facts_max: int = 1000, on_page=lambda after, applied: None) -> Follower:
    return Follower(
        ledger, reciprocity.ReciprocityProjection(views), lambda: views.position(reciprocity.VIEW),
        page_facts_max=page_facts_max, on_page=on_page,
    )  # fmt: skip


def project(ledger, views, page_facts_max: int = 1000) -> InfluenceView:
    follower(ledger, views, page_facts_max).catch_up()
    influence = InfluenceView(views, ReciprocityQueries(views))
    for tenant in influence.stale_tenants():
        influence.recompute(tenant)
    return influence


def answers(views, people: list[str]) -> dict:
    """Every answer the views give about these people (overall and per context), without positions."""
    queries, influence = ReciprocityQueries(views), InfluenceView(views, ReciprocityQueries(views))
    found: dict = {}
    for person in people:
        for scope in ("", "subject=python", "location=utrecht"):
            balance = queries.balance("acme", person, scope)
            found["balance", person, scope] = balance and balance.model_dump(exclude={"position"})
        shown = queries.maintenance("acme", person, None)
        found["maintenance", person] = shown and shown.model_dump(mode="json", exclude={"position"})
        scored = influence.participant("acme", person)
        found["influence", person] = scored and scored.model_dump(mode="json", by_alias=True, exclude={"position"})
    for a in people:
        for b in people:
            pair = queries.pair("acme", a, b)
            found["pair", a, b] = pair and pair.model_dump(exclude={"position"})
    return found


def renamed(answer, old: str, new: str):
    """An answer with one id replaced wherever it is a whole string."""
    if isinstance(answer, dict):
        return {renamed(key, old, new): renamed(value, old, new) for key, value in answer.items()}
    if isinstance(answer, list | tuple):
        return type(answer)(renamed(value, old, new) for value in answer)
    return new if answer == old else answer


def in_canonical_order(pair: dict | None) -> dict | None:
    """A pair answer by direction, whichever of the two is `a`."""
    if pair is None:
        return None
    a, b = pair["a"], pair["b"]
    return {(a, b): pair["a_to_b"], (b, a): pair["b_to_a"], **{k: pair[k] for k in ("first_at", "last_at")},
            "introduced_by": pair["introduced_by"], "reciprocity": pair["reciprocity"]}  # fmt: skip


def view_tables(views) -> list[str]:
    """Every table of the views database (on PostgreSQL, the views' tables of the store's schema)."""
    if views.postgres:
        rows = views.read(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
            "AND (table_name LIKE ? OR table_name LIKE ?)",
            ("view%", "%tracking%"),
        )
        return [name for (name,) in rows]
    rows = views.read("SELECT name FROM sqlite_master WHERE type = 'table' UNION ALL "
                      "SELECT name FROM influence.sqlite_master WHERE type = 'table'")  # fmt: skip
    return [name for (name,) in rows]


def cells_naming(views, person: str, but: tuple[str, ...] = ()) -> list[tuple[str, tuple]]:
    """Every row of every views table (but these) with a cell that holds the id."""
    found = []
    for table in view_tables(views):
        if table in but:
            continue
        for row in views.read(f"SELECT * FROM {table}"):
            if any(isinstance(cell, str) and person in cell for cell in row):
                found.append((table, tuple(row)))
    return found


def snapshot(views) -> dict:
    tables = (*reciprocity.TABLES, "view_names")
    return {t: sorted(map(tuple, views.read(f"SELECT {', '.join(view_columns(views, t))} FROM {t}"))) for t in tables}


def test_an_erasure_puts_the_tombstone_wherever_the_id_was_and_changes_no_number(stores, settings):
    ledger, views = stores
    writer = FactWriter(ledger)
    record(writer, history())
    project(ledger, views)
    before = answers(views, PEOPLE)
    assert before["balance", PERSON, ""] and cells_naming(views, PERSON)

    erased = writer.erase("acme", PERSON)
    gone = tombstone(erased.token)
    pages = []
    follower(ledger, views, on_page=lambda after, applied: pages.append(applied)).catch_up()
    InfluenceView(views, ReciprocityQueries(views)).recompute("acme")
    after = answers(views, [gone, *OTHERS])

    # The person's own answers are gone, like an unknown id's; under the tombstone they are what they were.
    queries = ReciprocityQueries(views)
    assert queries.balance("acme", PERSON) is None and queries.maintenance("acme", PERSON, None) is None
    assert InfluenceView(views, queries).participant("acme", PERSON) is None
    not_pairs = {key: value for key, value in before.items() if key[0] != "pair"}
    assert {key: value for key, value in after.items() if key[0] != "pair"} == renamed(not_pairs, PERSON, gone)
    for a in PEOPLE:  # pairs: each direction's values as they were, the canonical order the tombstone's
        for b in PEOPLE:
            new = after["pair", gone if a == PERSON else a, gone if b == PERSON else b]
            assert in_canonical_order(new) == renamed(in_canonical_order(before["pair", a, b]), PERSON, gone), (a, b)
    swapped = [b for b in OTHERS if before["pair", PERSON, b] and (b > PERSON) != (gone < b)]
    assert swapped and [b for b in OTHERS if (b > PERSON) == (gone < b) and before["pair", PERSON, b]]

    # Nowhere in the views but in the KV writer's note of the keys to purge, one per bucket.
    assert cells_naming(views, PERSON, but=("view_erasures",)) == []
    assert sorted(views.read("SELECT bucket, tenant, token, participant, position FROM view_erasures")) == [
        (bucket, "acme", erased.token, PERSON, erased.position) for bucket in sorted(BUCKETS)
    ]
    assert views.read("SELECT participant FROM view_names WHERE token = ?", (erased.token,)) == [(gone,)]
    # The page hands the KV writer the tombstone's balance, not the id's.
    handed = [(tenant, participant) for applied in pages for tenant, participant, _ in applied.balances]
    assert ("acme", gone) in handed and not [p for _, p in handed if p == PERSON]
    # Rows the buckets hold under the tombstone are marked changed by the erasure's page, so they are rewritten.
    changed = views.read(
        "SELECT COUNT(*) FROM view_pairs WHERE tenant = 'acme' AND scope = '' AND (a = ? OR b = ?) "
        "AND changed_position < ?",
        (gone, gone, erased.position),
    )
    assert changed == [(0,)]

    followed = snapshot(views)
    rebuilt = rebuild(settings.database_url, settings.data_dir, None, wait_s=5)
    assert rebuilt["position"] == erased.position and snapshot(views) == followed
    assert answers(views, [gone, *OTHERS]) == after


def test_facts_after_an_erasure_committed_but_before_the_views_reached_it_stay_with_their_person(stores, settings):
    """The views knew the id; more facts about the person come, then the erasure, then a new person with the same
    id. Followed in one page or fact by fact, the person is one row under the tombstone, the new one another."""
    ledger, views = stores
    writer = FactWriter(ledger)
    record(writer, [give("g1", PERSON, "bob", value="2"), give("g2", "bob", PERSON, value="3")])
    project(ledger, views)
    record(writer, [give("g3", PERSON, "cas", value="5"), acknowledgement("a3", "cas", "g3")])
    erased = writer.erase("acme", PERSON)
    record(writer, [give("g4", PERSON, "bob", value="7"), introduction("i4", "fay", PERSON, "bob")])
    gone = tombstone(erased.token)

    results = []
    for page_facts_max in (1000, 1):
        views.reset(reciprocity.VIEW, reciprocity.TABLES)
        with views.transaction() as cursor:  # from scratch: what the views met is forgotten too
            cursor.execute("DELETE FROM view_names")
        follower(ledger, views, page_facts_max).catch_up()
        queries = ReciprocityQueries(views)
        old, new = queries.balance("acme", gone), queries.balance("acme", PERSON)
        assert (old.given.count, old.given.value, old.received.value) == (2, "7", "3")
        assert (new.given.count, new.given.value, new.introductions.received) == (1, "7", 1)
        assert queries.pair("acme", PERSON, gone) is None or queries.pair("acme", PERSON, gone).a_to_b.count == 0
        results.append(snapshot(views))
    assert results[0] == results[1]
    rebuild(settings.database_url, settings.data_dir, None, wait_s=5)
    assert snapshot(views) == results[0]


def test_erasing_someone_the_views_never_met_only_records_their_tombstone(stores):
    ledger, views = stores
    writer = FactWriter(ledger)
    record(writer, [give("g1", PERSON, "bob"), give("g2", "bob", "cas")])
    erased = writer.erase("acme", PERSON)
    follower(ledger, views).catch_up()
    gone = tombstone(erased.token)
    assert views.read("SELECT participant FROM view_names WHERE token = ?", (erased.token,)) == [(gone,)]
    assert views.read("SELECT COUNT(*) FROM view_erasures") == [(0,)]  # no KV key ever named the id
    assert cells_naming(views, PERSON) == []
    assert ReciprocityQueries(views).balance("acme", gone).given.count == 1


def test_a_rebuild_before_the_views_reached_an_erasure_still_has_the_ids_keys_purged(stores, settings):
    """The views knew the id, the erasure is recorded, and the views are rebuilt before following it: the rebuilt
    views only know the tombstone, and the KV writer is still told to purge the id's keys."""
    ledger, views = stores
    writer = FactWriter(ledger)
    record(writer, [give("g1", PERSON, "bob"), give("g2", "bob", "cas")])
    project(ledger, views)
    erased = writer.erase("acme", PERSON)
    rebuild(settings.database_url, settings.data_dir, None, wait_s=5)
    assert sorted(views.read("SELECT bucket, participant, position FROM view_erasures")) == [
        (bucket, PERSON, erased.position) for bucket in sorted(BUCKETS)
    ]
    assert cells_naming(views, PERSON, but=("view_erasures",)) == []
    rebuilt = snapshot(views)
    follower(ledger, views).catch_up()  # nothing left to apply
    assert snapshot(views) == rebuilt


def holding(data_dir, text: str) -> list[str]:
    """The files of the data directory whose raw bytes hold the text."""
    return sorted(p.name for p in data_dir.rglob("*") if p.is_file() and text.encode() in p.read_bytes())


def test_after_an_erasure_and_a_clean_stop_the_views_files_do_not_hold_the_id(sqlite_settings):
    """Followed, and then rebuilt (whose scratch files held ids too): after a clean stop no file holds the id. The
    views file's pages that held it are rewritten or freed, and freed content is zeroed (secure_delete)."""
    data_dir = sqlite_settings.data_dir
    ledger, views = open_ledger(None, data_dir), open_view_store(None, data_dir)
    try:
        writer = FactWriter(ledger)
        record(writer, history(seed=5, count=400))
        project(ledger, views, page_facts_max=50)
        views.close()
        assert holding(data_dir, PERSON) == ["influence.sqlite3", "views.sqlite3"]  # so the search means something

        views = open_view_store(None, data_dir)
        with views.transaction() as cursor:  # the page's connection, and a reader's
            assert cursor.execute("PRAGMA secure_delete") == [(1,)]
            assert cursor.execute("PRAGMA influence.secure_delete") == [(1,)]
        assert views.read("PRAGMA secure_delete") == [(1,)]
        writer.erase("acme", PERSON)
        project(ledger, views, page_facts_max=50)
        with views.transaction() as cursor:  # as the KV writer does once it purged the id's keys
            cursor.execute("DELETE FROM view_erasures")
        views.close()
        assert holding(data_dir, PERSON) == []

        views = open_view_store(None, data_dir)
        rebuild(None, data_dir, None, wait_s=5)
    finally:
        views.close()
        ledger.close()
    assert not [path.name for path in data_dir.rglob("*") if path.name.endswith((".staged", "-journal", "-wal"))]
    assert holding(data_dir, PERSON) == []


def test_a_version_1_views_database_is_built_again_by_migrate_and_refused_otherwise(stores, settings):
    ledger, views = stores
    record(FactWriter(ledger), [give("g1", "ann", "bob")])
    follower(ledger, views).catch_up()
    with views.transaction() as cursor:  # as version 1 left it: no view_names, no erased_position
        cursor.execute("UPDATE schema_versions SET version = 1 WHERE part = 'views'")
        cursor.execute("DROP TABLE view_names")
    views.close()
    needed = f"views schema is version 1, this release needs version {VIEWS_SCHEMA.version}"
    with pytest.raises(SchemaError, match=needed):
        open_view_store(settings.database_url, settings.data_dir)
    upgraded = open_view_store(settings.database_url, settings.data_dir, schema_mode=SchemaMode.MIGRATE)
    try:
        assert upgraded.schema_found == 1 and upgraded.position(reciprocity.VIEW) == 0
        assert upgraded.read("SELECT COUNT(*) FROM view_participants") == [(0,)]
        follower(ledger, upgraded).catch_up()
        assert ReciprocityQueries(upgraded).balance("acme", "ann").given.count == 1
        assert upgraded.read("SELECT COUNT(*) FROM view_names") == [(2,)]
    finally:
        upgraded.close()
    open_view_store(settings.database_url, settings.data_dir).close()  # the current version now: opens as it is


def test_influence_after_an_erasure_keeps_every_score_under_the_tombstone(stores):
    """The influence worker keeps pairs and written rows between recomputes; after an erasure it reads them again
    (kept ones name the id), and every score is what it was, the person's under the tombstone."""
    ledger, views = stores
    writer = FactWriter(ledger)
    record(writer, history(seed=11, count=200))
    follower(ledger, views).catch_up()
    kept = InfluenceView(views, ReciprocityQueries(views))
    kept.pairs.tenant_pairs_min = 0  # keeps every tenant's pairs, as it does a large tenant's
    kept.recompute("acme")
    before = {item.participant: item.score for item in kept.page("acme", 1000, None).items}
    erased = writer.erase("acme", PERSON)
    follower(ledger, views).catch_up()
    kept.recompute("acme")
    after = {item.participant: item.score for item in kept.page("acme", 1000, None).items}
    assert after == renamed(before, PERSON, tombstone(erased.token))
    afresh = InfluenceView(views, ReciprocityQueries(views)).recompute("acme")
    assert afresh["changed"] == 0  # what the kept worker wrote is what a fresh read computes


def test_an_influence_row_written_for_the_id_by_a_recompute_that_read_before_the_erasure_is_deleted(stores):
    """A recompute reads a snapshot, computes, then writes: one that read before an erasure's page and wrote after
    it puts the id's row back. The tenant is then still stale, and the next recompute deletes that row."""
    ledger, views = stores
    writer = FactWriter(ledger)
    record(writer, history(seed=13, count=60))
    project(ledger, views)
    stale = views.read(
        f"SELECT tenant, {influence_view.ITEM_COLUMNS}, changed_position FROM view_influence WHERE participant = ?",
        (PERSON,),
    )
    erased = writer.erase("acme", PERSON)
    follower(ledger, views).catch_up()
    with views.transaction() as cursor:  # what the late write leaves: the id's row, the tenant at its old position
        cursor.upsert("view_influence", influence_view.ROW_COLUMNS, ("tenant", "participant"), stale)
        cursor.execute("UPDATE view_influence_tenants SET position = ? WHERE tenant = 'acme'", (erased.position - 1,))
    influence = InfluenceView(views, ReciprocityQueries(views))
    assert influence.stale_tenants() == ["acme"]
    influence.recompute("acme")
    assert influence.participant("acme", PERSON) is None and cells_naming(views, PERSON, but=("view_erasures",)) == []
    assert influence.participant("acme", tombstone(erased.token)).score == stale[0][2]
