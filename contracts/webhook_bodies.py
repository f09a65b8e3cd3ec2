"""What other apps send us: the webhook envelope and the data of each fact type (DESIGN sections 2-3).

These models are the only place where incoming JSON is validated; everything behind them trusts them.
"""

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from contracts import json_body
from contracts.types import (
    ContextText,
    ExternalId,
    NewParticipantId,
    Note,
    Slug,
    Timestamp,
    Value,
)

BATCH_EVENTS_MAX = 1_000


class FactType(StrEnum):
    """What a fact is: the webhook's and the log's `type`, and (dot as _) the last token of its NATS subject."""

    GIVE = "give.recorded"
    INTRODUCTION = "introduction.made"
    ACKNOWLEDGEMENT = "acknowledgement.recorded"
    REVERSAL = "reversal.recorded"
    ERASURE = "participant.erased"  # recorded by the ledger itself, never by a webhook (DESIGN section 7)


FACT_TYPES = tuple(FactType)
WEBHOOK_FACT_TYPES = tuple(fact_type for fact_type in FactType if fact_type is not FactType.ERASURE)


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Context(Strict):
    """Where a fact happened; people tie their networks to places, activities and subjects."""

    location: ContextText | None = None
    activity: ContextText | None = None
    subject: ContextText | None = None


class Ref(Strict):
    """A reference to an earlier give or introduction by its external id."""

    id: ExternalId
    source: Slug | None = Field(default=None, description="Defaults to the sending source.")


class FactData(Strict):
    id: ExternalId = Field(description="The sender's id of this fact, unique per source.")
    occurred_at: Timestamp | None = Field(
        default=None, description="ISO 8601 with offset, at most 5 minutes ahead; defaults to receipt."
    )


class GiveData(FactData):
    giver: NewParticipantId
    receiver: NewParticipantId
    kind: Literal["knowledge", "help", "time", "referral", "endorsement", "other"]
    value: Value = Field(default=Decimal(1))
    context: Context | None = None
    note: Note | None = None


class IntroductionData(FactData):
    introducer: NewParticipantId
    introduced: Annotated[list[NewParticipantId], Field(min_length=2, max_length=2)]
    context: Context | None = None
    note: Note | None = None


class AcknowledgementData(FactData):
    acknowledger: NewParticipantId
    ref: Ref
    note: Note | None = None
    value: Value | None = Field(default=None, description="Informational: what came back. Never summed.")


class ReversalData(FactData):
    ref: Ref
    reason: Note


class Envelope(Strict):
    timestamp: Timestamp = Field(description="When the sender sent it; informational.")


class GiveRecorded(Envelope):
    type: Literal["give.recorded"]
    data: GiveData


class IntroductionMade(Envelope):
    type: Literal["introduction.made"]
    data: IntroductionData


class AcknowledgementRecorded(Envelope):
    type: Literal["acknowledgement.recorded"]
    data: AcknowledgementData


class ReversalRecorded(Envelope):
    type: Literal["reversal.recorded"]
    data: ReversalData


Webhook = Annotated[
    GiveRecorded | IntroductionMade | AcknowledgementRecorded | ReversalRecorded,
    Field(discriminator="type"),
]
webhook_adapter: TypeAdapter[Webhook] = TypeAdapter(Webhook)


def read_webhook(body: bytes) -> Webhook:
    """A webhook body as the edge reads it: exact JSON (json_body.JsonBodyError), then the contract
    (pydantic's ValidationError). Validate Python objects, never JSON text: JSON mode rounds decimals."""
    return webhook_adapter.validate_python(json_body.parse(body))


class Batch(Strict):
    """Up to 1,000 facts under one signature; each item is answered on its own."""

    events: Annotated[list[Webhook], Field(min_length=1, max_length=BATCH_EVENTS_MAX)]


class BatchShape(BaseModel):
    """The outer shape of a batch, checked before its items are validated one by one."""

    model_config = ConfigDict(strict=True, extra="forbid")
    events: Annotated[list[object], Field(min_length=1, max_length=BATCH_EVENTS_MAX)]
