"""The registry's admin lifecycle (DESIGN section 6): keys named by ids, lists without secrets, revocation,
approximate last use, and the upgrade of a version-1 registry, on both stores."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from ledger.registry import KEY_USE_RESOLUTION_S, Registry, RegistryError
from ledger.schema import SchemaError, SchemaMode
from ledger.sql import Database
from services.bootstrap import open_registry, registry_database
from services.settings import Settings

# The registry tables as version 1 (the release before key ids) created them, and a key it stored.
V1_DDL = (
    "CREATE TABLE registry_tenants (tenant TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE registry_sources ("
    " tenant TEXT NOT NULL, source TEXT NOT NULL, rate_limit_per_s DOUBLE PRECISION,"
    " created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (tenant, source))",
    "CREATE TABLE registry_source_secrets ("
    " tenant TEXT NOT NULL, source TEXT NOT NULL, secret TEXT NOT NULL,"
    " created_at DOUBLE PRECISION NOT NULL, valid_until DOUBLE PRECISION, PRIMARY KEY (tenant, source, secret))",
    "CREATE TABLE registry_api_keys ("
    " key_hash TEXT PRIMARY KEY, tenant TEXT NOT NULL, scopes TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE registry_version (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS schema_versions (part TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    "INSERT INTO schema_versions (part, version) VALUES ('registry', 1)",
    "INSERT INTO registry_tenants (tenant, created_at) VALUES ('acme', 1700000000.0)",
    "INSERT INTO registry_api_keys (key_hash, tenant, scopes, created_at) VALUES (?, 'acme', 'read', 1700000001.0)",
    "INSERT INTO registry_version (id, version) VALUES (1, 3)",
)
V1_KEY = "rk_made-by-version-1"
TABLES = ("registry_tenants", "registry_sources", "registry_source_secrets", "registry_api_keys", "registry_version")


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    opened = open_registry(settings)
    opened.create_tenant("acme")
    yield opened
    opened.db.close()


def write_v1_registry(settings: Settings) -> None:
    database = registry_database(settings)
    with database.transaction() as cursor:
        for statement in V1_DDL:
            cursor.execute(statement, (hashlib.sha256(V1_KEY.encode()).hexdigest(),) if "?" in statement else ())
    database.close()


def shape(database: Database) -> dict[str, Any]:
    """Every registry table's columns (name, type, nullability, default, order) and indexes."""
    if database.dialect.postgres:
        columns = database.query(
            "SELECT table_name, ordinal_position, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = current_schema() ORDER BY 1, 2"
        )
        indexes = database.query(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() ORDER BY 1, 2"
        )
        return {"columns": [c for c in columns if c[0] in TABLES], "indexes": [i for i in indexes if i[0] in TABLES]}
    found: dict[str, Any] = {}
    for table in TABLES:
        indexes = database.query(f"SELECT name, \"unique\" FROM pragma_index_list('{table}') ORDER BY name")
        found[table] = {
            "columns": database.query(f"SELECT * FROM pragma_table_info('{table}')"),
            "indexes": [
                (name, unique, database.query(f"SELECT name FROM pragma_index_info('{name}')"))
                for name, unique in indexes
            ],
        }
    return found


def drop_registry(database: Database) -> None:
    with database.transaction() as cursor:
        for table in TABLES:
            cursor.execute(f"DROP TABLE {table}")
        cursor.execute("DELETE FROM schema_versions WHERE part = 'registry'")


def test_a_new_key_has_an_id_and_the_list_shows_ids_never_keys_or_hashes(registry):
    """`key add` names the key by an id; `key list` shows that id, the scopes and the times, nothing secret."""
    first = registry.add_key("acme", ["read"])
    second = registry.add_key("acme", ["ingest", "read"])
    assert len({first.id, second.id}) == 2 and all(len(new.id) == 16 for new in (first, second))
    listed = registry.keys("acme")
    assert [(entry.id, entry.scopes, entry.last_used_at) for entry in listed] == [
        (first.id, ("read",), None),
        (second.id, ("ingest", "read"), None),
    ]
    shown = repr(listed)
    for new in (first, second):
        assert new.key not in shown and hashlib.sha256(new.key.encode()).hexdigest() not in shown
    assert registry.snapshot().keys[hashlib.sha256(first.key.encode()).hexdigest()].id == first.id


def test_tenants_and_sources_are_listed_without_secrets(registry):
    registry.create_tenant("beta")
    secret = registry.add_source("acme", "crm", rate_limit_per_s=5)
    registry.add_source("acme", "app")
    assert [entry.tenant for entry in registry.tenants()] == ["acme", "beta"]
    sources = registry.sources("acme")
    assert [(entry.source, entry.rate_limit_per_s) for entry in sources] == [("app", None), ("crm", 5)]
    assert all(entry.created_at > 0 for entry in sources) and secret not in repr(sources)
    assert registry.sources("beta") == [] and registry.keys("beta") == []


