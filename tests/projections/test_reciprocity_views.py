"""The reciprocity views: built incrementally, rebuilt from zero, and recomputed by a simple reference,
all three agree; the tenant's books balance."""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import psycopg
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg.sql import SQL, Identifier

from contracts.webhook_bodies import read_webhook
from ledger.facts import ReceivedFact
from ledger.group_commit import FactWriter
from ledger.store import open_ledger
from projections import influence_view
from projections.follower import Follower
from projections.influence_pairs import PairCache
from projections.influence_view import InfluenceView, read_stored_rows
from projections.nats_bus import BUCKETS
from projections.queries import ReciprocityQueries
from projections.reciprocity import DDL, TABLES, VIEW, ReciprocityProjection
from projections.replay import replay
from projections.viewstore import ViewStore
from tests.helpers import acknowledgement, envelope, give, introduction, reversal, view_columns
from tests.reference import reference_views

PEOPLE = ["ann", "bob", "cas", "Dan", "eve"]  # "Dan" sorts before "ann" by byte value
TENANTS = ["acme", "zeta"]
SOURCES = ["crm", "chat"]
CONTEXTS = [
    None, None, {"subject": "Python"}, {"subject": " python "}, {"location": "Utrecht", "activity": "Meetup"},
    {"location": "Café"}, {"location": "cafe\u0301"},  # one key: NFC-normalised
]  # fmt: skip
VALUES = ["1", "2.5", "0.000001", "100", "7.25"]
START = datetime(2026, 1, 1, tzinfo=UTC)

people = st.lists(st.sampled_from(PEOPLE), min_size=3, max_size=3, unique=True)
when = st.integers(min_value=0, max_value=300).map(lambda d: (START + timedelta(days=d)).isoformat())
step = st.one_of(
    st.tuples(st.just("give"), people, st.sampled_from(VALUES), st.sampled_from(CONTEXTS), when),
    st.tuples(st.just("give"), people, st.sampled_from(VALUES), st.sampled_from(CONTEXTS), when),
    st.tuples(st.just("give_back"), st.integers(0, 10_000), st.sampled_from(VALUES), when),
    st.tuples(st.just("introduction"), people, st.sampled_from(CONTEXTS), when),
    st.tuples(st.just("acknowledgement"), st.integers(0, 10_000), st.booleans(), when),
    st.tuples(st.just("reversal"), st.integers(0, 10_000)),
    # Forgotten at its place in the history; later facts naming the same id are a new person with a new token.
    st.tuples(st.just("erasure"), st.sampled_from(PEOPLE)),
)
history = st.lists(st.tuples(st.sampled_from(TENANTS), st.sampled_from(SOURCES), step), min_size=5, max_size=80)


def to_fact(n: int, tenant: str, source: str, item: tuple, earlier: list[dict]) -> tuple[str, tuple]:
    """A fact that is mostly valid (acknowledged by the right person, reversed by its own source), so the
    histories exercise the views rather than the write side's refusals. Returns (sending source, fact)."""
    kind, *args = item
    fact_id = f"f{n}"
    if kind == "give":
        (giver, receiver, _), value, context, at = args
        return source, give(fact_id, giver, receiver, value=value, occurred_at=at, **_context(context))
    if kind == "introduction":
        (introducer, a, b), context, at = args
        return source, introduction(fact_id, introducer, a, b, occurred_at=at, **_context(context))
    candidates = [f for f in earlier if f["tenant"] == tenant]
    if not candidates:
        return source, give(fact_id, "ann", "bob")
    target = candidates[args[0] % len(candidates)]
    if kind == "give_back":  # reciprocity needs gives both ways between the same two people
        _, value, at = args
        if not target.get("giver"):
            return source, give(fact_id, "ann", "bob", value=value)
        return source, give(fact_id, target["helped"][0], target["giver"], value=value, occurred_at=at)
    if kind == "acknowledgement":
        _, right_person, at = args
        acknowledger = target["helped"][0] if right_person and target["helped"] else "dan"
        fact = acknowledgement(fact_id, acknowledger, target["id"], occurred_at=at)
        fact[1]["ref"]["source"] = target["source"]
        return source, fact
    return target["source"], reversal(fact_id, target["id"])


def _context(context: dict | None) -> dict:
    return {"context": context} if context else {}


