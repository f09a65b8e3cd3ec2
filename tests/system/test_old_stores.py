"""A store written by a release before participant tokens is refused, never changed (DESIGN section 7).

tests/fixtures/store_457f0f2/ holds a SQLite data directory that commit 457f0f2 wrote through its CLI and
webhooks (its events hold participant ids and notes: store format 0, before versions were recorded);
store_457f0f2_postgres/ holds the same community written to PostgreSQL, as pg_dump gave it.
make_store_fixture.py beside them made both. There are no such stores in use, so nothing converts them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.parse
from pathlib import Path

import psycopg
import pytest

from services.settings import Settings
from tests.processes import Server, cli

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent.parent / "fixtures"
DUMPED_SCHEMA = "fixture_457f0f2"  # the schema make_store_fixture.py wrote to and pg_dump named
REFUSAL = r"store is format version 0 .*cannot convert it"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """A copy of the old store."""
    if request.param == "sqlite":
        shutil.copytree(FIXTURES / "store_457f0f2" / "data_dir", tmp_path / "data")
        return Settings(data_dir=tmp_path / "data")
    database_url = request.getfixturevalue("postgres_schema_url")
    schema = urllib.parse.parse_qs(urllib.parse.urlsplit(database_url).query)["schema"][0]
    dump = (FIXTURES / "store_457f0f2_postgres" / "postgres.sql").read_text().replace(DUMPED_SCHEMA, schema)
    with psycopg.connect(request.getfixturevalue("postgres_url"), autocommit=True) as connection:
        connection.execute(dump)
    return Settings(data_dir=tmp_path / "data", database_url=database_url)


def contents(settings: Settings) -> str:
    """A digest of everything the store holds: its files, or its PostgreSQL schema's tables."""
    digest = hashlib.sha256()
    if settings.database_url is None:
        for path in sorted(settings.data_dir.rglob("*.sqlite3")):
            digest.update(path.read_bytes())
        return digest.hexdigest()
    schema = urllib.parse.parse_qs(urllib.parse.urlsplit(settings.database_url).query)["schema"][0]
    with psycopg.connect(settings.database_url.split("?")[0]) as connection:
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1", (schema,)
        ).fetchall()
        for (table,) in tables:
            rows = connection.execute(f'SELECT * FROM "{schema}"."{table}" ORDER BY 1').fetchall()
            digest.update(f"{table}{rows}".encode())
    return digest.hexdigest()


def test_an_old_store_is_refused_by_serve_migrate_and_the_admin_commands_and_left_as_it_was(old_store, tmp_path):
    before = contents(old_store)
    server = Server(old_store, tmp_path / "serve.log")
    with pytest.raises(RuntimeError, match=f"serve exited with 1.*{REFUSAL}"):
        server.start()
    for command in (["migrate"], ["rebuild"]):
        refused = cli(old_store, *command, "--json")
        assert refused.returncode != 0, command
        error = json.loads(refused.stdout)["error"]
        assert "format version 0" in error and "cannot convert it" in error, error
    refused = cli(old_store, "tenant", "create", "late", "--json")  # its registry is unversioned: refused too
    assert refused.returncode != 0 and "run `reciprocity migrate` first" in json.loads(refused.stdout)["error"]
    assert contents(old_store) == before
