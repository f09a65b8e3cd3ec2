"""What we answer: fact outcomes, RFC 9457 problems and the ordered log of facts (DESIGN sections 2-5)."""

from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProblemError(Answer):
    """One broken rule: where (a dotted path into the request), which rule, and why."""

    path: str = Field(examples=["data.receiver"])
    rule: str = Field(examples=["giver_is_not_receiver"])
    message: str


class Problem(Answer):
    """An RFC 9457 problem; `retryable` says whether sending the same request again can succeed."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemError] | None = None
    retryable: bool | None = None


class FactAccepted(Answer):
    """A fact that is in the store: just recorded (201) or recorded before (200 duplicate)."""

    status: Literal["recorded", "duplicate"]
    event_id: UUID
    position: int


class FactRejected(Answer):
    status: Literal["rejected"] = "rejected"
    problem: Problem


class BatchAnswer(Answer):
    results: list[FactAccepted | FactRejected]


class LoggedFact(Answer):
    """A fact as it stands in the log, the NATS stream and the answers of the log API."""

    event_id: UUID
    tenant: str
    source: str
    external_id: str
    type: Literal["give.recorded", "introduction.made", "acknowledgement.recorded", "reversal.recorded"]
    position: int
    occurred_at: str = Field(description="ISO 8601, UTC.")
    recorded_at: str = Field(description="ISO 8601, UTC: when the store committed it.")
    data: dict[str, Any] = Field(description="The validated webhook data, decimals as strings.")


class EventsPage(Answer):
    events: list[LoggedFact]
    next_after: int = Field(
        description="Pass as `after` to read on; equals the request's `after` when nothing is newer."
    )
