"""What we answer: fact outcomes, RFC 9457 problems and the ordered log of facts (DESIGN sections 2-5)."""

from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from contracts.view_answers import Balance, Maintenance, ParticipantInfluence

TOKEN_PATTERN = "^[0-9a-f]{16}$"


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
    type: Literal[
        "give.recorded", "introduction.made", "acknowledgement.recorded", "reversal.recorded", "participant.erased"
    ]
    position: int
    occurred_at: str = Field(description="ISO 8601, UTC.")
    recorded_at: str = Field(description="ISO 8601, UTC: when the store committed it.")
    data: dict[str, Any] = Field(
        description=(
            "The validated webhook data, decimals as strings. A participant who was erased shows as "
            "`erased-<token>`, and the note of a fact that named them is left out; a `participant.erased` "
            'fact\'s data is `{"token"}`.'
        )
    )


class EventsPage(Answer):
    events: list[LoggedFact]
    next_after: int = Field(
        description="Pass as `after` to read on; equals the request's `after` when nothing is newer."
    )


class ParticipantErased(Answer):
    """A participant erased (DESIGN section 7): their key and id are destroyed, and wherever they were, answers
    show `erased-<token>` from now on; the `participant.erased` fact is at `position`."""

    status: Literal["erased"]
    token: str = Field(pattern=TOKEN_PATTERN, description="Answers show `erased-<token>` where they were.")
    position: int = Field(description="The `participant.erased` fact's log position (for `min_position`).")


class ParticipantExport(Answer):
    """Everything held about one participant (DESIGN section 7): access and portability."""

    participant: str
    facts: list[LoggedFact] = Field(
        description=(
            "Every fact naming the participant (giver, receiver, introducer, introduced, acknowledger) and "
            "every acknowledgement or reversal of those, in position order, as the log API shows them."
        )
    )
    balance: Balance | None = Field(description="As the balance route answers; null while the view has none.")
    influence: ParticipantInfluence | None = Field(
        description="As the participant's influence route answers; null while none is computed."
    )
    maintenance: Maintenance | None = Field(
        description="As the maintenance route answers (default `as_of`); null while the view has none."
    )
    position: int = Field(description="The last log position the views reflected when the export was read.")
