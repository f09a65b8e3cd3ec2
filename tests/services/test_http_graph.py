"""The graph, ties and upkeep routes (DESIGN section 8): answer shapes, GraphML, refused parameters."""

from __future__ import annotations

import io

import networkx
import pytest

from tests.helpers import acknowledgement, give, introduction, post_all, reversal
from tests.services.test_http_views import get

HISTORY = [
    give("g1", "ann", "bob", value="5", occurred_at="2026-01-01T00:00:00Z", context={"subject": "Python"}),
    give("g2", "bob", "ann", value="2", occurred_at="2026-02-01T00:00:00Z"),
    give("g3", "ann", "bob", value="1", occurred_at="2026-03-01T00:00:00Z"),
    give("g4", "cas", "ann", value="0.5", occurred_at="2026-06-01T00:00:00Z", context={"subject": "Rust"}),
    give("g5", "dan", "cas", value="9", occurred_at="2026-06-02T00:00:00Z"),
    acknowledgement("a1", "bob", "g1", occurred_at="2026-01-02T00:00:00Z"),
    introduction("i1", "cas", "ann", "bob", occurred_at="2026-01-03T00:00:00Z"),
    reversal("r1", "g5"),
]


async def test_the_graph_sums_live_gives_per_direction_heaviest_first(client):
    """Edges giver -> receiver over live gives, by value; nodes carry the overall view and influence."""
    position = await post_all(client, HISTORY)
    graph = await get(client, f"/v1/tenants/acme/graph?min_position={position}")
    assert graph["truncated"] is False and graph["position"] >= position
    assert [(e["from"], e["to"], e["count"], e["value"], e["acknowledged_count"]) for e in graph["edges"]] == [
        ("ann", "bob", 2, "6", 1),
        ("bob", "ann", 1, "2", 0),
        ("cas", "ann", 1, "0.5", 0),
    ]
    assert graph["edges"][0]["first_at"] == "2026-01-01T00:00:00.000000Z"
    assert graph["edges"][0]["last_at"] == "2026-03-01T00:00:00.000000Z"
    nodes = {n["participant"]: n for n in graph["nodes"]}
    assert set(nodes) == {"ann", "bob", "cas"}  # dan's only give was reversed
    assert nodes["ann"]["given"] == {"count": 2, "value": "6"} and nodes["ann"]["balance"] == "3.5"
    assert set(nodes["ann"]) == {"participant", "given", "received", "balance", "score", "rank"}


async def test_the_graph_takes_a_context_a_window_and_a_limit(client):
    position = await post_all(client, HISTORY)
    scoped = await get(client, f"/v1/tenants/acme/graph?context.subject=%20python&min_position={position}")
    assert [(e["from"], e["to"], e["value"]) for e in scoped["edges"]] == [("ann", "bob", "5")]
    assert [n["participant"] for n in scoped["nodes"]] == ["ann", "bob"]
    assert scoped["nodes"][0]["given"]["value"] == "6"  # the node's view is unfiltered
    window = await get(client, "/v1/tenants/acme/graph?since=2026-02-01T00:00:00Z&until=2026-06-01T00:00:00Z")
    assert [(e["from"], e["to"], e["value"]) for e in window["edges"]] == [("bob", "ann", "2"), ("ann", "bob", "1")]
    first = await get(client, "/v1/tenants/acme/graph?limit=1")
    assert first["truncated"] is True and len(first["edges"]) == 1
    assert [n["participant"] for n in first["nodes"]] == ["ann", "bob"]


async def test_graphml_is_the_same_graph(client):
    position = await post_all(client, HISTORY)
    response = await client.get(
        f"/v1/tenants/acme/graph?format=graphml&min_position={position}", headers=client.sender.read_headers()
    )
    assert response.status == 200 and response.content_type == "application/graphml+xml"
    parsed = networkx.read_graphml(io.BytesIO(await response.read()))
    as_json = await get(client, "/v1/tenants/acme/graph")
    assert sorted(parsed.nodes) == [n["participant"] for n in as_json["nodes"]]
    edges = {(e["from"], e["to"]): e for e in as_json["edges"]}
    assert set(parsed.edges) == set(edges)
    for (giver, receiver), data in parsed.edges.items():
        assert data == {k: edges[(giver, receiver)][k] for k in data}
    assert (parsed.graph["position"], parsed.graph["truncated"]) == (as_json["position"], False)


