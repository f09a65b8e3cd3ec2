"""What the views answer (DESIGN sections 4-5): balances, pairs, influence, maintenance.

Values are decimals as JSON strings; ratios and scores are JSON numbers rounded to 6 decimal places.
Every answer carries `position`: the last log position the view reflects.
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

DecimalText = str


class View(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CountValue(View):
    count: int
    value: DecimalText


class Introductions(View):
    made: int
    received: int = Field(description="Introductions in which this participant was one of the two introduced.")


class Acknowledgements(View):
    given: int
    received: int = Field(description="Acknowledgements of this participant's gives and introductions.")


class Unacknowledged(View):
    count: int
    value: DecimalText
    oldest_at: str | None


class Balance(View):
    """One participant's reciprocity totals (overall, or within one context value)."""

    participant: str
    given: CountValue
    received: CountValue
    balance: DecimalText = Field(description="given.value - received.value; positive: a net giver.")
    introductions: Introductions
    acknowledgements: Acknowledgements
    unacknowledged: Unacknowledged = Field(description="Gives this participant received and has not acknowledged.")
    counterparts: int = Field(description="Distinct people with a give to or from this participant.")
    reciprocity: float | None = Field(
        description="Share of what this participant gave that came back: sum_q min(G_pq, G_qp) / sum_q G_pq."
    )
    position: int


class Pair(View):
    """Two participants in canonical (byte) order, a < b."""

    a: str
    b: str
    a_to_b: CountValue
    b_to_a: CountValue
    balance: DecimalText = Field(description="G_ab - G_ba")
    reciprocity: float | None = Field(description="1 - |G_ab - G_ba| / (G_ab + G_ba); null when nothing was given.")
    first_at: str | None
    last_at: str | None
    introduced_by: list[str] = Field(description="Introducers of a and b, in position order.")
    position: int


class BalancesPage(View):
    items: list[Balance]
    next_cursor: str | None
    position: int


class Contribution(View):
    """Who endorsed this participant, how much of the score it carried, through which facts."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True)

    from_: str = Field(alias="from")
    weight: float
    facts: list[UUID] = Field(description="Up to 10 event ids behind this contribution, newest first.")


class InfluenceItem(View):
    participant: str
    score: float = Field(description="Weighted PageRank, scaled to sum to 100 per tenant.")
    rank: int
    constraint: float | None = Field(description="Burt's constraint; low means a broker.")
    effective_size: float | None
    introductions_paid_off: int
    contributions: list[Contribution]


class ParticipantInfluence(InfluenceItem):
    position: int


class InfluencePage(View):
    items: list[InfluenceItem]
    next_cursor: str | None
    position: int


class DormantTie(View):
    counterpart: str
    last_at: str
    strength: DecimalText


class PendingThanks(View):
    event_id: UUID
    external_id: str
    giver: str
    occurred_at: str
    value: DecimalText


class Maintenance(View):
    participant: str
    as_of: str | None
    dormant_ties: list[DormantTie]
    pending_thanks: list[PendingThanks]
    position: int


class GraphEdge(View):
    """Giver -> receiver, summed over the live gives in the window and context asked for."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True)

    from_: str = Field(alias="from", description="The giver.")
    to: str = Field(description="The receiver.")
    count: int
    value: DecimalText
    acknowledged_count: int = Field(description="Of these gives, those the receiver acknowledged.")
    first_at: str
    last_at: str


class GraphNode(View):
    """An endpoint of a kept edge, with the participant's overall (unfiltered) view."""

    participant: str
    given: CountValue
    received: CountValue
    balance: DecimalText
    score: float | None = Field(description="Influence score; null where influence has none (yet).")
    rank: int | None


class Graph(View):
    nodes: list[GraphNode]
    edges: list[GraphEdge] = Field(description="By value descending, then from, then to.")
    position: int
    truncated: bool = Field(description="Whether edges beyond `limit` were left out.")


class Tie(View):
    """One counterpart of a participant, seen from the participant's side."""

    counterpart: str
    given: CountValue = Field(description="What the participant gave the counterpart.")
    received: CountValue = Field(description="What the participant received from the counterpart.")
    balance: DecimalText = Field(description="given.value - received.value")
    reciprocity: float | None = Field(description="1 - |given - received| / (given + received), as for a pair.")
    first_at: str | None
    last_at: str | None
    introduced_by: list[str] = Field(description="Introducers of the two, in position order.")


class TiesPage(View):
    items: list[Tie]
    next_cursor: str | None
    position: int


class UpkeepItem(View):
    """Thanks still to give (`participant` owes them to `counterpart`), or a strong tie gone quiet."""

    kind: Literal["pending_thanks", "dormant_tie"]
    participant: str = Field(description="Pending thanks: the receiver of the give; dormant tie: the pair's a.")
    counterpart: str = Field(description="Pending thanks: the giver; dormant tie: the pair's b.")
    since: str = Field(description="Pending thanks: the give's occurred_at; dormant tie: its last_at.")
    value: DecimalText = Field(description="Pending thanks: the give's value; dormant tie: its strength.")
    event_id: UUID | None = Field(default=None, description="The give to thank for; null for a dormant tie.")


class UpkeepPage(View):
    items: list[UpkeepItem] = Field(description="Oldest first (by since, then kind, participant, counterpart).")
    next_cursor: str | None
    as_of: str | None
    position: int
