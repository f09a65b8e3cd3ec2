"""The graph, ties and upkeep read from the views equal a simple reference computed from the log, on random
histories over two tenants (erasures included), for random filters, windows, limits and page sizes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from contracts.types import context_key, utc_text
from contracts.view_answers import Graph
from ledger.schema import SchemaError, SchemaMode
from projections.graph import GraphQueries
from projections.influence_view import InfluenceView
from projections.queries import ReciprocityQueries
from projections.runtime import open_view_store
from projections.viewstore import ADDED_IN_VERSION_3
from tests.graph_reference import reference_graph, reference_ties, reference_upkeep
from tests.projections.test_reciprocity_views import START, TENANTS, build, fresh_store, history
from tests.reference import reference_views

FILTERS = [None, ("subject", "PYTHON "), ("location", "café"), ("activity", "meetup"), ("location", "nowhere")]
moment = st.one_of(st.none(), st.integers(0, 300).map(lambda d: utc_text(START + timedelta(days=d, hours=d % 5))))
queries = st.fixed_dictionaries(
    {
        "context": st.sampled_from(FILTERS),
        "window": st.tuples(moment, moment).map(lambda w: tuple(sorted(w)) if None not in w else w),
        "limit": st.integers(1, 8),
        "page": st.integers(1, 4),
        "as_of": moment,
    }
)


@hypothesis_settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=history, chunks=st.integers(1, 7), asked=queries)
def test_graph_ties_and_upkeep_equal_the_reference(settings, steps, chunks, asked):
    with fresh_store(settings) as example:
        ledger, store, _projection, _follower = build(example, steps, chunks, 9)
        try:
            stored = sorted((f for t in TENANTS for f in ledger.tenant_log(t, 0, 10_000)), key=lambda f: f.position)
            log = ledger.logged(stored)
            influence = InfluenceView(store, ReciprocityQueries(store))
            for tenant in influence.stale_tenants():
                influence.recompute(tenant)
            views = GraphQueries(store)
            for tenant in TENANTS:
                check_graph(views, influence, log, tenant, asked)
                check_ties(views, log, tenant, asked["page"])
                check_upkeep(views, log, tenant, asked["as_of"], asked["page"])
        finally:
            store.close()
            ledger.close()


def check_graph(views: GraphQueries, influence: InfluenceView, log: list[dict], tenant: str, asked: dict) -> None:
    context, (since, until), limit = asked["context"], asked["window"], asked["limit"]
    scope = f"{context[0]}={context_key(context[1])}" if context else ""
    answer = views.graph(tenant, scope, since, until, limit)
    assert Graph.model_validate_json(answer.model_dump_json()) == answer  # built unvalidated, it keeps the contract
    graph = answer.model_dump(mode="json", by_alias=True)
    balances, _ = reference_views(log)
    nodes, edges, truncated = reference_graph(log, tenant, context, since, until, limit, balances)
    assert (graph["edges"], graph["truncated"]) == (edges, truncated), (tenant, asked)
    assert [{k: n[k] for k in ("participant", "given", "received", "balance")} for n in graph["nodes"]] == nodes
    for node in graph["nodes"]:  # influence as its own answer gives it (its maths have their own tests)
        scored = influence.participant(tenant, node["participant"])
        assert (node["score"], node["rank"]) == ((scored.score, scored.rank) if scored else (None, None))


def check_ties(views: GraphQueries, log: list[dict], tenant: str, page: int) -> None:
    people = {p for (t, scope, p) in reference_views(log)[0] if t == tenant and not scope}
    for participant in sorted(people):
        for order in ("strength", "last_at"):
            listed = collect(lambda cursor: views.ties(tenant, participant, order, page, cursor))  # noqa: B023
            assert listed == reference_ties(log, tenant, participant, order), (tenant, participant, order)
    assert views.ties(tenant, "nobody", "strength", page, None) is None


def check_upkeep(views: GraphQueries, log: list[dict], tenant: str, as_of: str | None, page: int) -> None:
    expected_as_of, expected = reference_upkeep(log, tenant, as_of)
    first = views.upkeep(tenant, as_of, page, None)
    assert first.as_of == expected_as_of
    listed = collect(lambda cursor: views.upkeep(tenant, as_of, page, cursor))
    assert listed == expected, (tenant, as_of)


def collect(read_page) -> list[dict]:
    """Every item of a paged list, page by page through its cursors."""
    items, cursor = [], None
    while True:
        answer = read_page(cursor)
        items += answer.model_dump(mode="json")["items"]
        if answer.next_cursor is None:
            return items
        cursor = answer.next_cursor


def test_a_version_2_views_schema_gets_the_graph_indexes_from_migrate_and_keeps_its_rows(settings):
    """Version 3 adds the pairs' indexes by each direction's value: a version-2 schema is refused at start,
    and `migrate` adds them to the rows as they are (nothing to build again)."""
    views = open_view_store(settings.database_url, settings.data_dir)
    with views.transaction() as cursor:
        for index in ADDED_IN_VERSION_3:
            cursor.execute(f"DROP INDEX {index}")
        cursor.execute("UPDATE schema_versions SET version = 2 WHERE part = 'views'")
        cursor.execute(
            "INSERT INTO view_pairs (tenant, scope, a, b, ab_count, ab_micro, ba_count, ba_micro, strength_micro,"
            " first_at, last_at, decayed_ab, decayed_ba, changed_position)"
            " VALUES ('acme', '', 'ann', 'bob', 1, 5000000, 0, 0, 5000000, 't', 't', 0.0, 0.0, 1)"
        )
        cursor.execute(
            "INSERT INTO view_gives VALUES ('acme', 'e1', 1, 'g1', 'ann', 'bob', 5000000, 't', NULL, NULL, NULL, 1, 0)"
        )
    views.close()
    with pytest.raises(SchemaError, match=r"views schema is version 2, this release needs version 3"):
        open_view_store(settings.database_url, settings.data_dir)
    views = open_view_store(settings.database_url, settings.data_dir, schema_mode=SchemaMode.MIGRATE)
    try:
        assert views.schema_found == 2 and index_names(views) >= set(ADDED_IN_VERSION_3)
        graph = GraphQueries(views).graph("acme", "", None, None, 10)
        assert [(e.from_, e.to, e.value) for e in graph.edges] == [("ann", "bob", "5")]
    finally:
        views.close()


def index_names(views) -> set[str]:
    if views.postgres:
        return {r[0] for r in views.read("SELECT indexname FROM pg_indexes WHERE tablename = 'view_pairs'")}
    return {r[0] for r in views.read("SELECT name FROM sqlite_master WHERE type = 'index'")}
