"""Stores written by an earlier release migrate, then answer the same, as they are and after a rebuild.

tests/fixtures/store_457f0f2/ holds a SQLite data directory (`data_dir/`) that commit 457f0f2 wrote through
its CLI and webhooks, and every answer its read API gave (`answers.json`); store_457f0f2_postgres/ holds the
same community written to PostgreSQL, as pg_dump gave it. make_store_fixture.py beside them made both.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.settings import Settings
from tests.helpers import Sender, acknowledgement, envelope, reversal
from tests.processes import Server, cli, cli_json

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent.parent / "fixtures"
RELEASE = {"store": 1, "registry": 2, "views": 1}  # each part's schema version in this release
DUMPED_SCHEMA = "fixture_457f0f2"  # the schema make_store_fixture.py wrote to and pg_dump named


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Settings, dict[str, Any]]:
    """A copy of the old store (the server writes to it) and what the old release answered."""
    if request.param == "sqlite":
        fixture, database_url = FIXTURES / "store_457f0f2", None
        shutil.copytree(fixture / "data_dir", tmp_path / "data")
    else:
        fixture, database_url = FIXTURES / "store_457f0f2_postgres", request.getfixturevalue("postgres_schema_url")
        schema = urllib.parse.parse_qs(urllib.parse.urlsplit(database_url).query)["schema"][0]
        dump = (fixture / "postgres.sql").read_text().replace(DUMPED_SCHEMA, schema)
        with psycopg.connect(request.getfixturevalue("postgres_url"), autocommit=True) as connection:
            connection.execute(dump)
    recorded = json.loads((fixture / "answers.json").read_text())
    return Settings(data_dir=tmp_path / "data", database_url=database_url), recorded


def migrated(settings: Settings) -> None:
    """`reciprocity migrate` on the old store: each part had tables but no recorded version (0)."""
    done = cli_json(settings, "migrate")
    assert done == {part: {"found": 0, "version": version} for part, version in RELEASE.items()}


def caught_up(server: Server, recorded: dict[str, Any]) -> None:
    """Waits until both views reflect each tenant's last fact, as a client that just wrote it would."""
    for tenant, position in recorded["last_positions"].items():
        headers = {"Authorization": f"Bearer {recorded['read_keys'][tenant]}"}
        for view in ("balances", "influence"):
            status, answer = server.get(f"/v1/tenants/{tenant}/{view}?min_position={position}", headers)
            assert status == 200, answer


def differences(server: Server, recorded: dict[str, Any]) -> list[str]:
    """Every recorded read asked again; the ones answered otherwise. A refusal is compared by its status,
    type and title: its detail is prose for people."""
    found = []
    for old in recorded["answers"]:
        headers = {"Authorization": f"Bearer {recorded['read_keys'][old['tenant']]}"}
        status, answer = server.get(old["path"], headers)
        expected = old["answer"]
        if old["status"] >= 400 and isinstance(answer, dict):
            expected = {k: expected.get(k) for k in ("status", "type", "title")}
            answer = {k: answer.get(k) for k in ("status", "type", "title")}
        if (status, answer) != (old["status"], expected):
            found.append(f"{urllib.parse.unquote(old['path'])}: {old['status']} {expected} -> {status} {answer}")
    return found


def test_an_old_store_answers_as_it_did_and_again_after_a_rebuild(old_store, tmp_path):
    """Today's serve on 457f0f2's store: every read answered as then; then `reciprocity rebuild`, and again."""
    settings, recorded = old_store
    assert len(recorded["answers"]) > 200  # every tenant's balances, pairs, influence, maintenance and events
    migrated(settings)
    server = Server(settings, tmp_path / "serve.log")
    try:
        server.start()
        caught_up(server, recorded)
        assert differences(server, recorded) == []
        server.stop()

        rebuilt = cli_json(settings, "rebuild")
        assert rebuilt["position"] == max(recorded["last_positions"].values())

        server.start()
        caught_up(server, recorded)
        assert differences(server, recorded) == []
    finally:
        server.stop()


