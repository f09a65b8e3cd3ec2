"""Schemathesis against the live app's /openapi.json: every route, every check, with a valid read key.

The app runs on a real socket in a thread of its own (schemathesis calls are synchronous) over a SQLite
store that holds a few facts, so the views answer with data as well as 404s. Webhook requests whose
headers are generated valid are signed for the `crm` source, so their bodies get past the signature and
exercise JSON and schema validation. A fixed seed and a bounded number of examples keep the run
deterministic and about a minute long on two cores.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import schemathesis
from aiohttp import web
from schemathesis.core.parameters import ParameterLocation

from contracts import json_body
from contracts.answers import Problem
from contracts.webhook_bodies import read_webhook, webhook_adapter
from ledger.signatures import secret_key, sign
from services.bootstrap import open_components, open_registry
from services.http import views
from services.http.app import create_app
from services.settings import Settings
from tests.conftest import make_sender
from tests.helpers import Sender, acknowledgement, envelope, give, introduction

T = TypeVar("T")
# Another seed explores other inputs: RECIPROCITY_FUZZ_SEED=n (the suite runs with 16).
SEED = int(os.environ.get("RECIPROCITY_FUZZ_SEED", "16"))
MAX_EXAMPLES = 80
PARTICIPANTS = ["ann", "bob", "cas", "dee"]

# 422s that schema-valid requests may get: rules JSON Schema cannot state (they relate two fields, the
# ledger's state or the server's clock), stated in the descriptions and DESIGN instead.
RULES_STATED_IN_WORDS = {
    "cursor",  # only a next_cursor this API handed out
    "datetime_future",  # as_of at most 5 minutes ahead of the server's clock
    "window_order",  # the graph's until not before its since
    "not_in_future",  # occurred_at likewise
    "giver_is_not_receiver",
    "introduced_differ",
    "introducer_not_introduced",
    "reversed_by_recording_source",
    "ref_is_give_or_introduction",
    "ref_not_reversed",
    "acknowledger_was_helped",
    "one_acknowledgement_per_acknowledger",
    "reversal_not_reversible",
}
# Webhook body rules the generated document does not state yet: they live in contracts/types.py, whose
# annotated types carry no JSON Schema for them (reported in issue 16, item 12). Remove each one here as
# soon as its type states it; the fuzzer then holds the document to it.
BODY_RULES_NOT_YET_STATED = {
    "context_length",  # ContextText: 1 to 100 characters after trimming
    "decimal_max_places",  # Value as a number: at most 6 decimal places (a float's multipleOf is unreliable)
    "greater_than",  # Value as a string: above 0 (the number's schema says so, the string's does not)
    "less_than_equal",  # Value as a string: at most 1,000,000
    "datetime_range",  # Timestamp: convertible to UTC (the pattern states from 1900 on)
}


def run_in(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Sender, str]]:
    """The real app on 127.0.0.1 (SQLite), with a few facts recorded; yields its base URL, the sender and an
    admin key (for export and erasure)."""
    settings = Settings(data_dir=Path(tmp_path_factory.mktemp("fuzz")) / "data", registry_refresh_s=0.05)
    sender = make_sender(settings, "acme", "crm")
    registry = open_registry(settings)
    try:
        admin_key = registry.add_key("acme", ["admin"]).key
    finally:
        registry.db.close()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    # A view that is behind answers 503 after waiting 5 s; schemathesis draws min_position values far past the
    # log's head, and 5 s for each would make the run minutes long. 50 ms only decides how soon it gives up.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(views, "MIN_POSITION_WAIT_S", 0.05)
        components = run_in(loop, open_components(settings))
        runner = web.AppRunner(create_app(settings, components), access_log=None)
        try:
            run_in(loop, runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            run_in(loop, site.start())
            base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            _record_facts(base_url, sender)
            yield base_url, sender, admin_key
        finally:
            run_in(loop, runner.cleanup())
            run_in(loop, components.close())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()


def _record_facts(base_url: str, sender: Sender) -> None:
    """Gives, an introduction and acknowledgements, some in a context, so every view has something to say."""
    facts = [
        give("g1", "ann", "bob", value="5", context={"location": "Berlin", "subject": "Python"}),
        give("g2", "bob", "ann", value="2.5", context={"activity": "climbing"}),
        give("g3", "cas", "dee", kind="time"),
        introduction("i1", "cas", "ann", "bob"),
        acknowledgement("a1", "bob", "g1"),
        give("g4", "dee", "ann", value="0.000001"),
    ]
    position = 0
    for fact in facts:
        body = json.dumps(envelope(fact)).encode()
        response = requests.post(base_url + sender.path, data=body, headers=sender.headers(body), timeout=10)
        assert response.status_code == 201, response.text
        position = response.json()["position"]
    balance = f"{base_url}/v1/tenants/acme/participants/ann/balance?min_position={position}"
    influence = f"{base_url}/v1/tenants/acme/participants/ann/influence?min_position={position}"
    for url in (balance, influence):  # the views have caught up before the fuzzing starts
        deadline = time.monotonic() + 10
        while requests.get(url, headers=sender.read_headers(), timeout=10).status_code != 200:
            assert time.monotonic() < deadline, url


@pytest.fixture(scope="module")
def api_schema(live_app: tuple[str, Sender, str]) -> schemathesis.BaseSchema:
    base_url, sender, admin_key = live_app
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": base_url,
            # Erasure runs among the last operations (the document's order), after every view route was fuzzed
            # with the participants it may erase.
            "auth": {"openapi": {"readKey": {"bearer": sender.read_key}, "adminKey": {"bearer": admin_key}}},
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none", "no-shrink": True},
            # Inputs come from the seed alone, never from answers (whose ids and timings vary), so a failure
            # found once is found again.
            "phases": {
                "coverage": {"generate-duplicate-query-parameters": True, "extra-data-sources": {"responses": False}},
                "fuzzing": {"extra-data-sources": {"responses": False}, "error-feedback": {"enabled": False}},
                "examples": {"extra-data-sources": {"responses": False}},
            },
            # Most requests name the tenant of the key, the `crm` source and participants with facts, so
            # authorised paths and views with data are exercised; the rest stays random within the patterns.
            "dictionaries": {
                "tenants": {"values": ["acme"]},
                "sources": {"values": ["crm"]},
                "participants": {"values": PARTICIPANTS},
            },
            "parameters": {
                "path.tenant": {"dictionary": "tenants", "probability": 0.9},
                "path.source": {"dictionary": "sources", "probability": 0.9},
                "path.participant": {"dictionary": "participants", "probability": 0.6},
                "path.a": {"dictionary": "participants", "probability": 0.6},
                "path.b": {"dictionary": "participants", "probability": 0.6},
                "query.participant": {"dictionary": "participants", "probability": 0.6},
            },
            "checks": {
                # Replaced by schema_valid_requests_are_accepted, which knows the rules that only words state.
                "positive_data_acceptance": {"enabled": False},
                # Only a view behind min_position may answer 5xx: server_errors_are_views_behind checks that.
                "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]},
                # The source is looked up before its signature headers: an unknown one is 404 whatever they say.
                "missing_required_header": {"expected-statuses": ["400", "401", "403", "404", "406", "415", "422"]},
            },
        }
    )
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32 names each operation's subtest through Node._nodeid, which pytest 9.2 no longer has.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def _problem(response: schemathesis.Response) -> dict[str, Any]:
    assert response.headers.get("content-type", [""])[0].startswith("application/problem+json"), response.headers
    return json.loads(response.content)


def _sent_query(response: schemathesis.Response) -> dict[str, list[str]]:
    return parse_qs(urlsplit(response.request.url).query, keep_blank_values=True)


def refusals_are_problems(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every refusal of ours, documented status or not (405, an unknown route), is an RFC 9457 problem."""
    if response.status_code < 400 or case.operation.path == "/readyz":
        return
    problem = Problem.model_validate(_problem(response))
    assert problem.status == response.status_code, problem


