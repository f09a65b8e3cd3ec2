"""What an attacker or a careless sender may send: refused by name at the edge, never a 500, never changed."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
import structlog.testing

from services.cli import main as cli_main
from tests.helpers import envelope, give, introduction, problem_of, reversal


async def recorded_events(client) -> list[dict]:
    log = await client.get("/v1/tenants/acme/events", headers=client.sender.read_headers())
    assert log.status == 200
    return (await log.json())["events"]


async def post_raw(client, body: bytes, path: str | None = None):
    return await client.post(path or client.sender.path, data=body, headers=client.sender.headers(body))


def signed_give(**data: object) -> bytes:
    fact = give("g1", "ann", "bob", **data)
    return json.dumps(envelope(fact)).encode()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("context", {"activity": "x\u0000y"}),
        ("context", {"location": "line\nbreak"}),
        ("context", {"subject": "bell\u0007"}),
        ("note", "nul\u0000inside"),
        ("note", "escape\u001b[31m"),
    ],
)
async def test_control_characters_in_text_are_refused_by_field(client, field, value):
    body = await problem_of(await post_raw(client, signed_give(**{field: value})), 422)
    assert [(e["path"], e["rule"]) for e in body["errors"]] == [
        (f"data.{field}.{next(iter(value))}" if isinstance(value, dict) else f"data.{field}", "control_character")
    ]
    assert await recorded_events(client) == []


async def test_a_note_keeps_its_line_breaks_and_tabs(client):
    response = await post_raw(client, signed_give(note="first line\n\tsecond\r\n"))
    assert response.status == 201, await response.text()
    (event,) = await recorded_events(client)
    assert event["data"]["note"] == "first line\n\tsecond\r\n"


async def test_a_lone_surrogate_is_not_text(client):
    body = signed_give(note="PLACEHOLDER").replace(b"PLACEHOLDER", b"\\ud800")
    body400 = await problem_of(await post_raw(client, body), 400)
    assert "surrogate" in body400["detail"]


async def test_a_reversal_reason_is_a_note_too(client):
    assert (await client.sender.post(client, give("g1", "ann", "bob"))).status == 201
    body = json.dumps(envelope(reversal("r1", "g1", reason="oops\u0000"))).encode()
    problem = await problem_of(await post_raw(client, body), 422)
    assert problem["errors"][0]["path"] == "data.reason"


@pytest.mark.parametrize("text", ["0.99999999999999999", "999999.99999999999", "1.0000001", "1e-7"])
async def test_more_than_six_decimal_places_is_refused_not_rounded(client, text):
    body = signed_give(value=0).replace(b'"value": 0', b'"value": ' + text.encode())
    problem = await problem_of(await post_raw(client, body), 422)
    assert [(e["path"], e["rule"]) for e in problem["errors"]] == [("data.value", "decimal_max_places")]
    assert await recorded_events(client) == []


@pytest.mark.parametrize(("text", "recorded"), [("0.000001", "0.000001"), ("1000000", "1000000"), ("2.50", "2.5")])
async def test_decimals_are_recorded_exactly(client, text, recorded):
    body = signed_give(value=0).replace(b'"value": 0', b'"value": ' + text.encode())
    assert (await post_raw(client, body)).status == 201
    (event,) = await recorded_events(client)
    assert event["data"]["value"] == recorded


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
async def test_non_numbers_are_malformed_json(client, constant):
    body = signed_give(value=0).replace(b'"value": 0', b'"value": ' + constant)
    await problem_of(await post_raw(client, body), 400)


async def test_a_repeated_key_is_refused_not_last_wins(client):
    body = signed_give(value=1).replace(b'"value": 1', b'"value": 1, "value": 7')
    problem = await problem_of(await post_raw(client, body), 400)
    assert "'value' appears more than once" in problem["detail"]
    batch = b'{"events": [' + body + b"]}"
    await problem_of(await post_raw(client, batch, client.sender.path + "/batch"), 400)
    assert await recorded_events(client) == []


async def test_deep_nesting_is_malformed_not_a_crash(client):
    body = b'{"type": "give.recorded", "timestamp": "2026-01-01T00:00:00Z", "data": ' + b"[" * 200_000 + b"}"
    await problem_of(await post_raw(client, body), 400)


@pytest.mark.parametrize("header", ["webhook-signature", "webhook-id", "webhook-timestamp"])
async def test_non_ascii_signature_headers_are_401_not_500(client, header):
    body = signed_give()
    headers = client.sender.headers(body)
    request = (
        f"POST {client.sender.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode()
    for name, value in headers.items():
        if name.lower() == "content-type":
            continue
        raw = value.encode()
        if name == header:
            raw = raw[:3] + b"\xff\xfe" + raw[3:]  # not even UTF-8
        request += name.encode() + b": " + raw + b"\r\n"
    status, content_type = await _raw_exchange(client, request + b"\r\n" + body)
    assert (status, content_type) == (401, "application/problem+json")
    assert await recorded_events(client) == []


async def test_a_non_ascii_api_key_is_401_not_500(client):
    request = b"GET /v1/tenants/acme/balances HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer rk_\xff\xe9x\r\n"
    status, content_type = await _raw_exchange(client, request + b"Connection: close\r\n\r\n")
    assert (status, content_type) == (401, "application/problem+json")


async def _raw_exchange(client, request: bytes) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    finally:
        writer.close()
    status = int(head.split(" ", 2)[1])
    content_type = next(
        line.split(":", 1)[1].split(";")[0].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("content-type")
    )
    return status, content_type


@pytest.mark.parametrize(
    "occurred_at", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1899-12-31T23:59:59Z"]
)
async def test_occurred_at_out_of_range_is_422_and_spares_the_rest_of_its_batch(client, occurred_at):
    single = await problem_of(await post_raw(client, signed_give(occurred_at=occurred_at)), 422)
    assert single["errors"][0]["path"] == "data.occurred_at"
    good = envelope(give("g2", "ann", "bob"))
    bad = envelope(give("g3", "ann", "bob", occurred_at=occurred_at))
    response = await client.sender.post_batch(client, [good, bad, envelope(introduction("i1", "cy", "ann", "bob"))])
    assert response.status == 200
    results = (await response.json())["results"]
    assert [r["status"] for r in results] == ["recorded", "rejected", "recorded"]
    assert results[1]["problem"]["errors"][0]["path"] == "data.occurred_at"
    assert [e["external_id"] for e in await recorded_events(client)] == ["g2", "i1"]


async def test_the_envelope_timestamp_is_bounded_too(client):
    body = json.dumps({**envelope(give("g1", "ann", "bob")), "timestamp": "0001-01-01T00:00:00+14:00"}).encode()
    problem = await problem_of(await post_raw(client, body), 422)
    assert problem["errors"][0]["path"] == "timestamp"


@pytest.mark.parametrize(
    "as_of",
    ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59-14:00", "1899-12-31T00:00:00Z"],
)
async def test_maintenance_as_of_out_of_range_is_422(client, as_of):
    assert (await client.sender.post(client, give("g1", "ann", "bob"))).status == 201
    response = await client.get(
        "/v1/tenants/acme/maintenance",
        params={"participant": "ann", "as_of": as_of},
        headers=client.sender.read_headers(),
    )
    problem = await problem_of(response, 422)
    assert problem["errors"][0]["path"] == "query.as_of"


async def test_maintenance_as_of_within_range_is_answered(client):
    assert (await client.sender.post(client, give("g1", "ann", "bob"))).status == 201
    soon = (datetime.now(UTC) + timedelta(minutes=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for as_of in ["1900-01-01T00:00:00Z", soon]:
        response = await client.get(
            "/v1/tenants/acme/maintenance",
            params={"participant": "ann", "as_of": as_of, "min_position": "1"},
            headers=client.sender.read_headers(),
        )
        assert response.status == 200, await response.text()


async def test_a_repeated_query_parameter_is_400(client):
    response = await client.get("/v1/tenants/acme/balances?limit=1&limit=1000", headers=client.sender.read_headers())
    problem = await problem_of(response, 400)
    assert problem["type"].endswith("/repeated-parameter") and "limit" in problem["detail"]


async def test_a_tenant_that_is_no_slug_names_nothing(client):
    body = signed_give()
    response = await client.post("/v1/tenants/acme%0A/webhooks/crm", data=body, headers=client.sender.headers(body))
    await problem_of(response, 404)


@pytest.mark.parametrize("name", ["evil\n", "acme\n", "Caps", "under_score", "a" * 64])
def test_the_cli_refuses_a_tenant_name_that_is_no_slug(sqlite_settings, monkeypatch, capsys, name):
    monkeypatch.setenv("RECIPROCITY_DATA_DIR", str(sqlite_settings.data_dir))
    with pytest.raises(SystemExit) as exited:
        cli_main(["tenant", "create", name])
    assert exited.value.code == 2 and "is not a slug" in capsys.readouterr().err


async def test_a_participant_path_with_a_trailing_newline_is_422(client):
    response = await client.get("/v1/tenants/acme/participants/ann%0A/balance", headers=client.sender.read_headers())
    problem = await problem_of(response, 422)
    assert problem["errors"][0]["path"] == "path.participant"


async def test_a_batch_of_millions_of_items_is_refused_without_reading_them_all(client):
    body = b'{"events": [' + b",".join([b"{}"] * 2_700_000) + b"]}"
    assert len(body) < 8 << 20
    response = await post_raw(client, body, client.sender.path + "/batch")
    problem = await problem_of(response, 422)
    assert [(e["path"], e["rule"]) for e in problem["errors"]] == [("events", "too_long")]


async def test_a_fault_of_ours_is_a_logged_counted_problem(client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(client.components.projections.queries, "pair", broken)
    with structlog.testing.capture_logs() as logs:
        response = await client.get("/v1/tenants/acme/pairs/ann/bob", headers=client.sender.read_headers())
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    assert (line["log_level"], line["status"], line["path"]) == ("error", 500, "/v1/tenants/acme/pairs/{a}/{b}")
    assert line["tenant"] == "acme"
    assert "a bug" in line["error"]
    problem = await problem_of(response, 500)
    assert "a bug" not in json.dumps(problem)  # the cause is logged, never told to the client
    metrics = (await (await client.get("/metrics")).text()).splitlines()
    assert 'reciprocity_http_internal_errors_total{route="/v1/tenants/{tenant}/pairs/{a}/{b}"} 1.0' in metrics
