"""The AsyncAPI 3 description of what we put on NATS: the event stream, the view buckets and the query
service, generated from the same pydantic contracts as the HTTP interface (contracts/asyncapi.json)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from contracts.answers import LoggedFact
from contracts.nats_requests import (
    BalanceRequest,
    GraphRequest,
    InfluenceRequest,
    MaintenanceRequest,
    PairRequest,
    TiesRequest,
    UpkeepRequest,
)
from contracts.types import PARTICIPANT_PATTERN, SLUG_PATTERN
from contracts.view_answers import (
    Balance,
    Graph,
    InfluencePage,
    Maintenance,
    Pair,
    ParticipantInfluence,
    TiesPage,
    UpkeepPage,
)
from contracts.webhook_bodies import FACT_TYPES

REF = "#/components/schemas/{model}"
TOKEN_PATTERN = r"^[0-9a-f]{16}$"
TOKENS_PATTERN = r"^[0-9a-f]{16}( [0-9a-f]{16})*$"


class ErasedData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str = Field(
        pattern=TOKEN_PATTERN,
        description="The erased participant's token, as it stood in the Reciprocity-Participants headers.",
    )


class ParticipantErased(LoggedFact):
    """A `participant.erased` fact as the stream carries it (DESIGN section 7): the ledger erased a participant."""

    type: Literal["participant.erased"]  # type: ignore[assignment]
    data: ErasedData  # type: ignore[assignment]


PAYLOADS: list[type[BaseModel]] = [
    LoggedFact,
    ParticipantErased,
    Balance,
    Pair,
    ParticipantInfluence,
    InfluencePage,
    Maintenance,
    Graph,
    TiesPage,
    UpkeepPage,
    BalanceRequest,
    PairRequest,
    InfluenceRequest,
    MaintenanceRequest,
    GraphRequest,
    TiesRequest,
    UpkeepRequest,
]
QUERIES = {  # endpoint: (request, reply)
    "balance": ("BalanceRequest", "Balance"),
    "pair": ("PairRequest", "Pair"),
    "influence": ("InfluenceRequest", "InfluencePage"),
    "maintenance": ("MaintenanceRequest", "Maintenance"),
    "graph": ("GraphRequest", "Graph"),
    "ties": ("TiesRequest", "TiesPage"),
    "upkeep": ("UpkeepRequest", "UpkeepPage"),
}
BUCKETS = {  # bucket: (key address after the bucket, value)
    "reciprocity_balances": ("{tenant}.{participant}", "Balance"),
    "reciprocity_pairs": ("{tenant}.{a}.{b}", "Pair"),
    "reciprocity_influence": ("{tenant}.{participant}", "ParticipantInfluence"),
}


def asyncapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema([(model, "serialization") for model in PAYLOADS], ref_template=REF)
    channels: dict[str, Any] = {"events": _events_channel()}
    operations: dict[str, Any] = {
        "publishFacts": {
            "action": "send",
            "channel": {"$ref": "#/channels/events"},
            "summary": (
                "The relay publishes every committed fact once, in position order (the outbox), and deletes an "
                "erased participant's earlier messages once it has published their participant_erased fact."
            ),
        }
    }
    for bucket, (key, value) in BUCKETS.items():
        name = bucket.removeprefix("reciprocity_")
        description = (
            f"The {name} view in KV bucket {bucket} (history 1). An erased participant's keys are deleted, then "
            "purged from the bucket's stream, so no key or marker names them; keys with them are written again "
            "under `erased-<token>`."
        )
        channels[name] = _channel(f"$KV.{bucket}.{key}", value, description)
        operations[f"write{name.title()}"] = {"action": "send", "channel": {"$ref": f"#/channels/{name}"}}
    for endpoint, (request, reply) in QUERIES.items():
        channels[f"query-{endpoint}"] = _channel(f"reciprocity.query.{{tenant}}.{endpoint}", request, "")
        channels[f"query-{endpoint}-reply"] = {"address": None, "messages": {reply: _message_ref(reply)}}
        operations[f"query{endpoint.title()}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/query-{endpoint}"},
            "summary": f"NATS micro service `reciprocity`, endpoint {endpoint}; errors in Nats-Service-Error(-Code).",
            "reply": {"channel": {"$ref": f"#/channels/query-{endpoint}-reply"}},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "reciprocity-ledger on NATS",
            "version": "1",
            "description": "The fact stream RECIPROCITY_EVENTS, the views in KV buckets, the query micro service.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": dict(sorted(schemas.get("$defs", {}).items())),
            "messages": {name: {"payload": {"$ref": REF.format(model=name)}} for name in _message_names()},
        },
    }


ERASURE_DUTY = (
    "Every message before it whose Reciprocity-Participants header holds this token is deleted from the stream "
    "with JetStream's secure erase, within seconds of this message. A subscriber that keeps copies must erase its "
    "own copies of those messages (index them by the header's tokens), and everything it derived from them that "
    "names the participant; later messages show the participant as `erased-<token>`."
)


def _events_channel() -> dict[str, Any]:
    return {
        "address": "reciprocity.events.{tenant}.{type}",
        "description": (
            "JetStream stream RECIPROCITY_EVENTS: every fact, unlimited retention, in position order. Every message "
            "names in its Reciprocity-Participants header the tokens of everyone its fact concerns; a "
            "participant_erased message asks subscribers to erase their copies by token."
        ),
        "parameters": {
            "tenant": {"description": f"The tenant slug, {SLUG_PATTERN}"},
            "type": {"enum": [t.replace(".", "_") for t in FACT_TYPES], "description": "The fact type, dot as _"},
        },
        "messages": {
            "LoggedFact": {
                "summary": "A fact, as in the log (ids; a note only while everyone it concerns exists).",
                "payload": {"$ref": REF.format(model="LoggedFact")},
                "headers": _event_headers(),
            },
            "ParticipantErased": {
                "summary": "On subject reciprocity.events.{tenant}.participant_erased: a participant was erased.",
                "description": ERASURE_DUTY,
                "payload": {"$ref": REF.format(model="ParticipantErased")},
                "headers": _event_headers(),
            },
        },
    }


def _event_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["Nats-Msg-Id", "Reciprocity-Position", "Reciprocity-Participants"],
        "properties": {
            "Nats-Msg-Id": {"type": "string", "format": "uuid", "description": "The event id"},
            "Reciprocity-Position": {"type": "string", "description": "The position in the log"},
            "Reciprocity-Participants": {
                "type": "string",
                "pattern": TOKENS_PATTERN,
                "description": (
                    "The tokens of everyone the fact concerns, space-separated: whom it names, and for an "
                    "acknowledgement or reversal also whom the fact it refers to concerns. A token is never derived "
                    "from an id; index your copies by it, to erase them on participant_erased."
                ),
            },
        },
    }


def _channel(address: str, message: str, description: str) -> dict[str, Any]:
    parameters = {
        name: {"description": f"Participant id, {PARTICIPANT_PATTERN}" if name != "tenant" else "Tenant slug"}
        for name in ("tenant", "participant", "a", "b")
        if f"{{{name}}}" in address
    }
    return {
        "address": address,
        **({"description": description} if description else {}),
        "parameters": parameters,
        "messages": {message: _message_ref(message)},
    }


def _message_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/messages/{name}"}


def _message_names() -> list[str]:
    names = {value for _, value in BUCKETS.values()} | {n for pair in QUERIES.values() for n in pair}
    return sorted(names)