@contextmanager
def fresh_store(base):
    """A store of its own for one hypothesis example: a new directory, or a new PostgreSQL schema."""
    run = uuid.uuid4().hex[:10]
    if not base.database_url:
        yield base.with_(data_dir=base.data_dir / run)
        return
    url, _, _ = base.database_url.partition("?")
    schema = f"test_views_{run}"
    try:
        yield base.with_(database_url=f"{url}?schema={schema}")
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))


def build(example, steps, chunks, page_size, after_chunk=lambda store: None):
    """Records the history in chunks of `chunks` steps through the real writer (an erasure by `FactWriter.erase`
    at its place), following the log after each chunk."""
    ledger = open_ledger(example.database_url, example.data_dir)
    writer = FactWriter(ledger)
    store = ViewStore(example.database_url, example.data_dir, (*DDL, *influence_view.DDL))
    projection = ReciprocityProjection(store)
    follower = Follower(ledger, projection, lambda: store.position(VIEW), page_facts_max=page_size)
    earlier: list[dict] = []
    items: list = []
    for n, (tenant, source, item) in enumerate(steps):
        if item[0] == "erasure":
            items.append((tenant, item[1]))
            continue
        sender, fact = to_fact(n, tenant, source, item, earlier)
        data = fact[1]
        helped = [data["receiver"]] if "receiver" in data else data.get("introduced", [])
        earlier.append(
            {"tenant": tenant, "source": sender, "id": data["id"], "helped": helped, "giver": data.get("giver")}
        )
        webhook = read_webhook(json.dumps(envelope(fact)).encode())
        items.append(ReceivedFact.from_webhook(tenant, sender, webhook, datetime.now(UTC)))
    for start in range(0, len(items), chunks):
        facts: list[ReceivedFact] = []
        for item in items[start : start + chunks]:
            if isinstance(item, ReceivedFact):
                facts.append(item)
                continue
            writer.commit(facts)
            facts = []
            writer.erase(*item)  # None when the id names nobody (never named, or erased already)
        writer.commit(facts)
        follower.catch_up()  # incremental: the view follows the writes as they land
        after_chunk(store)
    return ledger, store, projection, follower


def snapshot(store: ViewStore) -> tuple[dict, dict]:
    queries = ReciprocityQueries(store)
    balances = {
        (t, s, p): queries.balance(t, p, s).model_dump(exclude={"participant", "position"})
        for t, s, p in store.read("SELECT tenant, scope, participant FROM view_participants")
    }
    pairs = {}
    for t, a, b in store.read("SELECT tenant, a, b FROM view_pairs WHERE scope = ''"):
        answer = queries.pair(t, a, b).model_dump(exclude={"a", "b", "position"})
        pairs[(t, a, b)] = answer
    return balances, pairs


def view_rows(store: ViewStore) -> dict[str, list[tuple]]:
    """Every row of every reciprocity table and of view_names, without changed_position (which page changed a
    row depends on how the log was paged; a replay writes every row at its last position)."""
    rows = {}
    for table in (*TABLES, "view_names"):
        columns = ["tenant", "changed_position"] if table == "view_tenants" else view_columns(store, table)
        rows[table] = sorted(map(tuple, store.read(f"SELECT {', '.join(columns)} FROM {table}")))
    return rows


def assert_no_erased_id(store: ViewStore, ledger, stored) -> None:
    """An erased person's id is nowhere in the views but where a later fact named the id anew (a new person),
    and the KV writer is told to purge it from every bucket; their tombstone is wherever the views had them."""
    logged = ledger.logged(stored)
    erased = {(f["tenant"], f["data"]["token"]) for f in logged if f["type"] == "participant.erased"}
    for tenant, token in erased:
        kv = store.read("SELECT bucket, participant FROM view_erasures WHERE tenant = ? AND token = ?", (tenant, token))
        shown = store.read("SELECT participant FROM view_names WHERE tenant = ? AND token = ?", (tenant, token))
        assert shown == [(f"erased-{token}",)]
        if not kv:
            continue  # the views only ever knew the tombstone
        assert sorted(bucket for bucket, _ in kv) == sorted(BUCKETS) and len({p for _, p in kv}) == 1
        person = kv[0][1]
        named_anew = store.read("SELECT 1 FROM view_names WHERE tenant = ? AND participant = ?", (tenant, person))
        if not named_anew:
            for table in ("view_participants", "view_gives", "view_introductions", "view_acknowledgements"):
                columns = view_columns(store, table)
                rows = store.read(f"SELECT {', '.join(columns)} FROM {table} WHERE tenant = ?", (tenant,))
                assert not [row for row in rows if person in row], (table, person)
            assert store.read(
                "SELECT COUNT(*) FROM view_participants WHERE tenant = ? AND participant = ?",
                (tenant, f"erased-{token}"),
            ) != [(0,)]


