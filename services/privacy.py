"""A person's data, exported (DESIGN section 7): what the export route and `reciprocity participant export`
answer, assembled the same way for both.

Erasure itself is the writer's (ledger/group_commit.py, FactWriter.erase); the edges only call it.
"""

from __future__ import annotations

from contracts.answers import ParticipantExport
from ledger.participants import id_digest
from ledger.store import Ledger
from projections.influence_view import InfluenceView
from projections.queries import ReciprocityQueries


def participant_token(ledger: Ledger, tenant: str, participant: str) -> str | None:
    """The token of a live participant; None for an id no fact names, or one that was erased."""
    digest = id_digest(tenant, participant)
    key = ledger.participant_keys(tenant, [digest]).get(digest)
    return None if key is None else key.token


def participant_export(
    ledger: Ledger, queries: ReciprocityQueries, influence: InfluenceView, tenant: str, participant: str
) -> ParticipantExport | None:
    """Everything held about a live participant; None when there is no such participant (or no longer).

    Blocking: it reads the store and the views."""
    token = participant_token(ledger, tenant, participant)
    if token is None:
        return None
    # Read first: the answer claims no more than the views reflected before any of their parts was read.
    position = queries.position()
    stored = ledger.participant_facts(tenant, token)
    names = ledger.names_of(stored)
    if names.erased(token):  # erased since the token was found: like an id never seen
        return None
    return ParticipantExport(
        participant=participant,
        facts=[fact.as_logged(names) for fact in stored],
        balance=queries.balance(tenant, participant),
        influence=influence.participant(tenant, participant),
        maintenance=queries.maintenance(tenant, participant, None),
        position=position,
    )
