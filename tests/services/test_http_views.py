"""The query API over the views: answer shapes, reading one's own write, paging, keys and tenants."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import make_sender
from tests.helpers import acknowledgement, give, introduction, post_all, reversal

VIEW_ROUTES = [
    "/v1/tenants/{t}/participants/ann/balance",
    "/v1/tenants/{t}/pairs/ann/bob",
    "/v1/tenants/{t}/balances",
    "/v1/tenants/{t}/influence",
    "/v1/tenants/{t}/participants/ann/influence",
    "/v1/tenants/{t}/maintenance?participant=ann",
    "/v1/tenants/{t}/graph",
    "/v1/tenants/{t}/graph?format=graphml",
    "/v1/tenants/{t}/participants/ann/ties",
    "/v1/tenants/{t}/upkeep",
]


async def get(client, path: str, status: int = 200):
    response = await client.get(path, headers=client.sender.read_headers())
    body = await response.json()
    assert response.status == status, body
    return body


async def test_a_client_reads_its_own_write_with_min_position(client):
    position = await post_all(client, [give("g1", "ann", "bob", value="5", context={"subject": "Python"})])
    answer = await get(client, f"/v1/tenants/acme/participants/ann/balance?min_position={position}")
    assert answer["position"] >= position
    assert answer["given"] == {"count": 1, "value": "5"} and answer["balance"] == "5"
    assert answer["participant"] == "ann" and answer["reciprocity"] == 0.0


async def test_balance_answers_the_design_shape(client):
    position = await post_all(
        client,
        [
            give("g1", "ann", "bob", value="5", occurred_at="2026-03-01T10:00:00+02:00"),
            give("g2", "bob", "ann", value="2"),
            acknowledgement("a1", "bob", "g1"),
            introduction("i1", "cas", "ann", "bob"),
            acknowledgement("a2", "ann", "i1"),
        ],
    )
    ann = await get(client, f"/v1/tenants/acme/participants/ann/balance?min_position={position}")
    assert ann == {
        "participant": "ann",
        "given": {"count": 1, "value": "5"},
        "received": {"count": 1, "value": "2"},
        "balance": "3",
        "introductions": {"made": 0, "received": 1},
        "acknowledgements": {"given": 1, "received": 1},
        "unacknowledged": {"count": 1, "value": "2", "oldest_at": ann["unacknowledged"]["oldest_at"]},
        "counterparts": 1,
        "reciprocity": 0.4,
        "position": ann["position"],
    }
    assert ann["unacknowledged"]["oldest_at"].endswith("Z")
    pair = await get(client, f"/v1/tenants/acme/pairs/bob/ann?min_position={position}")
    assert (pair["a"], pair["b"], pair["balance"], pair["introduced_by"]) == ("ann", "bob", "3", ["cas"])
    assert pair["a_to_b"] == {"count": 1, "value": "5"} and pair["reciprocity"] == pytest.approx(1 - 3 / 7, abs=1e-6)
    assert pair["first_at"] == "2026-03-01T08:00:00.000000Z"


async def test_reversals_stop_counting_and_participants_stay(client):
    position = await post_all(client, [give("g1", "ann", "dan", value="4"), reversal("r1", "g1")])
    dan = await get(client, f"/v1/tenants/acme/participants/dan/balance?min_position={position}")
    assert dan["received"] == {"count": 0, "value": "0"} and dan["counterparts"] == 0


async def test_balances_page_in_order_with_a_cursor_and_a_context_filter(client):
    facts = [give(f"g{n}", "ann", person, value=str(n + 1)) for n, person in enumerate(["bob", "cas", "dan"])]
    facts.append(give("g9", "eve", "ann", value="1", context={"subject": "Python"}))
    position = await post_all(client, facts)
    first = await get(client, f"/v1/tenants/acme/balances?limit=2&order=received&min_position={position}")
    assert [i["participant"] for i in first["items"]] == ["dan", "cas"]
    rest = await get(client, f"/v1/tenants/acme/balances?limit=2&order=received&cursor={first['next_cursor']}")
    assert [i["participant"] for i in rest["items"]] == ["ann", "bob"]  # equal received: by id
    scoped = await get(client, "/v1/tenants/acme/balances?context.subject=%20PYTHON")
    assert [(i["participant"], i["balance"]) for i in scoped["items"]] == [("eve", "1"), ("ann", "-1")]
    await get(client, "/v1/tenants/acme/balances?context.subject=x&context.location=y", 422)
    bad = await get(client, "/v1/tenants/acme/balances?order=name&limit=5000", 422)
    assert {e["path"] for e in bad["errors"]} == {"query.order", "query.limit"}


async def test_maintenance_finds_dormant_ties_and_pending_thanks(client):
    position = await post_all(
        client,
        [
            give("g1", "ann", "bob", value="50", occurred_at="2026-01-01T00:00:00Z"),
            give("g2", "cas", "dan", value="1", occurred_at="2026-06-01T00:00:00Z"),
            give("g3", "eve", "cas", value="1", occurred_at="2026-06-10T00:00:00Z"),
        ],
    )
    bob = await get(client, f"/v1/tenants/acme/maintenance?participant=bob&min_position={position}")
    assert bob["as_of"] == "2026-06-10T00:00:00.000000Z"
    assert bob["dormant_ties"] == [{"counterpart": "ann", "last_at": "2026-01-01T00:00:00.000000Z", "strength": "50"}]
    assert [p["external_id"] for p in bob["pending_thanks"]] == ["g1"]
    early = await get(client, "/v1/tenants/acme/maintenance?participant=bob&as_of=2026-01-10T00:00:00Z")
    assert early["dormant_ties"] == [] and early["pending_thanks"] == []
    await get(client, "/v1/tenants/acme/maintenance", 422)


async def test_influence_is_computed_in_the_background_with_explanations(client):
    position = await post_all(
        client,
        [give("g1", "ann", "bob", value="5"), give("g2", "cas", "bob", value="5"), acknowledgement("a1", "bob", "g1")],
    )
    for _ in range(100):  # recomputed at most once a second, never on the request path
        response = await client.get("/v1/tenants/acme/influence", headers=client.sender.read_headers())
        page = await response.json()
        if page["position"] >= position:
            break
        await asyncio.sleep(0.1)
    scores = {item["participant"]: item for item in page["items"]}
    assert page["items"][0]["participant"] == "ann" and page["items"][0]["rank"] == 1
    assert sum(item["score"] for item in page["items"]) == pytest.approx(100, abs=1e-5)
    # bob endorses both who helped him; the acknowledged give weighs double.
    (from_bob,) = scores["ann"]["contributions"]
    assert from_bob["from"] == "bob" and len(from_bob["facts"]) == 1
    assert from_bob["weight"] == pytest.approx(2 * scores["cas"]["contributions"][0]["weight"], rel=1e-5)
    ann = await get(client, f"/v1/tenants/acme/participants/ann/influence?min_position={position}")
    assert ann["rank"] == 1 and ann["position"] >= position


async def test_min_position_not_reached_in_five_seconds_is_503(client):
    response = await client.get(
        "/v1/tenants/acme/participants/ann/balance?min_position=999999", headers=client.sender.read_headers()
    )
    assert response.status == 503
    body = await response.json()
    assert body["retryable"] is True and response.headers["Retry-After"]


async def test_unknown_participants_and_pairs_are_404(client):
    position = await post_all(client, [give("g1", "ann", "bob")])
    await get(client, f"/v1/tenants/acme/participants/zed/balance?min_position={position}", 404)
    await get(client, "/v1/tenants/acme/pairs/ann/zed", 404)
    await get(client, "/v1/tenants/acme/participants/bad.id/balance", 422)


@pytest.mark.parametrize("route", VIEW_ROUTES)
async def test_every_view_route_needs_a_key_and_hides_other_tenants(client, settings, route):
    await post_all(client, [give("g1", "ann", "bob")])
    other = make_sender(settings, "zeta", "chat")
    await client.components.registry.refresh()
    assert (await client.get(route.format(t="acme"))).status == 401
    response = await client.get(route.format(t="acme"), headers=other.read_headers())
    assert response.status == 404, await response.text()


async def test_metrics_report_view_lag_and_query_latency(client):
    position = await post_all(client, [give("g1", "ann", "bob")])
    await get(client, f"/v1/tenants/acme/participants/ann/balance?min_position={position}")
    text = await (await client.get("/metrics")).text()
    assert 'reciprocity_view_lag_events{view="reciprocity"} 0.0' in text
    route = "/v1/tenants/{tenant}/participants/{participant}/balance"
    assert f'reciprocity_query_duration_seconds_count{{method="GET",route="{route}",status="200"}} 1.0' in text
    ready = await (await client.get("/readyz")).json()
    assert ready["views"]["reciprocity"]["events"] == 0


async def test_a_cursor_this_api_did_not_hand_out_is_422(client):
    for route in ("balances", "influence", "upkeep", "participants/ann/ties"):
        response = await client.get(f"/v1/tenants/acme/{route}?cursor=bm9wZQ", headers=client.sender.read_headers())
        assert response.status == 422 and (await response.json())["errors"][0]["path"] == "query.cursor"


async def test_a_keep_alive_connection_is_closed_after_its_request_budget(client, monkeypatch):
    """After REQUESTS_PER_CONNECTION_MAX requests the answer says `Connection: close` and the client connects
    again, so serve's HTTP processes can take over each other's connections (see the middleware)."""
    from services.http import middleware

    monkeypatch.setattr(middleware, "REQUESTS_PER_CONNECTION_MAX", 3)
    answers = []
    for _ in range(6):
        async with client.get("/healthz") as response:
            assert response.status == 200
            answers.append(response.headers.get("Connection", "keep-alive").lower())
    assert answers == ["keep-alive", "keep-alive", "close"] * 2  # a new connection counts from 1 again
