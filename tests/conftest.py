"""Fixtures: the same tests run against a real SQLite file and the real PostgreSQL (a fresh schema each).

Without a reachable PostgreSQL the PostgreSQL variants skip with the reason; with
RECIPROCITY_REQUIRE_POSTGRES=1 (set by .ci/run) they fail instead, so CI can never skip them silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.sql import SQL, Identifier

from ledger.store import Ledger, open_ledger
from projections.runtime import open_view_store
from projections.viewstore import ViewStore
from services.bootstrap import Components, open_components, open_registry
from services.http.app import create_app
from services.settings import Settings
from tests.helpers import Sender

TEST_DATABASE_URL = os.environ.get("RECIPROCITY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
POSTGRES_REQUIRED = os.environ.get("RECIPROCITY_REQUIRE_POSTGRES") == "1"


def _postgres_unreachable() -> str | None:
    try:
        with psycopg.connect(TEST_DATABASE_URL, connect_timeout=3):
            return None
    except psycopg.Error as failure:
        return f"PostgreSQL not reachable at {TEST_DATABASE_URL}: {str(failure).strip()}"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    reason = _postgres_unreachable()
    if reason:
        if POSTGRES_REQUIRED:
            pytest.fail(f"{reason} (RECIPROCITY_REQUIRE_POSTGRES=1 makes this mandatory)")
        pytest.skip(reason)
    return TEST_DATABASE_URL


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    """A database URL whose schema is new and is dropped after the test."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield f"{postgres_url}?schema={schema}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for one store; the test runs once per store."""
    database_url = request.getfixturevalue("postgres_schema_url") if request.param == "postgresql" else None
    return Settings(data_dir=tmp_path / "data", database_url=database_url, registry_refresh_s=0.05)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", registry_refresh_s=0.05)


@pytest.fixture
def tenant_setup(settings: Settings) -> Sender:
    """Tenant `acme` with source `crm` and a read key, created before the service starts."""
    return make_sender(settings, "acme", "crm")


def make_sender(settings: Settings, tenant: str, source: str) -> Sender:
    registry = open_registry(settings)
    try:
        if tenant not in registry.snapshot().tenants:
            registry.create_tenant(tenant)
        secret = registry.add_source(tenant, source)
        read_key = registry.add_key(tenant, ["read"]).key
    finally:
        registry.db.close()
    return Sender(tenant=tenant, source=source, secret=secret, read_key=read_key)


@pytest.fixture
def stores(settings: Settings) -> Iterator[tuple[Ledger, ViewStore]]:
    """The store and the views database of `settings`, opened directly (no service around them)."""
    ledger = open_ledger(settings.database_url, settings.data_dir)
    views = open_view_store(settings.database_url, settings.data_dir)
    yield ledger, views
    views.close()
    ledger.close()


@pytest.fixture
async def components(settings: Settings) -> AsyncIterator[Components]:
    opened = await open_components(settings)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def client(aiohttp_client, settings: Settings, tenant_setup: Sender, components: Components):
    """An HTTP client of the real app on the real store; `client.sender` signs like the `crm` source."""
    test_client = await aiohttp_client(create_app(settings, components))
    test_client.sender = tenant_setup
    test_client.components = components
    return test_client