def repeated_parameters_are_refused(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """A query parameter given twice is 400, never silently one of its values (once the key is checked)."""
    repeated = [name for name, values in _sent_query(response).items() if len(values) > 1]
    if not repeated or not case.operation.path.startswith("/v1/") or response.status_code in (401, 403, 404, 405):
        return
    problem = _problem(response)
    assert (response.status_code, problem["type"]) == (400, "/problems/repeated-parameter"), (repeated, problem)


def server_errors_are_views_behind(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """The one 5xx an input may cause: a view that has not reached the min_position the request asked for
    (whether it really had not is the views' own tests' business; the influence view lags by seconds)."""
    if response.status_code < 500:
        return
    problem = _problem(response)
    assert response.status_code == 503 and problem["type"] == "/problems/view-behind", problem
    (min_position,) = _sent_query(response)["min_position"]
    assert f"position {int(min_position)} " in problem["detail"], problem


def schema_valid_requests_are_accepted(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Like schemathesis' positive_data_acceptance, except for 422s that name only rules JSON Schema cannot
    state (or, for webhook bodies, does not state yet)."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    status = response.status_code
    if case.operation.path.endswith("/batch") and status == 200:
        problems = [result["problem"] for result in response.json()["results"] if result["status"] == "rejected"]
    elif 200 <= status < 300 or status in (401, 403, 404, 409, 429) or status >= 500:
        return  # 5xx: not_a_server_error and server_errors_are_views_behind judge those
    else:
        assert status == 422, f"{case.operation.label}: schema-valid request answered {status}: {response.text}"
        problems = [_problem(response)]
    allowed = RULES_STATED_IN_WORDS | (BODY_RULES_NOT_YET_STATED if "/webhooks/" in case.operation.path else set())
    # as_of's pattern holds it to years from 1900; on the first day of 1900 an offset east of UTC still falls
    # before 1900-01-01T00:00:00Z, which the description states in words.
    # The same holds for the graph's window, whose bounds may also be as late as year 9999, where an offset west
    # of UTC passes the end of datetime's range.
    sent = _sent_query(response)
    moments = [value for name in ("as_of", "since", "until") for value in sent.get(name, [])]
    if any(value.startswith(("1900-01-01", "9999-12-31")) for value in moments):
        allowed = allowed | {"datetime_range"}
    for problem in problems:
        if problem["status"] == 409:
            continue  # an unknown reference or a reused id: the ledger's state, not the request's shape
        rules = {error["rule"] for error in problem.get("errors") or []}
        assert rules and rules <= allowed, f"{case.operation.label}: schema-valid request refused: {problem}"


def _signed(case: schemathesis.Case, sender: Sender) -> dict[str, Any]:
    """Keyword arguments that sign the case's body as `crm` would, when its signature headers were generated
    valid (a request whose headers are under test keeps them as generated, and is refused as unproven)."""
    if "/webhooks/" not in case.operation.path or not isinstance(case.body, dict | list):
        return {}
    headers = case.meta.components.get(ParameterLocation.HEADER) if case.meta else None
    message_id = (case.headers or {}).get("webhook-id")
    if (headers is not None and not headers.mode.is_positive) or not isinstance(message_id, str):
        return {}
    body = json.dumps(case.body).encode()
    timestamp = int(time.time())
    signature = sign(secret_key(sender.secret), message_id, timestamp, body)
    return {"data": body, "headers": {"webhook-timestamp": str(timestamp), "webhook-signature": signature}}


def _accepted_bodies_keep_the_contract(case: schemathesis.Case, response: schemathesis.Response) -> None:
    """A recorded fact's body re-validates with the contract the edge uses."""
    if "/webhooks/" not in case.operation.path or not 200 <= response.status_code < 300:
        return
    body = response.request.body
    if case.operation.path.endswith("/batch"):
        results = response.json()["results"]
        for item, result in zip(json_body.parse(body)["events"], results, strict=True):
            if result["status"] != "rejected":
                webhook_adapter.validate_python(item)
    else:
        read_webhook(body)


@schema.parametrize()
def test_the_api_keeps_its_contract(case: schemathesis.Case, live_app: tuple[str, Sender, str]) -> None:
    _, sender, _ = live_app
    response = case.call_and_validate(
        additional_checks=[
            refusals_are_problems,
            repeated_parameters_are_refused,
            server_errors_are_views_behind,
            schema_valid_requests_are_accepted,
        ],
        **_signed(case, sender),
    )
    _accepted_bodies_keep_the_contract(case, response)


def test_the_fuzzer_reaches_authorised_answers(live_app: tuple[str, Sender, str]) -> None:
    """The read key works against the live app, so the fuzzing above is not all 401s."""
    base_url, sender, _ = live_app
    response = requests.get(f"{base_url}/v1/tenants/acme/balances", headers=sender.read_headers(), timeout=10)
    assert response.status_code == 200 and response.json()["items"]


def _cursor(*key: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


# Found while fuzzing the read API (schemathesis cannot forge a cursor's encoding): each answered 500 on one
# store. A cursor's key is now checked for its types and the 64-bit range, and a context filter refuses
# control characters like a context value.
FORGED = {
    "balances-cursor-past-64-bits": f"/v1/tenants/acme/balances?cursor={_cursor(2**70, 'ann')}",
    "influence-cursor-past-64-bits": f"/v1/tenants/acme/influence?cursor={_cursor(-(2**70))}",
    "balances-cursor-holding-nul": f"/v1/tenants/acme/balances?cursor={_cursor(1, 'a' + chr(0))}",
    "balances-cursor-holding-a-bool": f"/v1/tenants/acme/balances?cursor={_cursor(True, 'ann')}",
    "ties-cursor-past-64-bits": f"/v1/tenants/acme/participants/ann/ties?cursor={_cursor(2**70, 'bob')}",
    "ties-cursor-holding-nul": (
        f"/v1/tenants/acme/participants/ann/ties?order=last_at&cursor={_cursor('a' + chr(0), 'bob')}"
    ),
    "upkeep-cursor-holding-nul": f"/v1/tenants/acme/upkeep?cursor={_cursor('a' + chr(0), 'dormant_tie', 'a', 'b', 0)}",
    "upkeep-cursor-of-another-kind": (
        f"/v1/tenants/acme/upkeep?cursor={_cursor('2026-01-01T00:00:00.000000Z', 'x', 'a', 'b', 0)}"
    ),
    "context-filter-holding-nul": "/v1/tenants/acme/balances?context.location=a%00b",
}


async def test_forged_cursors_and_control_characters_in_filters_are_422(client) -> None:
    answers, wanted = {}, {}
    for name, path in FORGED.items():
        response = await client.get(path, headers=client.sender.read_headers())
        problem = await response.json()
        paths = [error["path"] for error in problem.get("errors") or []] if response.status == 422 else []
        answers[name] = (response.status, paths)
        wanted[name] = (422, ["query.context.location" if "context" in name else "query.cursor"])
    assert answers == wanted
