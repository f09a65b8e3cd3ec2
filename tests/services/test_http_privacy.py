"""A person's data over HTTP (DESIGN section 7), on both stores: erasure and export with an admin key, the
ids and the source name that are reserved, and which role serves which route."""

from __future__ import annotations

import json
import random
import re

import pytest

from services.bootstrap import open_registry
from services.http.app import create_app
from services.settings import Settings
from tests.conftest import make_sender
from tests.helpers import Sender, acknowledgement, envelope, give, introduction, post_all, problem_of, reversal

TOKEN = re.compile(r"^[0-9a-f]{16}$")
PERSON = "annika"  # an id no other text of the answers contains by chance (hex, dates, uuids)


def add_key(settings: Settings, tenant: str, scopes: list[str]) -> dict[str, str]:
    registry = open_registry(settings)
    try:
        return {"Authorization": f"Bearer {registry.add_key(tenant, scopes).key}"}
    finally:
        registry.db.close()


@pytest.fixture
def admin(settings: Settings, client) -> dict[str, str]:
    """Headers with an `admin` key of `acme`."""
    return add_key(settings, "acme", ["admin"])


async def erase(client, admin: dict[str, str], participant: str, status: int = 200) -> dict:
    response = await client.delete(f"/v1/tenants/acme/participants/{participant}", headers=admin)
    if status != 200:
        return await problem_of(response, status)
    assert response.status == 200, await response.text()
    return await response.json()


async def events(client) -> list[dict]:
    response = await client.get("/v1/tenants/acme/events?limit=1000", headers=client.sender.read_headers())
    assert response.status == 200, await response.text()
    return (await response.json())["events"]


# --- erasure ---------------------------------------------------------------------------------------------


async def test_erasure_answers_the_token_and_the_log_shows_the_tombstone_without_notes(client, admin):
    await post_all(
        client,
        [
            give("g1", PERSON, "bob", note="fixed the roof"),
            acknowledgement("a1", "bob", "g1", note="thanks, it holds"),
            give("g2", "bob", "cas", note="lent a ladder"),
            introduction("i1", "cas", PERSON, "bob", note="you two should talk"),
        ],
    )
    erased = await erase(client, admin, PERSON)
    assert set(erased) == {"status", "token", "position"} and erased["status"] == "erased"
    assert TOKEN.match(erased["token"]) and erased["position"] > 0
    tombstone = f"erased-{erased['token']}"
    logged = {fact["external_id"]: fact for fact in await events(client)}
    assert PERSON not in json.dumps(logged)
    assert logged["g1"]["data"]["giver"] == tombstone and "note" not in logged["g1"]["data"]
    # The acknowledgement names bob only, but its note concerns the give it acknowledges: gone too.
    assert logged["a1"]["data"]["acknowledger"] == "bob" and "note" not in logged["a1"]["data"]
    assert logged["i1"]["data"]["introduced"] == [tombstone, "bob"] and "note" not in logged["i1"]["data"]
    assert logged["g2"]["data"]["note"] == "lent a ladder"  # a fact without them keeps its note
    erasure = logged[f"erase-{erased['token']}"]
    assert (erasure["type"], erasure["source"], erasure["position"]) == (
        "participant.erased",
        "reciprocity",
        erased["position"],
    )
    assert erasure["data"] == {"token": erased["token"]}


async def test_the_request_log_never_names_whom_it_erased_or_exported(client, admin, capsys):
    await post_all(client, [give("g1", PERSON, "bob")])
    capsys.readouterr()
    await client.get(f"/v1/tenants/acme/participants/{PERSON}/export", headers=admin)
    erased = await erase(client, admin, PERSON)
    await erase(client, admin, PERSON, 404)
    logged = capsys.readouterr().out
    assert PERSON not in logged
    assert logged.count("/v1/tenants/acme/participants/{participant}") == 3 and erased["token"] in logged


async def test_erasing_twice_or_an_unknown_id_is_404(client, admin):
    await post_all(client, [give("g1", PERSON, "bob")])
    await erase(client, admin, PERSON)
    again = await erase(client, admin, PERSON, 404)
    never = await erase(client, admin, "nobody", 404)
    assert again["detail"] == f"no participant {PERSON!r} in this tenant"
    assert never["detail"] == "no participant 'nobody' in this tenant"


