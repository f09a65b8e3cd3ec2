"""The committed JSON Schemas are the models' own, and the models are strict at the edge."""

import json

import pytest
from pydantic import ValidationError

from contracts import export
from contracts.webhook_bodies import read_webhook


def test_the_committed_schemas_are_current():
    """Fails when a model changed and `reciprocity contracts export` was not run."""
    assert export.stale_files() == []


def test_a_changed_or_missing_schema_file_is_reported_stale(tmp_path):
    export.write(tmp_path)
    assert export.stale_files(tmp_path) == []
    (tmp_path / "problem.schema.json").write_text("{}\n")
    (tmp_path / "batch.schema.json").unlink()
    (tmp_path / "old.schema.json").write_text("{}\n")
    assert export.stale_files(tmp_path) == ["batch.schema.json", "old.schema.json", "problem.schema.json"]


def test_the_webhook_schema_names_every_fact_type():
    schema = json.loads((export.SCHEMA_DIR / "webhook.schema.json").read_text())
    assert set(schema["discriminator"]["mapping"]) == {
        "give.recorded",
        "introduction.made",
        "acknowledgement.recorded",
        "reversal.recorded",
    }


@pytest.mark.parametrize(
    "data",
    [
        {"id": "g1", "giver": "ann", "receiver": "bob", "kind": "help", "value": True},  # no bool for a decimal
        {"id": "g1", "giver": 7, "receiver": "bob", "kind": "help"},  # no number for an id
        {"id": "g1", "giver": "ann", "receiver": "bob"},  # kind is required
        {"id": "", "giver": "ann", "receiver": "bob", "kind": "help"},  # empty external id
    ],
)
def test_strict_validation_coerces_nothing(data):
    body = json.dumps({"type": "give.recorded", "timestamp": "2026-01-01T00:00:00Z", "data": data})
    with pytest.raises(ValidationError):
        read_webhook(body.encode())


def test_values_arrive_as_numbers_or_strings_and_leave_as_canonical_strings():
    for value in (2.5, "2.50", "2.500000"):
        body = json.dumps(
            {
                "type": "give.recorded",
                "timestamp": "2026-01-01T00:00:00Z",
                "data": {"id": "g1", "giver": "ann", "receiver": "bob", "kind": "help", "value": value},
            }
        )
        assert read_webhook(body.encode()).data.model_dump(mode="json")["value"] == "2.5"


def test_the_openapi_document_is_valid_and_describes_every_route():
    from openapi_spec_validator import validate

    from contracts.openapi import openapi_document

    document = openapi_document()
    validate(document)
    assert "/v1/tenants/{tenant}/webhooks/{source}/batch" in document["paths"]
    assert "/v1/tenants/{tenant}/maintenance" in document["paths"]
    assert json.loads((export.SCHEMA_DIR.parent / "openapi.json").read_text()) == document


async def test_the_service_serves_its_openapi_document(client):
    from contracts.openapi import openapi_document

    response = await client.get("/openapi.json")
    assert response.status == 200 and await response.json() == openapi_document()


def test_the_asyncapi_document_names_the_contracted_subjects_and_is_current():
    from contracts.asyncapi import asyncapi_document
    from projections import nats_bus as bus

    document = asyncapi_document()
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert "reciprocity.events.{tenant}.{type}" in addresses
    assert {f"$KV.{b}.{{tenant}}.{{participant}}" for b in (bus.BUCKET_BALANCES, bus.BUCKET_INFLUENCE)} <= addresses
    assert {f"reciprocity.query.{{tenant}}.{e}" for e in bus.QUERY_ENDPOINTS} <= addresses
    assert document["asyncapi"].startswith("3.")
    assert json.loads((export.SCHEMA_DIR.parent / "asyncapi.json").read_text()) == document