async def test_ties_list_counterparts_from_the_participants_side(client):
    position = await post_all(client, HISTORY)
    ties = await get(client, f"/v1/tenants/acme/participants/ann/ties?min_position={position}")
    assert [t["counterpart"] for t in ties["items"]] == ["bob", "cas"] and ties["next_cursor"] is None
    bob = ties["items"][0]
    assert bob == {
        "counterpart": "bob",
        "given": {"count": 2, "value": "6"},
        "received": {"count": 1, "value": "2"},
        "balance": "4",
        "reciprocity": 0.5,
        "first_at": "2026-01-01T00:00:00.000000Z",
        "last_at": "2026-03-01T00:00:00.000000Z",
        "introduced_by": ["cas"],
    }
    by_time = await get(client, "/v1/tenants/acme/participants/ann/ties?order=last_at&limit=1")
    assert [t["counterpart"] for t in by_time["items"]] == ["cas"]
    rest = await get(client, f"/v1/tenants/acme/participants/ann/ties?order=last_at&cursor={by_time['next_cursor']}")
    assert [t["counterpart"] for t in rest["items"]] == ["bob"] and rest["next_cursor"] is None
    dan = await get(client, "/v1/tenants/acme/participants/dan/ties")
    assert dan["items"] == []  # known, but his one give was reversed
    await get(client, "/v1/tenants/acme/participants/zed/ties", 404)


async def test_upkeep_lists_pending_thanks_and_dormant_ties_oldest_first(client):
    position = await post_all(client, HISTORY)
    upkeep = await get(client, f"/v1/tenants/acme/upkeep?min_position={position}")
    assert upkeep["as_of"] == "2026-06-01T00:00:00.000000Z"  # g5 was reversed: the latest live fact is g4
    assert [(i["kind"], i["participant"], i["counterpart"], i["since"], i["value"]) for i in upkeep["items"]] == [
        ("pending_thanks", "ann", "bob", "2026-02-01T00:00:00.000000Z", "2"),
        ("dormant_tie", "ann", "bob", "2026-03-01T00:00:00.000000Z", "8"),
        ("pending_thanks", "bob", "ann", "2026-03-01T00:00:00.000000Z", "1"),
    ]
    assert upkeep["items"][0]["event_id"] and upkeep["items"][1]["event_id"] is None
    first = await get(client, "/v1/tenants/acme/upkeep?limit=2")
    rest = await get(client, f"/v1/tenants/acme/upkeep?limit=2&cursor={first['next_cursor']}")
    assert first["items"] + rest["items"] == upkeep["items"] and rest["next_cursor"] is None
    early = await get(client, "/v1/tenants/acme/upkeep?as_of=2026-01-10T00:00:00Z")
    assert early["items"] == [] and early["as_of"] == "2026-01-10T00:00:00.000000Z"


@pytest.mark.parametrize(
    ("query", "path", "rule"),
    [
        ("graph?limit=0", "query.limit", "greater_than_equal"),
        ("graph?limit=5001", "query.limit", "less_than_equal"),
        ("graph?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", "query.until", "window_order"),
        ("graph?context.subject=x&context.location=y", "query.context.subject", "one_context_filter"),
        ("graph?context.activity=x&context.location=y", "query.context.activity", "one_context_filter"),
        ("graph?format=csv", "query.format", "literal_error"),
        ("graph?since=yesterday", "query.since", "datetime_parsing"),
        ("graph?until=0.5", "query.until", "datetime_parsing"),
        ("participants/ann/ties?order=name", "query.order", "literal_error"),
        ("participants/ann/ties?cursor=bm9wZQ", "query.cursor", "cursor"),
        ("participants/ann/ties?limit=1001", "query.limit", "less_than_equal"),
        ("upkeep?cursor=WzFd", "query.cursor", "cursor"),
        ("upkeep?as_of=2999-01-01T00:00:00Z", "query.as_of", "datetime_future"),
        ("upkeep?order=strength", "query.order", "extra_forbidden"),
    ],
)
async def test_bad_parameters_are_refused_naming_the_parameter_and_rule(client, query, path, rule):
    await post_all(client, [give("g1", "ann", "bob")])
    problem = await get(client, f"/v1/tenants/acme/{query}", 422)
    assert [(e["path"], e["rule"]) for e in problem["errors"]] == [(path, rule)]


async def test_a_parameter_given_twice_is_400(client):
    problem = await get(client, "/v1/tenants/acme/graph?limit=1&limit=2", 400)
    assert "limit" in problem["detail"]


async def test_equal_ties_and_edges_order_by_id_across_pages(client):
    """Equal strengths, times and values: ties by counterpart, edges by from then to, one per page."""
    at = "2026-01-01T00:00:00Z"
    people = ["eve", "Bob", "dan", "cas"]  # "Bob" sorts first by byte value
    position = await post_all(client, [give(f"g{n}", "ann", p, occurred_at=at) for n, p in enumerate(people)])
    for order in ("strength", "last_at"):
        seen, cursor = [], f"&min_position={position}"
        for _ in people:
            page = await get(client, f"/v1/tenants/acme/participants/ann/ties?order={order}&limit=1{cursor}")
            seen += [t["counterpart"] for t in page["items"]]
            cursor = f"&cursor={page['next_cursor']}" if page["next_cursor"] else ""
        assert (seen, cursor) == (sorted(people), ""), order
    graph = await get(client, f"/v1/tenants/acme/graph?limit=3&min_position={position}")
    assert [e["to"] for e in graph["edges"]] == sorted(people)[:3] and graph["truncated"] is True
