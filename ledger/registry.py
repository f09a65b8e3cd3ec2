"""Tenants, their sources (with signing secrets) and API keys: ordinary tables, never facts.

Admin commands write here while the server runs; every change bumps `registry_version`, which a running
process reads before it refuses an unknown key or source and polls for revocations. Secrets are stored
recoverably (HMAC needs them); API keys only as SHA-256 hashes, named by a non-secret id. Neither a secret
nor a key is ever logged, listed or shown twice.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field

from ledger.participants import ERASURE_SOURCE
from ledger.schema import SchemaMode, SchemaPart
from ledger.signatures import new_secret, secret_key
from ledger.sql import Cursor, Database

SCOPES = ("read", "ingest", "admin")
API_KEY_PREFIX = "rk_"

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS registry_tenants (tenant TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS registry_sources ("
    " tenant TEXT NOT NULL, source TEXT NOT NULL, rate_limit_per_s DOUBLE PRECISION,"
    " created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (tenant, source))",
    # valid_until is NULL for the current secret; a rotated-out secret keeps working until then.
    "CREATE TABLE IF NOT EXISTS registry_source_secrets ("
    " tenant TEXT NOT NULL, source TEXT NOT NULL, secret TEXT NOT NULL,"
    " created_at DOUBLE PRECISION NOT NULL, valid_until DOUBLE PRECISION, PRIMARY KEY (tenant, source, secret))",
    # id and last_used_at last, with a default, as version 2's ALTER TABLE adds them: both shapes are the same.
    "CREATE TABLE IF NOT EXISTS registry_api_keys ("
    " key_hash TEXT PRIMARY KEY, tenant TEXT NOT NULL, scopes TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
    " id TEXT NOT NULL DEFAULT '', last_used_at DOUBLE PRECISION)",
    "CREATE UNIQUE INDEX IF NOT EXISTS registry_api_keys_id ON registry_api_keys (id)",
    "CREATE TABLE IF NOT EXISTS registry_version (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)",
)

# Version 2: keys get an id to list and revoke them by. SQLite adds a NOT NULL column only with a default.
# A key made before gets the first 16 hex digits of its hash: stable, and no help in finding the key.
KEY_IDS_UPGRADE = (
    "ALTER TABLE registry_api_keys ADD COLUMN id TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE registry_api_keys ADD COLUMN last_used_at DOUBLE PRECISION",
    "UPDATE registry_api_keys SET id = substr(key_hash, 1, 16)",
    "CREATE UNIQUE INDEX IF NOT EXISTS registry_api_keys_id ON registry_api_keys (id)",
)

SCHEMA_PART = SchemaPart("registry", version=2, probe_table="registry_tenants", upgrades={2: KEY_IDS_UPGRADE})
KEY_USE_RESOLUTION_S = 60.0  # last_used_at is written at most once a minute per key


class RegistryError(Exception):
    """An admin command cannot be done as asked (the message says why)."""


def key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True)
class SourceAuth:
    keys: tuple[bytes, ...]
    rate_limit_per_s: float | None
    next_expiry: float | None  # when one of `keys` stops being valid


@dataclass(frozen=True)
class KeyAuth:
    id: str
    tenant: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


@dataclass(frozen=True)
class RegistrySnapshot:
    version: int
    taken_at: float
    tenants: frozenset[str] = frozenset()
    sources: dict[tuple[str, str], SourceAuth] = field(default_factory=dict)
    keys: dict[str, KeyAuth] = field(default_factory=dict)

    def stale(self, now: float) -> bool:
        """Whether a grace period ended since this was taken (then a reload drops the old secret)."""
        return any(s.next_expiry is not None and s.next_expiry <= now for s in self.sources.values())


@dataclass(frozen=True)
class NewKey:
    id: str  # names the key in `key list` and `key revoke`; not a secret
    key: str  # shown once, never stored


@dataclass(frozen=True)
class TenantEntry:
    tenant: str
    created_at: float


@dataclass(frozen=True)
class SourceEntry:
    source: str
    created_at: float
    rate_limit_per_s: float | None


@dataclass(frozen=True)
class KeyEntry:
    """What `key list` shows of a key: never the key or its hash."""

    id: str
    scopes: tuple[str, ...]
    created_at: float
    last_used_at: float | None


class Registry:
    def __init__(self, database: Database, schema_mode: SchemaMode = SchemaMode.CREATE) -> None:
        self.db = database
        self.schema_found = self.db.ensure_schema(SCHEMA_PART, SCHEMA, schema_mode)

    def create_tenant(self, tenant: str) -> None:
        with self.db.transaction() as cur:
            if cur.execute("SELECT 1 FROM registry_tenants WHERE tenant = ?", (tenant,)):
                raise RegistryError(f"tenant {tenant!r} exists already")
            cur.execute("INSERT INTO registry_tenants (tenant, created_at) VALUES (?, ?)", (tenant, time.time()))
            self._bump(cur)

    def add_source(self, tenant: str, source: str, rate_limit_per_s: float | None = None) -> str:
        """Adds a source and returns its new secret (shown once)."""
        if source == ERASURE_SOURCE:  # the ledger's own facts (erasures) come from it: no sender may pose as it
            raise RegistryError(f"the source name {source!r} is reserved for facts the ledger records itself")
        secret = new_secret()
        now = time.time()
        with self.db.transaction() as cur:
            self._require_tenant(cur, tenant)
            if cur.execute("SELECT 1 FROM registry_sources WHERE tenant = ? AND source = ?", (tenant, source)):
                raise RegistryError(f"source {source!r} exists already in tenant {tenant!r}; use source rotate")
            cur.execute(
                "INSERT INTO registry_sources (tenant, source, rate_limit_per_s, created_at) VALUES (?, ?, ?, ?)",
                (tenant, source, rate_limit_per_s, now),
            )
            cur.execute(
                "INSERT INTO registry_source_secrets (tenant, source, secret, created_at) VALUES (?, ?, ?, ?)",
                (tenant, source, secret, now),
            )
            self._bump(cur)
        return secret

    def rotate_source(self, tenant: str, source: str, grace_s: float) -> str:
        """A new secret for the source; the ones in use keep working for `grace_s` seconds."""
        secret = new_secret()
        now = time.time()
        with self.db.transaction() as cur:
            if not cur.execute("SELECT 1 FROM registry_sources WHERE tenant = ? AND source = ?", (tenant, source)):
                raise RegistryError(f"no source {source!r} in tenant {tenant!r}")
            cur.execute(
                "UPDATE registry_source_secrets SET valid_until = ? "
                "WHERE tenant = ? AND source = ? AND valid_until IS NULL",
                (now + grace_s, tenant, source),
            )
            cur.execute(
                "INSERT INTO registry_source_secrets (tenant, source, secret, created_at) VALUES (?, ?, ?, ?)",
                (tenant, source, secret, now),
            )
            self._bump(cur)
        return secret

    def add_key(self, tenant: str, scopes: list[str]) -> NewKey:
        """A new random 256-bit API key (shown once; only its hash is stored) and its id."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise RegistryError(f"scopes must be among {', '.join(SCOPES)} (got {', '.join(scopes) or 'none'})")
        new = NewKey(id=secrets.token_hex(8), key=API_KEY_PREFIX + secrets.token_urlsafe(32))
        with self.db.transaction() as cur:
            self._require_tenant(cur, tenant)
            cur.execute(
                "INSERT INTO registry_api_keys (key_hash, tenant, scopes, created_at, id) VALUES (?, ?, ?, ?, ?)",
                (key_hash(new.key), tenant, " ".join(sorted(set(scopes))), time.time(), new.id),
            )
            self._bump(cur)
        return new

    def revoke_key(self, tenant: str, key_id: str) -> None:
        """Deletes the key; running processes refuse it from their next poll of `registry_version`."""
        with self.db.transaction() as cur:
            self._require_tenant(cur, tenant)
            if not cur.execute("SELECT 1 FROM registry_api_keys WHERE tenant = ? AND id = ?", (tenant, key_id)):
                raise RegistryError(f"no key {key_id!r} in tenant {tenant!r}; see: reciprocity key list {tenant}")
            cur.execute("DELETE FROM registry_api_keys WHERE tenant = ? AND id = ?", (tenant, key_id))
            self._bump(cur)

    def record_keys_used(self, used_at: dict[str, float]) -> None:
        """Each key's last use (key id -> when), unless a use less than a minute before that is recorded
        already (by this process or another). Not a change of the registry: `registry_version` stays."""
        rows = [(when, key_id, when - KEY_USE_RESOLUTION_S) for key_id, when in sorted(used_at.items())]
        with self.db.transaction() as cur:
            cur.executemany(
                "UPDATE registry_api_keys SET last_used_at = ? "
                "WHERE id = ? AND (last_used_at IS NULL OR last_used_at <= ?)",
                rows,
            )

    def tenants(self) -> list[TenantEntry]:
        rows = self.db.query("SELECT tenant, created_at FROM registry_tenants ORDER BY tenant")
        return [TenantEntry(tenant, created_at) for tenant, created_at in rows]

    def sources(self, tenant: str) -> list[SourceEntry]:
        """The tenant's sources, without their secrets."""
        with self.db.transaction() as cur:
            self._require_tenant(cur, tenant)
            rows = cur.execute(
                "SELECT source, created_at, rate_limit_per_s FROM registry_sources WHERE tenant = ? ORDER BY source",
                (tenant,),
            )
        return [SourceEntry(source, created_at, limit) for source, created_at, limit in rows]

    def keys(self, tenant: str) -> list[KeyEntry]:
        """The tenant's keys by id, oldest first, without the keys or their hashes."""
        with self.db.transaction() as cur:
            self._require_tenant(cur, tenant)
            rows = cur.execute(
                "SELECT id, scopes, created_at, last_used_at FROM registry_api_keys WHERE tenant = ? "
                "ORDER BY created_at, id",
                (tenant,),
            )
        return [KeyEntry(key_id, tuple(scopes.split()), created, used) for key_id, scopes, created, used in rows]

    def source_secret(self, tenant: str, source: str) -> str:
        """The current secret of a source, for `reciprocity send` on the same machine."""
        rows = self.db.query(
            "SELECT secret FROM registry_source_secrets WHERE tenant = ? AND source = ? AND valid_until IS NULL "
            "ORDER BY created_at DESC LIMIT 1",
            (tenant, source),
        )
        if not rows:
            raise RegistryError(f"no source {source!r} in tenant {tenant!r}")
        return rows[0][0]

    def version(self) -> int:
        rows = self.db.query("SELECT version FROM registry_version WHERE id = 1")
        return rows[0][0] if rows else 0

    def snapshot(self) -> RegistrySnapshot:
        now = time.time()
        with self.db.transaction() as cur:  # one consistent read of all four tables
            version_rows = cur.execute("SELECT version FROM registry_version WHERE id = 1")
            tenants = frozenset(row[0] for row in cur.execute("SELECT tenant FROM registry_tenants"))
            limits = {
                (t, s): limit
                for t, s, limit in cur.execute("SELECT tenant, source, rate_limit_per_s FROM registry_sources")
            }
            secret_rows = cur.execute(
                "SELECT tenant, source, secret, valid_until FROM registry_source_secrets "
                "WHERE valid_until IS NULL OR valid_until > ? ORDER BY created_at DESC",
                (now,),
            )
            keys = {
                h: KeyAuth(key_id, tenant, frozenset(scopes.split()))
                for h, key_id, tenant, scopes in cur.execute(
                    "SELECT key_hash, id, tenant, scopes FROM registry_api_keys"
                )
            }
        return RegistrySnapshot(
            version=version_rows[0][0] if version_rows else 0,
            taken_at=now,
            tenants=tenants,
            sources=_sources(limits, secret_rows),
            keys=keys,
        )

    def _require_tenant(self, cur: Cursor, tenant: str) -> None:
        if not cur.execute("SELECT 1 FROM registry_tenants WHERE tenant = ?", (tenant,)):
            raise RegistryError(f"no tenant {tenant!r}; create it first with: reciprocity tenant create {tenant}")

    def _bump(self, cur: Cursor) -> None:
        cur.execute(
            "INSERT INTO registry_version (id, version) VALUES (1, 1) "
            "ON CONFLICT (id) DO UPDATE SET version = registry_version.version + 1"
        )


def _sources(
    limits: dict[tuple[str, str], float | None], secret_rows: list[tuple[str, str, str, float | None]]
) -> dict[tuple[str, str], SourceAuth]:
    keys: dict[tuple[str, str], list[bytes]] = {}
    expiries: dict[tuple[str, str], float] = {}
    for tenant, source, secret, valid_until in secret_rows:
        keys.setdefault((tenant, source), []).append(secret_key(secret))
        if valid_until is not None:
            expiries[(tenant, source)] = min(valid_until, expiries.get((tenant, source), valid_until))
    return {pair: SourceAuth(tuple(keys.get(pair, ())), limit, expiries.get(pair)) for pair, limit in limits.items()}
