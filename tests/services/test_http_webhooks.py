"""Webhooks over real HTTP into the real store: every status code of DESIGN section 3."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from services.bootstrap import open_registry
from tests.helpers import Sender, acknowledgement, envelope, give, introduction, problem_of, reversal


async def test_a_new_fact_is_201_and_the_same_fact_again_is_200_duplicate(client):
    first = await client.sender.post(client, give("g1", "ann", "bob"))
    assert first.status == 201
    recorded = await first.json()
    again = await client.sender.post(client, give("g1", "ann", "bob"))
    assert again.status == 200
    assert await again.json() == {**recorded, "status": "duplicate"}
    assert recorded["status"] == "recorded" and recorded["position"] >= 1


async def test_malformed_json_is_400(client):
    body = b'{"type": "give.recorded", '
    response = await client.post(client.sender.path, data=body, headers=client.sender.headers(body))
    await problem_of(response, 400)


@pytest.mark.parametrize("tamper", ["signature", "stale", "missing", "other-secret"])
async def test_unproven_requests_are_401_and_record_nothing(client, tamper):
    body = json.dumps(envelope(give("g1", "ann", "bob"))).encode()
    headers = client.sender.headers(body)
    if tamper == "signature":
        headers["webhook-signature"] = headers["webhook-signature"][:-4] + "AAA="
    elif tamper == "stale":
        headers = client.sender.headers(body, timestamp=int(time.time()) - 301)
    elif tamper == "missing":
        del headers["webhook-signature"]
    else:
        headers = client.sender.headers(body, secret="whsec_" + "A" * 43 + "=")
    await problem_of(await client.post(client.sender.path, data=body, headers=headers), 401)
    log = await client.get("/v1/tenants/acme/events", headers=client.sender.read_headers())
    assert (await log.json())["events"] == []


@pytest.mark.parametrize("path", ["/v1/tenants/nobody/webhooks/crm", "/v1/tenants/acme/webhooks/nothing"])
async def test_an_unknown_tenant_or_source_is_404(client, path):
    body = json.dumps(envelope(give("g1", "ann", "bob"))).encode()
    await problem_of(await client.post(path, data=body, headers=client.sender.headers(body)), 404)


async def test_a_conflicting_fact_and_an_unknown_ref_are_409(client):
    await client.sender.post(client, give("g1", "ann", "bob"))
    conflict = await problem_of(await client.sender.post(client, give("g1", "ann", "cas")), 409)
    assert conflict["retryable"] is False
    unknown = await problem_of(await client.sender.post(client, acknowledgement("a1", "bob", "g404")), 409)
    assert unknown["retryable"] is True and unknown["errors"][0]["path"] == "data.ref"


async def test_a_body_over_the_limit_is_413_before_it_is_read(client):
    limit = client.components.settings.body_bytes_max
    body = b"{" + b" " * limit + b"}"
    response = await client.post(client.sender.path, data=body, headers=client.sender.headers(body))
    await problem_of(response, 413)


async def _chunks(body: bytes, size: int, pause_s: float = 0.0):
    for start in range(0, len(body), size):
        yield body[start : start + size]
        await asyncio.sleep(pause_s)


@pytest.mark.parametrize(("chunk", "pause_s"), [(16, 0.005), (64 * 1024, 0.0)])
async def test_a_chunked_body_over_the_limit_is_413_whether_or_not_it_arrived_whole(
    client, monkeypatch, chunk, pause_s
):
    """Without a Content-Length the size is known only as the body arrives: in pieces, or all at once with
    the headers (a small limit, so that the whole body fits in what the server has read by then)."""
    small = client.components.settings.model_copy(update={"body_bytes_max": 100})
    monkeypatch.setattr(client.components, "settings", small)
    body = json.dumps(envelope(give("g1", "ann", "bob", note="x" * 100))).encode()
    response = await client.post(
        client.sender.path, data=_chunks(body, chunk, pause_s), headers=client.sender.headers(body)
    )
    await problem_of(response, 413)
    log = await client.get("/v1/tenants/acme/events", headers=client.sender.read_headers())
    assert (await log.json())["events"] == []


async def test_a_chunked_body_within_the_limit_is_read_whole(client):
    body = json.dumps(envelope(give("g1", "ann", "bob"))).encode()
    response = await client.post(client.sender.path, data=_chunks(body, 7), headers=client.sender.headers(body))
    assert response.status == 201, await response.text()


async def test_a_body_that_is_not_json_is_415(client):
    body = b"giver=ann&receiver=bob"
    headers = {**client.sender.headers(body), "Content-Type": "application/x-www-form-urlencoded"}
    await problem_of(await client.post(client.sender.path, data=body, headers=headers), 415)


@pytest.mark.parametrize(
    ("fact", "path", "rule"),
    [
        (give("g1", "ann", "ann"), "data.receiver", "giver_is_not_receiver"),
        (give("g1", "ann", "b.b"), "data.receiver", "string_pattern_mismatch"),
        (give("g1", "ann", "bob", value="0"), "data.value", "greater_than"),
        (give("g1", "ann", "bob", value="1000000.5"), "data.value", "less_than_equal"),
        (give("g1", "ann", "bob", value="1.0000001"), "data.value", "decimal_max_places"),
        (give("g1", "ann", "bob", kind="money"), "data.kind", "literal_error"),
        (give("g1", "ann", "bob", note="x" * 2001), "data.note", "string_too_long"),
        (give("g1", "ann", "bob", context={"location": "   "}), "data.context.location", "context_length"),
        (give("g1", "ann", "bob", occurred_at="2026-01-01T10:00:00"), "data.occurred_at", "timezone_aware"),
        (give("g1", "ann", "bob", mood="happy"), "data.mood", "extra_forbidden"),
        (give("g" * 257, "ann", "bob"), "data.id", "string_pattern_mismatch"),
        (introduction("i1", "ann", "bob", "bob"), "data.introduced", "introduced_differ"),
        (introduction("i1", "ann", "ann", "bob"), "data.introducer", "introducer_not_introduced"),
        (("give.made", {"id": "x"}), "type", "union_tag_invalid"),
    ],
)
async def test_rule_and_schema_violations_are_422_naming_path_and_rule(client, fact, path, rule):
    problem = await problem_of(await client.sender.post(client, fact), 422)
    assert {"path": path, "rule": rule} in [{"path": e["path"], "rule": e["rule"]} for e in problem["errors"]]


async def test_a_source_over_its_rate_limit_gets_429_with_retry_after(client, settings):
    registry = open_registry(settings)
    secret = registry.add_source("acme", "limited", rate_limit_per_s=2)
    registry.db.close()
    await client.components.registry.refresh()
    limited = Sender("acme", "limited", secret, client.sender.read_key)
    answers = [await limited.post(client, give(f"g{n}", "ann", "bob")) for n in range(3)]
    assert [a.status for a in answers[:2]] == [201, 201]
    limited = await problem_of(answers[2], 429)
    assert limited["retryable"] is True and int(answers[2].headers["Retry-After"]) >= 1


async def test_a_batch_answers_each_item_in_order_and_a_bad_item_blocks_nothing(client):
    await client.sender.post(client, give("g1", "ann", "bob"))
    response = await client.sender.post_batch(
        client,
        [
            give("g1", "ann", "bob"),  # duplicate
            give("g2", "bob", "cas"),  # new
            give("g3", "cas", "cas"),  # rule
            {"type": "give.recorded", "data": {"id": "g4"}},  # schema
            acknowledgement("a1", "cas", "g2"),  # sees g2 from earlier in this batch
            give("g2", "bob", "dan"),  # same id as an earlier item, other content
            reversal("r1", "g1"),
        ],
    )
    assert response.status == 200
    results = (await response.json())["results"]
    assert [r["status"] for r in results] == [
        "duplicate",
        "recorded",
        "rejected",
        "rejected",
        "recorded",
        "rejected",
        "recorded",
    ]
    assert results[2]["problem"]["errors"][0]["rule"] == "giver_is_not_receiver"
    assert {e["path"] for e in results[3]["problem"]["errors"]} >= {"timestamp", "data.giver"}
    assert results[5]["problem"]["status"] == 409
    assert results[1]["position"] < results[4]["position"] < results[6]["position"]
    text = await (await client.get("/metrics")).text()  # the facts by outcome: the single one and the batch's
    assert 'reciprocity_ingest_facts_total{outcome="recorded"} 4.0' in text
    assert 'reciprocity_ingest_facts_total{outcome="duplicate"} 1.0' in text
    assert 'reciprocity_ingest_facts_total{outcome="rejected"} 3.0' in text


async def test_a_batch_of_more_than_1000_is_422_at_events(client):
    response = await client.sender.post_batch(client, [give(f"g{n}", "ann", "bob") for n in range(1001)])
    problem = await problem_of(response, 422)
    assert problem["errors"][0]["path"] == "events"


async def test_50_concurrent_deliveries_of_one_fact_store_exactly_one_event(client):
    answers = await asyncio.gather(*(client.sender.post(client, give("g1", "ann", "bob")) for _ in range(50)))
    bodies = [await a.json() for a in answers]
    assert sorted(a.status for a in answers) == [200] * 49 + [201]
    assert len({(b["event_id"], b["position"]) for b in bodies}) == 1
    log = await client.get("/v1/tenants/acme/events", headers=client.sender.read_headers())
    assert len((await log.json())["events"]) == 1


async def test_two_different_acknowledgements_sent_concurrently_record_exactly_one(client):
    await client.sender.post(client, give("g1", "ann", "bob"))
    first, second = await asyncio.gather(
        client.sender.post(client, acknowledgement("a1", "bob", "g1")),
        client.sender.post(client, acknowledgement("a2", "bob", "g1")),
    )
    assert sorted([first.status, second.status]) == [201, 422]


async def test_under_32_concurrent_requests_transactions_hold_more_than_one_fact(client):
    """Group commit: concurrent requests share transactions (mean facts per commit above 1)."""
    metrics = client.components.metrics
    before_sum, before_count = _histogram(metrics, "reciprocity_commit_batch_size")
    answers = await asyncio.gather(*(client.sender.post(client, give(f"g{n}", "ann", "bob")) for n in range(320)))
    assert all(a.status == 201 for a in answers)
    total, commits = _histogram(metrics, "reciprocity_commit_batch_size")
    assert total - before_sum == 320
    assert (total - before_sum) / (commits - before_count) > 1


def _histogram(metrics, name: str) -> tuple[float, float]:
    total = metrics.registry.get_sample_value(f"{name}_sum") or 0.0
    count = metrics.registry.get_sample_value(f"{name}_count") or 0.0
    return total, count


async def test_metrics_count_requests_by_outcome(client):
    await client.sender.post(client, give("g1", "ann", "bob"))
    await client.sender.post(client, give("g1", "ann", "bob"))
    await client.sender.post(client, give("g2", "ann", "ann"))
    text = await (await client.get("/metrics")).text()
    assert 'reciprocity_ingest_requests_total{outcome="recorded"} 1.0' in text
    assert 'reciprocity_ingest_requests_total{outcome="duplicate"} 1.0' in text
    assert 'reciprocity_ingest_requests_total{outcome="invalid"} 1.0' in text
    assert "reciprocity_commit_batch_size_bucket" in text
