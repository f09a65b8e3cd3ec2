"""Versioned schemas (ledger/schema.py): who creates, upgrades or refuses, on both stores."""

from __future__ import annotations

import urllib.parse
import uuid

import psycopg
import pytest
from psycopg.sql import SQL, Identifier

from ledger.group_commit import FactWriter
from ledger.registry import Registry
from ledger.schema import SchemaError, SchemaMode, SchemaPart
from ledger.sql import Database
from ledger.store import open_ledger
from projections.runtime import open_view_store
from services.bootstrap import ensure_schemas, open_registry, registry_database
from services.settings import Settings
from tests.helpers import give, received

RELEASE = {"store": 2, "registry": 2, "views": 3}  # each part's version in this release


def versions(settings: Settings, mode: SchemaMode) -> dict[str, tuple[int | None, int]]:
    return ensure_schemas(settings, mode)


def test_migrate_creates_each_part_once_and_again_changes_nothing(settings):
    assert versions(settings, SchemaMode.MIGRATE) == {part: (None, v) for part, v in RELEASE.items()}
    assert versions(settings, SchemaMode.MIGRATE) == {part: (v, v) for part, v in RELEASE.items()}
    assert versions(settings, SchemaMode.EXISTING) == {part: (v, v) for part, v in RELEASE.items()}


def test_a_process_may_create_a_missing_schema_unless_told_not_to(settings):
    with pytest.raises(SchemaError, match=r"store schema does not exist .*run `reciprocity migrate` first"):
        versions(settings, SchemaMode.EXISTING)
    with pytest.raises(SchemaError, match="registry schema does not exist"):
        Registry(registry_database(settings), SchemaMode.EXISTING)
    with pytest.raises(SchemaError, match="views schema does not exist"):
        open_view_store(settings.database_url, settings.data_dir, schema_mode=SchemaMode.EXISTING)
    assert versions(settings, SchemaMode.CREATE) == {part: (None, v) for part, v in RELEASE.items()}


def test_a_schema_of_a_newer_release_stops_every_process(settings):
    versions(settings, SchemaMode.MIGRATE)
    registry = open_registry(settings)
    with registry.db.transaction() as cursor:
        cursor.execute("UPDATE schema_versions SET version = 7 WHERE part = 'registry'")
    registry.db.close()
    for mode in SchemaMode:
        with pytest.raises(SchemaError, match=r"registry schema is version 7, newer than this release knows \(2\)"):
            Registry(registry_database(settings), mode)


def test_an_older_version_is_upgraded_by_migrate_only(settings):
    """A part at version 1 of a release that knows version 2: refused at start, upgraded by migrate."""
    database = Database(settings.database_url, settings.data_dir / "scratch.sqlite3")
    v1 = SchemaPart("scratch", version=1, probe_table="scratch_things")
    create = ["CREATE TABLE IF NOT EXISTS scratch_things (name TEXT PRIMARY KEY)"]
    assert database.ensure_schema(v1, create, SchemaMode.CREATE) is None
    v2 = SchemaPart(
        "scratch", version=2, probe_table="scratch_things",
        upgrades={2: ["ALTER TABLE scratch_things ADD COLUMN note TEXT"]},
    )  # fmt: skip
    for mode in (SchemaMode.CREATE, SchemaMode.EXISTING):
        with pytest.raises(SchemaError, match=r"scratch schema is version 1, this release needs version 2"):
            database.ensure_schema(v2, create, mode)
    assert database.ensure_schema(v2, create, SchemaMode.MIGRATE) == 1
    assert database.ensure_schema(v2, create, SchemaMode.EXISTING) == 2
    with database.transaction() as cursor:
        cursor.execute("INSERT INTO scratch_things (name, note) VALUES (?, ?)", ("upgraded", "has a note"))
    database.close()


def test_an_unversioned_schema_is_version_0_and_refused_until_migrated(settings):
    """Tables made before versions were recorded: their probe table without a version row."""
    versions(settings, SchemaMode.MIGRATE)
    registry = open_registry(settings)
    with registry.db.transaction() as cursor:
        # Such a registry has version 1's tables: its keys have no id and no last use yet.
        cursor.execute("DROP INDEX registry_api_keys_id")
        cursor.execute("ALTER TABLE registry_api_keys DROP COLUMN id")
        cursor.execute("ALTER TABLE registry_api_keys DROP COLUMN last_used_at")
        cursor.execute("DELETE FROM schema_versions WHERE part = 'registry'")
    registry.db.close()
    with pytest.raises(SchemaError, match="registry schema is version 0"):
        open_registry(settings)
    assert versions(settings, SchemaMode.MIGRATE)["registry"] == (0, 2)


@pytest.mark.postgres
def test_runtime_roles_need_no_ddl_rights_on_postgresql(postgres_url, postgres_schema_url, tmp_path):
    """After the owner migrated, a user with only DML rights records a fact and reads the views, creating
    nothing; where the schema is missing it is told to run migrate, not refused by a permission error."""
    owner = Settings(data_dir=tmp_path / "owner", database_url=postgres_schema_url)
    schema = urllib.parse.parse_qs(urllib.parse.urlsplit(postgres_schema_url).query)["schema"][0]
    user = f"runtime_{uuid.uuid4().hex[:8]}"
    url = urllib.parse.urlsplit(postgres_url)
    runtime_url = urllib.parse.urlunsplit(url._replace(netloc=f"{user}@{url.hostname}:{url.port or 5432}"))
    runtime = Settings(data_dir=tmp_path / "runtime", database_url=f"{runtime_url}?schema={schema}", migrate=False)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(SQL("CREATE ROLE {} LOGIN").format(Identifier(user)))
        try:
            with pytest.raises(SchemaError, match="store schema does not exist"):
                versions(runtime, runtime.schema_mode())
            versions(owner, SchemaMode.MIGRATE)
            for grant in (
                "GRANT USAGE ON SCHEMA {schema} TO {user}",
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {user}",
                "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {user}",
            ):
                admin.execute(SQL(grant).format(schema=Identifier(schema), user=Identifier(user)))
            assert versions(runtime, runtime.schema_mode()) == {part: (v, v) for part, v in RELEASE.items()}
            ledger = open_ledger(runtime.database_url, runtime.data_dir, schema_mode=runtime.schema_mode())
            try:
                [outcome] = FactWriter(ledger).commit([received(give("g1", "ann", "bob", value="2"))])
                assert outcome.status == "recorded"
                assert [stored.position for stored in ledger.read_log(0, 10)] == [outcome.position]
            finally:
                ledger.close()
            Registry(registry_database(runtime), runtime.schema_mode()).create_tenant("acme")
        finally:
            admin.execute(SQL("DROP OWNED BY {}").format(Identifier(user)))
            admin.execute(SQL("DROP ROLE {}").format(Identifier(user)))