def test_the_ledgers_own_source_name_is_reserved(registry):
    """Erasures are recorded by the ledger itself as source `reciprocity` (DESIGN section 2): no tenant may add it."""
    version = registry.version()
    with pytest.raises(RegistryError, match="'reciprocity' is reserved"):
        registry.add_source("acme", "reciprocity")
    assert registry.sources("acme") == [] and registry.version() == version
    registry.add_source("acme", "reciprocity-crm")  # only the name itself is reserved
    assert [entry.source for entry in registry.sources("acme")] == ["reciprocity-crm"]


def test_revoking_a_key_removes_it_and_tells_running_processes(registry):
    """The snapshot no longer holds it and `registry_version` moved, which is what running processes poll."""
    kept, revoked = registry.add_key("acme", ["read"]), registry.add_key("acme", ["read"])
    version = registry.version()
    registry.revoke_key("acme", revoked.id)
    assert registry.version() > version
    assert [entry.id for entry in registry.keys("acme")] == [kept.id]
    assert set(registry.snapshot().keys) == {hashlib.sha256(kept.key.encode()).hexdigest()}


def test_an_unknown_tenant_or_key_id_is_a_clear_error(registry):
    """Including another tenant's key: revoking by id never reaches across tenants."""
    registry.create_tenant("beta")
    theirs = registry.add_key("beta", ["read"])
    with pytest.raises(RegistryError, match=f"no key '{theirs.id}' in tenant 'acme'"):
        registry.revoke_key("acme", theirs.id)
    with pytest.raises(RegistryError, match="no key 'nope' in tenant 'acme'"):
        registry.revoke_key("acme", "nope")
    for unknown in (registry.keys, registry.sources, lambda t: registry.revoke_key(t, theirs.id)):
        with pytest.raises(RegistryError, match="no tenant 'gamma'"):
            unknown("gamma")
    assert [entry.id for entry in registry.keys("beta")] == [theirs.id]


def test_last_use_is_written_at_most_once_a_minute_per_key_and_changes_nothing_else(registry):
    """A use within a minute of the recorded one is not written; a later one is; `registry_version` stays,
    so recording use never makes running processes reload."""
    new = registry.add_key("acme", ["read"])
    version = registry.version()
    registry.record_keys_used({new.id: 1_800_000_000.0})
    registry.record_keys_used({new.id: 1_800_000_000.0 + KEY_USE_RESOLUTION_S / 2})
    assert registry.keys("acme")[0].last_used_at == 1_800_000_000.0
    registry.record_keys_used({new.id: 1_800_000_000.0 + KEY_USE_RESOLUTION_S + 1, "gone": 1.0})
    assert registry.keys("acme")[0].last_used_at == 1_800_000_000.0 + KEY_USE_RESOLUTION_S + 1
    assert registry.version() == version


@pytest.mark.parametrize("unversioned", [False, True], ids=["version-1", "version-0"])
def test_migrate_brings_an_older_registry_to_the_shape_of_a_new_one(settings, unversioned):
    """A version-1 registry (and an older one that recorded no version) is refused until `migrate`, which gives
    its keys stable ids from their hashes and leaves the tables exactly as a new registry's."""
    fresh = Registry(registry_database(settings), SchemaMode.MIGRATE)
    created = shape(fresh.db)
    drop_registry(fresh.db)
    fresh.db.close()
    write_v1_registry(settings)
    if unversioned:
        database = registry_database(settings)
        with database.transaction() as cursor:
            cursor.execute("DELETE FROM schema_versions WHERE part = 'registry'")
        database.close()
    for mode in (SchemaMode.CREATE, SchemaMode.EXISTING):
        with pytest.raises(SchemaError, match=r"registry schema is version [01], this release needs version 2"):
            Registry(registry_database(settings), mode)
    upgraded = Registry(registry_database(settings), SchemaMode.MIGRATE)
    try:
        assert upgraded.schema_found == (0 if unversioned else 1)
        assert shape(upgraded.db) == created
        old_id = hashlib.sha256(V1_KEY.encode()).hexdigest()[:16]
        assert [(entry.id, entry.scopes, entry.created_at) for entry in upgraded.keys("acme")] == [
            (old_id, ("read",), 1700000001.0)
        ]
        assert upgraded.snapshot().keys[hashlib.sha256(V1_KEY.encode()).hexdigest()].id == old_id
        new = upgraded.add_key("acme", ["read"])
        upgraded.revoke_key("acme", old_id)
        assert [entry.id for entry in upgraded.keys("acme")] == [new.id]
    finally:
        upgraded.db.close()
    again = Registry(registry_database(settings), SchemaMode.EXISTING)
    assert again.schema_found == 2
    again.db.close()
