"""`reciprocity participant export|erase` against the configured store while the service runs, on both stores
(DESIGN section 7), and the reserved source name refused by `source add`."""

from __future__ import annotations

import asyncio
import json

from tests.helpers import give, introduction, post_all, problem_of
from tests.processes import cli, cli_json

PERSON = "annika"


async def run(settings, *args: str):
    return await asyncio.to_thread(cli, settings, *args)


async def run_json(settings, *args: str) -> dict:
    return await asyncio.to_thread(cli_json, settings, *args)


def admin_headers(settings) -> dict[str, str]:
    key = cli_json(settings, "key", "add", "acme", "--scope", "admin")["key"]
    return {"Authorization": f"Bearer {key}"}


async def test_export_prints_what_the_route_answers(client, settings):
    position = await post_all(
        client, [give("g1", PERSON, "bob", note="fixed the roof"), introduction("i1", "cas", PERSON, "bob")]
    )
    headers = await asyncio.to_thread(admin_headers, settings)
    response = await client.get(
        f"/v1/tenants/acme/participants/{PERSON}/export?min_position={position}", headers=headers
    )
    assert response.status == 200, await response.text()
    over_http = await response.json()
    printed = await run_json(settings, "participant", "export", "acme", PERSON)
    # Influence is recomputed in the background, and may move between the two reads.
    assert {k: v for k, v in printed.items() if k != "influence"} == {
        k: v for k, v in over_http.items() if k != "influence"
    }
    assert [fact["external_id"] for fact in printed["facts"]] == ["g1", "i1"]
    assert printed["facts"][0]["data"]["note"] == "fixed the roof"
    readable = await run(settings, "participant", "export", "acme", PERSON)  # without --json: indented JSON
    assert readable.returncode == 0 and json.loads(readable.stdout)["participant"] == PERSON
    assert readable.stdout.startswith('{\n  "participant"')


async def test_erase_while_the_service_runs_then_everything_is_404(client, settings):
    await post_all(client, [give("g1", PERSON, "bob", note="fixed the roof"), give("g2", "bob", "cas")])
    erased = await run_json(settings, "participant", "erase", "acme", PERSON)
    assert set(erased) == {"tenant", "status", "token", "position"}
    assert (erased["tenant"], erased["status"]) == ("acme", "erased") and len(erased["token"]) == 16
    log = await client.get("/v1/tenants/acme/events", headers=client.sender.read_headers())
    events = (await log.json())["events"]
    assert events[0]["data"]["giver"] == f"erased-{erased['token']}" and "note" not in events[0]["data"]
    assert events[-1]["type"] == "participant.erased" and events[-1]["position"] == erased["position"]
    headers = await asyncio.to_thread(admin_headers, settings)
    await problem_of(await client.get(f"/v1/tenants/acme/participants/{PERSON}/export", headers=headers), 404)
    await problem_of(await client.delete(f"/v1/tenants/acme/participants/{PERSON}", headers=headers), 404)
    for action in ("erase", "export"):
        again = await run(settings, "participant", action, "acme", PERSON, "--json")
        assert again.returncode == 1
        assert json.loads(again.stdout)["error"].startswith(f"no participant {PERSON!r} in tenant 'acme'")


async def test_unknown_tenants_ids_and_the_reserved_source_are_clear_errors(client, settings):
    await post_all(client, [give("g1", PERSON, "bob")])
    unknown = await run(settings, "participant", "erase", "nobody", PERSON)
    assert unknown.returncode == 1 and "no tenant 'nobody'" in unknown.stderr
    not_an_id = await run(settings, "participant", "export", "acme", "a.b")
    assert not_an_id.returncode == 2 and "is not a participant id" in not_an_id.stderr
    reserved = await run(settings, "source", "add", "acme", "reciprocity", "--json")
    assert reserved.returncode == 1
    assert "reserved" in json.loads(reserved.stdout)["error"]
    listed = await run_json(settings, "source", "list", "acme")
    assert [source["source"] for source in listed["sources"]] == ["crm"]
    readable = await run(settings, "participant", "erase", "acme", PERSON)  # without --json: one field a line
    assert readable.returncode == 0 and "status: erased" in readable.stdout
