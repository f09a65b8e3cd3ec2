"""The ordered log of a tenant's facts over HTTP: keys, tenant isolation, paging."""

from __future__ import annotations

from tests.conftest import make_sender
from tests.helpers import give, reversal


async def test_the_log_lists_a_tenants_facts_in_order_with_their_data(client):
    for n in range(3):
        await client.sender.post(client, give(f"g{n}", "ann", "bob", value="2.50", context={"subject": "Python"}))
    await client.sender.post(client, reversal("r1", "g1"))
    response = await client.get("/v1/tenants/acme/events", headers=client.sender.read_headers())
    assert response.status == 200
    page = await response.json()
    events = page["events"]
    assert [e["external_id"] for e in events] == ["g0", "g1", "g2", "r1"]
    assert [e["position"] for e in events] == sorted(e["position"] for e in events)
    assert page["next_after"] == events[-1]["position"]
    first = events[0]
    assert set(first) == {
        "event_id",
        "tenant",
        "source",
        "external_id",
        "type",
        "position",
        "occurred_at",
        "recorded_at",
        "data",
    }
    assert first["data"]["value"] == "2.5" and first["data"]["context"] == {"subject": "Python"}
    assert first["source"] == "crm" and first["type"] == "give.recorded"


async def test_paging_with_after_and_limit(client):
    for n in range(5):
        await client.sender.post(client, give(f"g{n}", "ann", "bob"))
    headers = client.sender.read_headers()
    first = await (await client.get("/v1/tenants/acme/events?limit=2", headers=headers)).json()
    rest = await (await client.get(f"/v1/tenants/acme/events?after={first['next_after']}", headers=headers)).json()
    end = await (await client.get(f"/v1/tenants/acme/events?after={rest['next_after']}", headers=headers)).json()
    assert [e["external_id"] for e in first["events"]] == ["g0", "g1"]
    assert [e["external_id"] for e in rest["events"]] == ["g2", "g3", "g4"]
    assert end == {"events": [], "next_after": rest["next_after"]}


async def test_without_a_valid_key_the_log_is_401(client):
    assert (await client.get("/v1/tenants/acme/events")).status == 401
    response = await client.get("/v1/tenants/acme/events", headers={"Authorization": "Bearer rk_nonsense"})
    assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_another_tenants_key_never_sees_this_tenants_events(client, settings):
    await client.sender.post(client, give("g1", "ann", "bob"))
    other = make_sender(settings, "zeta", "chat")
    await client.components.registry.refresh()
    response = await client.get("/v1/tenants/acme/events", headers=other.read_headers())
    assert response.status == 404
    own = await client.get("/v1/tenants/zeta/events", headers=other.read_headers())
    assert (await own.json())["events"] == []


async def test_bad_paging_parameters_are_422_naming_them(client):
    headers = client.sender.read_headers()
    for query, name in (("limit=0", "query.limit"), ("limit=1001", "query.limit"), ("after=-1", "query.after")):
        response = await client.get(f"/v1/tenants/acme/events?{query}", headers=headers)
        assert response.status == 422
        assert (await response.json())["errors"][0]["path"] == name


async def test_health_and_readiness(client):
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    body = await ready.json()
    assert body["status"] == "ready" and body["store"] == "ok" and body["ingest"] == "running"


async def test_unknown_routes_answer_problem_json(client):
    response = await client.get("/v1/nothing")
    assert response.status == 404 and response.content_type == "application/problem+json"


async def test_one_fact_by_its_event_id_is_as_the_log_shows_it(client):
    """GET .../events/{event_id} answers the fact exactly as the log lists it (what the web UI links to)."""
    await client.sender.post(client, give("g1", "ann", "bob", value="2.50"))
    await client.sender.post(client, reversal("r1", "g1"))
    headers = client.sender.read_headers()
    logged = (await (await client.get("/v1/tenants/acme/events", headers=headers)).json())["events"]
    for event in logged:
        response = await client.get(f"/v1/tenants/acme/events/{event['event_id']}", headers=headers)
        assert response.status == 200
        assert await response.json() == event


async def test_a_fact_of_another_tenant_or_none_is_404_and_a_bad_id_422(client, settings):
    """Another tenant's fact is 404 like an unknown id; a path that is no UUID is 422 naming path.event_id."""
    other = make_sender(settings, "other", "crm")
    await other.post(client, give("g1", "cat", "dan"))
    theirs = (await (await client.get("/v1/tenants/other/events", headers=other.read_headers())).json())["events"][0]
    headers = client.sender.read_headers()
    for unknown in (theirs["event_id"], "00000000-0000-0000-0000-000000000000"):
        response = await client.get(f"/v1/tenants/acme/events/{unknown}", headers=headers)
        assert response.status == 404
    response = await client.get("/v1/tenants/acme/events/not-a-uuid", headers=headers)
    assert response.status == 422
    assert (await response.json())["errors"][0]["path"] == "path.event_id"
    assert (await client.get(f"/v1/tenants/acme/events/{theirs['event_id']}")).status == 401