async def test_after_erasure_the_balance_is_404_and_the_others_are_unchanged(client, admin):
    position = await post_all(client, [give("g1", PERSON, "bob", value="3"), give("g2", "bob", "cas", value="2")])
    headers = client.sender.read_headers()
    path = f"/v1/tenants/acme/participants/{PERSON}/balance"
    before = await client.get(f"{path}?min_position={position}", headers=headers)
    assert before.status == 200, await before.text()
    bob_before = await (await client.get("/v1/tenants/acme/participants/bob/balance", headers=headers)).json()
    erased = await erase(client, admin, PERSON)
    after = f"?min_position={erased['position']}"
    gone = await client.get(f"/v1/tenants/acme/participants/{PERSON}/balance{after}", headers=headers)
    await problem_of(gone, 404)
    bob = await (await client.get(f"/v1/tenants/acme/participants/bob/balance{after}", headers=headers)).json()
    assert {k: v for k, v in bob.items() if k != "position"} == {k: v for k, v in bob_before.items() if k != "position"}


async def test_a_fact_naming_them_after_erasure_starts_a_new_participant(client, admin):
    await post_all(client, [give("g1", PERSON, "bob")])
    first = await erase(client, admin, PERSON)
    await post_all(client, [give("g2", "cas", PERSON)])
    logged = {fact["external_id"]: fact for fact in await events(client)}
    assert logged["g1"]["data"]["giver"] == f"erased-{first['token']}"
    assert logged["g2"]["data"]["receiver"] == PERSON
    second = await erase(client, admin, PERSON)
    assert second["token"] != first["token"] and second["position"] > first["position"]


@pytest.mark.parametrize("scopes", [["read"], ["ingest"], ["read", "ingest"]])
async def test_erasure_and_export_need_an_admin_key(client, settings, scopes):
    await post_all(client, [give("g1", PERSON, "bob")])
    headers = add_key(settings, "acme", scopes)
    refused = await client.delete(f"/v1/tenants/acme/participants/{PERSON}", headers=headers)
    await problem_of(refused, 403)
    await problem_of(await client.get(f"/v1/tenants/acme/participants/{PERSON}/export", headers=headers), 403)
    assert (await events(client))[0]["data"]["giver"] == PERSON  # nothing was erased


async def test_another_tenants_admin_key_finds_nothing_and_no_key_is_401(client, settings):
    await post_all(client, [give("g1", PERSON, "bob")])
    make_sender(settings, "zeta", "chat")
    other = add_key(settings, "zeta", ["admin"])
    await problem_of(await client.delete(f"/v1/tenants/acme/participants/{PERSON}", headers=other), 404)
    await problem_of(await client.get(f"/v1/tenants/acme/participants/{PERSON}/export", headers=other), 404)
    # Their own tenant never saw this id: 404 as well.
    await problem_of(await client.delete(f"/v1/tenants/zeta/participants/{PERSON}", headers=other), 404)
    await problem_of(await client.delete(f"/v1/tenants/acme/participants/{PERSON}"), 401)
    await problem_of(await client.get(f"/v1/tenants/acme/participants/{PERSON}/export"), 401)
    assert (await events(client))[0]["data"]["giver"] == PERSON


async def test_a_participant_that_is_no_id_or_a_query_parameter_is_422(client, admin):
    bad_id = await problem_of(await client.delete("/v1/tenants/acme/participants/a.b", headers=admin), 422)
    assert bad_id["errors"][0]["path"] == "path.participant"
    typo = await problem_of(await client.delete(f"/v1/tenants/acme/participants/{PERSON}?force=1", headers=admin), 422)
    assert typo["errors"][0]["path"] == "query.force"
    bad_export = await problem_of(await client.get("/v1/tenants/acme/participants/a.b/export", headers=admin), 422)
    assert bad_export["errors"][0]["path"] == "path.participant"


# --- reserved ids and source -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fact", "path"),
    [
        (give("g1", "erased-0123456789abcdef", "bob"), "data.giver"),
        (give("g1", "ann", "erased-x"), "data.receiver"),
        (introduction("i1", "erased-", "ann", "bob"), "data.introducer"),
        (introduction("i1", "cas", "ann", "erased-0123456789abcdef"), "data.introduced[1]"),
        (acknowledgement("a1", "erased-bob", "g1"), "data.acknowledger"),
    ],
)
async def test_a_fact_naming_a_tombstone_is_422_naming_the_field(client, fact, path):
    problem = await problem_of(await client.sender.post(client, fact), 422)
    assert [(error["path"], error["rule"]) for error in problem["errors"]] == [(path, "participant_not_reserved")]
    assert await events(client) == []


async def test_a_batch_item_naming_a_tombstone_is_rejected_alone(client):
    response = await client.sender.post_batch(client, [give("g1", "ann", "bob"), give("g2", "erased-1", "bob")])
    assert response.status == 200
    recorded, rejected = (await response.json())["results"]
    assert recorded["status"] == "recorded" and rejected["status"] == "rejected"
    assert rejected["problem"]["errors"][0] == {
        "path": "data.giver",  # an item is validated on its own: paths are the item's
        "rule": "participant_not_reserved",
        "message": rejected["problem"]["errors"][0]["message"],
    }