def assert_books_balance(store: ViewStore) -> None:
    """Conservation: within every tenant and scope, everything given was received by someone."""
    rows = store.read(
        "SELECT tenant, scope, SUM(given_micro), SUM(received_micro), SUM(balance_micro), "
        "SUM(given_count), SUM(received_count) FROM view_participants GROUP BY tenant, scope"
    )
    for tenant, scope, given_sum, received_sum, balance_sum, given_count, received_count in rows:
        assert (given_sum, given_count) == (received_sum, received_count), (tenant, scope)
        assert balance_sum == 0, (tenant, scope)


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=history, chunks=st.integers(1, 7), page_size=st.integers(1, 9), rebuild_page=st.integers(1, 50))
def test_incremental_views_equal_a_rebuild_and_the_reference(settings, steps, chunks, page_size, rebuild_page):
    """Random histories of gives, introductions, acknowledgements and reversals over two tenants."""
    with fresh_store(settings) as example:
        check_views(example, steps, chunks, page_size, rebuild_page)


def check_views(example, steps, chunks, page_size, rebuild_page):
    ledger, store, projection, _follower = build(example, steps, chunks, page_size)
    try:
        incremental = snapshot(store)
        assert_books_balance(store)

        stored = sorted((f for t in TENANTS for f in ledger.tenant_log(t, 0, 10_000)), key=lambda f: f.position)
        balances, pairs = reference_views(ledger.logged(stored))  # as the log shows them: ids and tombstones
        assert_no_erased_id(store, ledger, stored)
        assert set(incremental[0]) == set(balances)
        for key, expected in balances.items():
            actual = incremental[0][key]
            assert {k: actual[k] for k in expected} == expected, key
        assert set(incremental[1]) >= set(pairs)
        for key, expected in pairs.items():
            actual = incremental[1][key]
            assert {k: actual[k] for k in expected} == expected, key

        followed_rows = view_rows(store)
        store.reset(VIEW, TABLES)
        Follower(ledger, projection, lambda: store.position(VIEW), page_facts_max=rebuild_page).catch_up()
        assert snapshot(store) == incremental

        store.reset(VIEW, TABLES)
        assert replay(ledger, store) == len(stored)
        assert store.position(VIEW) == stored[-1].position
        assert view_rows(store) == followed_rows  # every column, the decayed weights bit for bit
        # Each row carries the position of the last fact about it, so the KV writer's windows stay small.
        changed = store.read(
            "SELECT changed_position FROM view_participants UNION SELECT changed_position FROM view_pairs"
        )
        assert all(0 < position <= stored[-1].position for (position,) in changed)
    finally:
        store.close()
        ledger.close()


@hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=history, chunks=st.integers(1, 9))
def test_influence_from_kept_pairs_equals_influence_read_afresh(settings, steps, chunks):
    """The influence worker keeps large tenants' pairs and written rows between recomputes and then reads only
    the pairs changed since. Here it keeps every tenant, and reads a tenant's pairs two rows at a time the
    first time and two positions at a time later; after each chunk of facts, the rows it kept are the stored
    rows, and a recompute that reads everything afresh (in one go) finds nothing to change."""
    kept: list[InfluenceView] = []

    def recompute(store):
        if not kept:
            kept.append(InfluenceView(store, ReciprocityQueries(store)))
            kept[0].pairs = PairCache(tenant_pairs_min=0, read_rows_max=2)
        for tenant in InfluenceView(store, ReciprocityQueries(store)).stale_tenants():
            kept[0].recompute(tenant)
            assert tenant in kept[0].pairs
            with store.snapshot() as cursor:  # what it kept of the written rows is what is stored
                assert kept[0].kept_rows(tenant) == read_stored_rows(cursor, tenant)
            afresh = InfluenceView(store, ReciprocityQueries(store)).recompute(tenant)
            assert afresh["changed"] == 0, tenant

    with fresh_store(settings) as example:
        ledger, store, _projection, _follower = build(example, steps, chunks, 9, after_chunk=recompute)
        store.close()
        ledger.close()