def test_an_old_store_takes_facts_that_refer_to_its_old_ones(old_store, tmp_path):
    """Acknowledging, reversing and resending facts the old release recorded: the rules see them as before."""
    settings, recorded = old_store
    crm = Sender("acme", "crm", recorded["source_secrets"]["acme/crm"], recorded["read_keys"]["acme"])
    events = next(a for a in recorded["answers"] if a["path"] == "/v1/tenants/acme/events?limit=1000")["answer"]
    old = {event["external_id"]: event for event in events["events"] if event["source"] == "crm"}
    migrated(settings)
    server = Server(settings, tmp_path / "serve.log")

    def post(fact_type: str, data: dict[str, Any]) -> tuple[int, Any]:
        body = json.dumps(envelope((fact_type, data))).encode()
        return server.post(crm.path, body, crm.headers(body))

    try:
        server.start()
        g4, g5, g1 = old["g4"], old["g5"], old["g1"]
        status, thanked = post(*acknowledgement("after-a4", g4["data"]["receiver"], "g4"))
        assert (status, thanked["status"]) == (201, "recorded"), thanked
        status, reversed_ = post(*reversal("after-r5", "g5"))
        assert (status, reversed_["status"]) == (201, "recorded"), reversed_
        assert post(g4["type"], g4["data"]) == (
            200,
            {"status": "duplicate", "event_id": g4["event_id"], "position": g4["position"]},
        )
        status, again = post(*reversal("after-r1", "g1"))  # r1 reversed it in the old release
        assert (status, again["status"], again["event_id"]) == (200, "duplicate", old["r1"]["event_id"])
        status, refused = post(*acknowledgement("after-a1", g1["data"]["receiver"], "g1"))
        assert status == 422, refused

        status, balance = server.get(
            f"/v1/tenants/acme/participants/{g5['data']['giver']}/balance?min_position={reversed_['position']}",
            crm.read_headers(),
        )
        assert status == 200 and balance["position"] >= reversed_["position"]
    finally:
        server.stop()


def test_an_old_store_is_refused_until_it_is_migrated(old_store, tmp_path):
    """No process changes a schema of another version: serve and the admin commands stop, naming the command;
    after `reciprocity migrate` they start, even when they may not create a schema themselves."""
    settings, recorded = old_store
    server = Server(settings, tmp_path / "serve.log")
    with pytest.raises(RuntimeError, match=r"serve exited with 1.*store schema is version 0.*reciprocity migrate"):
        server.start()
    refused = cli(settings, "tenant", "create", "late", "--json")
    assert refused.returncode != 0
    assert "run `reciprocity migrate` first" in json.loads(refused.stdout)["error"]
    migrated(settings)
    assert cli_json(settings, "migrate") == {
        part: {"found": version, "version": version} for part, version in RELEASE.items()
    }  # again: nothing to do
    server = Server(settings, tmp_path / "serve-again.log", RECIPROCITY_MIGRATE="false")
    try:
        server.start()
        caught_up(server, recorded)
    finally:
        server.stop()


def test_an_old_stores_keys_get_ids_by_which_they_are_listed_and_revoked(old_store):
    """After migrate each key the old release made is listed under the first 16 hex digits of its hash (the
    key itself never shown), and revoking it by that id works."""
    settings, recorded = old_store
    migrated(settings)
    ids = {tenant: hashlib.sha256(key.encode()).hexdigest()[:16] for tenant, key in recorded["read_keys"].items()}
    for tenant, key_id in ids.items():
        listed = cli_json(settings, "key", "list", tenant)
        assert [(key["id"], key["scopes"], key["last_used_at"]) for key in listed["keys"]] == [(key_id, ["read"], None)]
        assert recorded["read_keys"][tenant] not in json.dumps(listed)
    assert cli_json(settings, "key", "revoke", "acme", ids["acme"]) == {
        "tenant": "acme",
        "id": ids["acme"],
        "revoked": True,
    }
    assert cli_json(settings, "key", "list", "acme")["keys"] == []