async def test_the_ledgers_own_source_takes_no_webhooks(client, settings):
    """Even where a registry from before the name was reserved holds a source of that name."""
    registry = open_registry(settings)
    try:
        with registry.db.transaction() as cursor:
            cursor.execute(
                "INSERT INTO registry_sources (tenant, source, rate_limit_per_s, created_at) VALUES (?, ?, ?, ?)",
                ("acme", "reciprocity", None, 0.0),
            )
            cursor.execute(
                "INSERT INTO registry_source_secrets (tenant, source, secret, created_at) VALUES (?, ?, ?, ?)",
                ("acme", "reciprocity", client.sender.secret, 0.0),
            )
    finally:
        registry.db.close()
    await client.components.registry.refresh()
    posing = Sender("acme", "reciprocity", client.sender.secret, client.sender.read_key)
    body = json.dumps(envelope(give("erase-0123456789abcdef", "ann", "bob"))).encode()
    response = await client.post(posing.path, data=body, headers=posing.headers(body))
    problem = await problem_of(response, 404)
    assert problem["type"] == "/problems/unknown-source"
    assert await events(client) == []


async def test_the_published_document_states_the_reserved_ids_and_the_admin_routes(client):
    document = await (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    fields = [
        schemas["GiveData"]["properties"]["giver"],
        schemas["GiveData"]["properties"]["receiver"],
        schemas["IntroductionData"]["properties"]["introducer"],
        schemas["IntroductionData"]["properties"]["introduced"]["items"],
        schemas["AcknowledgementData"]["properties"]["acknowledger"],
    ]
    for field in fields:
        assert re.search(field["pattern"], "ann") and not re.search(field["pattern"], "erased-0123456789abcdef")
        assert "erased-" in field["description"]
    participant = document["paths"]["/v1/tenants/{tenant}/participants/{participant}"]
    export = document["paths"]["/v1/tenants/{tenant}/participants/{participant}/export"]
    assert participant["delete"]["security"] == export["get"]["security"] == [{"adminKey": []}]
    assert participant["delete"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ParticipantErased"
    )
    assert export["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ParticipantExport"
    )
    # A read route's participant may be a tombstone: its pattern takes one.
    balance = document["paths"]["/v1/tenants/{tenant}/participants/{participant}/balance"]["get"]
    (path_participant,) = [p for p in balance["parameters"] if p["name"] == "participant"]
    assert re.search(path_participant["schema"]["pattern"], "erased-0123456789abcdef")


# --- export ----------------------------------------------------------------------------------------------


async def test_export_holds_their_facts_and_what_the_views_answer(client, admin):
    position = await post_all(
        client,
        [
            give("g1", PERSON, "bob", value="3", note="fixed the roof", occurred_at="2026-03-01T10:00:00Z"),
            give("g2", "bob", "cas", value="2"),  # not theirs
            acknowledgement("a1", "bob", "g1", note="thanks"),  # of their give: theirs too
            introduction("i1", "cas", PERSON, "dee"),
            reversal("r1", "a1"),  # of an acknowledgement of their give
            give("g3", "dee", PERSON, value="1", occurred_at="2026-01-01T10:00:00Z"),
        ],
    )
    response = await client.get(f"/v1/tenants/acme/participants/{PERSON}/export?min_position={position}", headers=admin)
    assert response.status == 200, await response.text()
    export = await response.json()
    assert set(export) == {"participant", "facts", "balance", "influence", "maintenance", "position"}
    assert export["participant"] == PERSON and export["position"] >= position
    assert [fact["external_id"] for fact in export["facts"]] == ["g1", "a1", "i1", "r1", "g3"]
    logged = {fact["external_id"]: fact for fact in await events(client)}
    assert export["facts"] == [logged[fact["external_id"]] for fact in export["facts"]]
    assert export["facts"][0]["data"]["note"] == "fixed the roof"
    headers = client.sender.read_headers()
    balance = await (await client.get(f"/v1/tenants/acme/participants/{PERSON}/balance", headers=headers)).json()
    maintenance = await (await client.get(f"/v1/tenants/acme/maintenance?participant={PERSON}", headers=headers)).json()
    assert export["balance"] == balance and balance["given"] == {"count": 1, "value": "3"}
    assert export["maintenance"] == maintenance and maintenance["participant"] == PERSON
    influence = await client.get(f"/v1/tenants/acme/participants/{PERSON}/influence", headers=headers)
    assert export["influence"] == (await influence.json() if influence.status == 200 else None)


async def test_export_of_an_unknown_or_erased_participant_is_404(client, admin):
    await post_all(client, [give("g1", PERSON, "bob", note="fixed the roof")])
    await problem_of(await client.get("/v1/tenants/acme/participants/nobody/export", headers=admin), 404)
    await erase(client, admin, PERSON)
    await problem_of(await client.get(f"/v1/tenants/acme/participants/{PERSON}/export", headers=admin), 404)


async def test_export_shows_an_erased_counterpart_as_a_tombstone(client, admin):
    await post_all(client, [give("g1", PERSON, "bob", note="fixed the roof"), give("g2", PERSON, "cas", note="ok")])
    bob = await erase(client, admin, "bob")
    response = await client.get(f"/v1/tenants/acme/participants/{PERSON}/export", headers=admin)
    facts = (await response.json())["facts"]
    assert [(fact["data"]["receiver"], fact["data"].get("note")) for fact in facts] == [
        (f"erased-{bob['token']}", None),
        ("cas", "ok"),
    ]


def random_history(rng: random.Random, n_facts: int) -> list:
    """Gives, introductions, acknowledgements and reversals among five people, PERSON one of them; some break a
    rule (a second acknowledgement, a reversal of a reversal) and are refused, as senders' facts may be."""
    people = [PERSON, "ann", "bob", "cas", "dan"]
    facts: list = []
    targets: list[tuple[str, list[str]]] = []  # a give's or introduction's id, and who may acknowledge it
    for n in range(n_facts):
        roll = rng.random()
        if roll < 0.45 or not targets:
            giver, receiver = rng.sample(people, 2)
            facts.append(give(f"g{n}", giver, receiver, note=f"note {n}"))
            targets.append((f"g{n}", [receiver]))
        elif roll < 0.6:
            introducer, first, second = rng.sample(people, 3)
            facts.append(introduction(f"i{n}", introducer, first, second, note=f"note {n}"))
            targets.append((f"i{n}", [first, second]))
        elif roll < 0.85:
            ref, acknowledgers = rng.choice(targets)
            facts.append(acknowledgement(f"a{n}", rng.choice(acknowledgers), ref, note=f"note {n}"))
        else:
            facts.append(reversal(f"r{n}", rng.choice([fact[1]["id"] for fact in facts])))
    return facts


def concerned(fact_type: str, data: dict, recorded: dict[str, set[str]]) -> set[str]:
    """Whom a fact concerns, computed here apart from the store: whom it names, and for an acknowledgement or
    reversal whom the fact it refers to concerns."""
    named = {data[field] for field in ("giver", "receiver", "introducer", "acknowledger") if field in data}
    named |= set(data.get("introduced", ()))
    if fact_type in ("acknowledgement.recorded", "reversal.recorded"):
        named |= recorded[data["ref"]["id"]]
    return named


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_export_lists_exactly_the_facts_concerning_them_on_random_histories(client, admin, seed):
    rng = random.Random(seed)
    facts = random_history(rng, 70)
    recorded: dict[str, set[str]] = {}  # external id -> whom it concerns, for the facts the ledger took
    expected: list[str] = []
    for n, (fact_type, data) in enumerate(facts):
        if n == 40:  # someone else is erased midway: their facts stay in the export, under the tombstone
            await erase(client, admin, "dan")
        response = await client.sender.post(client, (fact_type, data))
        # 200: reversing a reversed fact is a duplicate of the first reversal; 409 and 422: rules refused it.
        assert response.status in (200, 201, 409, 422), await response.text()
        if response.status == 201:
            recorded[data["id"]] = concerned(fact_type, data, recorded)
            if PERSON in recorded[data["id"]]:
                expected.append(data["id"])
    response = await client.get(f"/v1/tenants/acme/participants/{PERSON}/export", headers=admin)
    assert response.status == 200, await response.text()
    exported = (await response.json())["facts"]
    assert [fact["external_id"] for fact in exported] == expected
    assert len(expected) > 10  # the history gave the export something to be wrong about
    logged = {fact["event_id"]: fact for fact in await events(client)}
    assert exported == [logged[fact["event_id"]] for fact in exported]  # as the log shows them
    assert [fact["position"] for fact in exported] == sorted(fact["position"] for fact in exported)


# --- roles -----------------------------------------------------------------------------------------------


def routes(settings: Settings, parts: set[str]) -> set[tuple[str, str]]:
    app = create_app(settings, parts=frozenset(parts))
    return {(route.method, route.resource.canonical) for route in app.router.routes() if route.resource}


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_erasure_is_on_the_ingest_role_and_export_on_the_query_role(settings):
    erasure = ("DELETE", "/v1/tenants/{tenant}/participants/{participant}")
    export = ("GET", "/v1/tenants/{tenant}/participants/{participant}/export")
    ingest, query = routes(settings, {"ingest"}), routes(settings, {"query"})
    assert erasure in ingest and export not in ingest
    assert export in query and erasure not in query
    assert {erasure, export} <= routes(settings, {"ingest", "query", "projector", "relay"})
