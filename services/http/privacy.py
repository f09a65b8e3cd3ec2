"""A person's data over HTTP (DESIGN section 7): export (query role) and erasure (ingest role), admin keys only."""

from __future__ import annotations

from aiohttp import web
from eventsourcing.persistence import PersistenceError

from contracts import problems
from contracts.answers import ParticipantErased
from contracts.query_parameters import NoQuery, Query
from ledger.group_commit import ConflictPersisted
from projections.supervision import in_thread
from services.http.auth import require_key
from services.http.keys import COMPONENTS, LOG_FIELDS, OUTCOME
from services.http.responses import json_answer
from services.http.views import parse_query, path_participant, wait_for_view
from services.privacy import participant_export

SCOPE = "admin"


def _no_participant(participant: str) -> problems.ProblemException:
    # An erased id answers like one never seen: the answer must not tell that this person was ever here.
    return problems.ProblemException(
        problems.problem(404, "not-found", "Not found", f"no participant {participant!r} in this tenant")
    )


async def export(request: web.Request) -> web.StreamResponse:
    tenant = request.match_info["tenant"]  # (the log line shows the route's pattern: services/http/middleware.py)
    await require_key(request, tenant, SCOPE)
    query = parse_query(request, Query)  # before the path, as on every read route: a repeated parameter is 400
    participant = path_participant(request)
    await wait_for_view(request, tenant, query)
    components = request.app[COMPONENTS]
    projections = components.projections
    answer = await in_thread(
        participant_export, components.ledger, projections.queries, projections.influence, tenant, participant
    )
    if answer is None:
        raise _no_participant(participant)
    return json_answer(answer)


async def erase(request: web.Request) -> web.StreamResponse:
    tenant = request.match_info["tenant"]
    await require_key(request, tenant, SCOPE)
    parse_query(request, NoQuery)
    participant = path_participant(request)
    committer = request.app[COMPONENTS].committer
    assert committer is not None  # the route exists only where ingest runs
    try:
        # On the writer's thread, between two group commits: an erasure never interleaves with a batch.
        erased = await committer.writer.erase(tenant, participant)
    except ConflictPersisted:
        raise problems.ProblemException(
            problems.problem(
                409,
                "write-contention",
                "Other writers kept changing the same participant",
                "the store refused the erasure repeatedly because other requests named this participant; retry",
                retryable=True,
            )
        ) from None
    except PersistenceError as failure:  # the store refused or is unreachable: nothing was erased
        raise problems.ProblemException(problems.store_unavailable(str(failure)), {"Retry-After": "1"}) from None
    if erased is None:
        raise _no_participant(participant)
    committer.on_commit()  # the projector and the relay follow at once, as after any commit
    request[OUTCOME] = "erased"
    request[LOG_FIELDS] = {"tenant": tenant, "token": erased.token}  # the token names no one: it helps an audit
    return json_answer(ParticipantErased(status="erased", token=erased.token, position=erased.position))
