"""Settings, built once from the environment (a `serve` flag of the same name overrides), frozen, validated.

Every field is the variable RECIPROCITY_<NAME> and the flag --<name-with-dashes>; an invalid value stops
start-up with a message that names the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, FilePath, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ledger.connections import DEFAULT_LIMITS, ConnectionLimits
from ledger.schema import SchemaMode
from projections.nats_servers import parse_servers
from services.natsserver import NATS_JETSTREAM_MEMORY_MIB, NATS_MEMORY_LIMIT_MIB
from services.roles import ROLES, RoleName

ENV_PREFIX = "RECIPROCITY_"


class SettingsError(ValueError):
    """A setting has a value the service cannot run with; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    data_dir: Path = Field(Path("data"), description="where the SQLite files and the embedded NATS store live")
    http_host: str = Field("127.0.0.1", description="the address HTTP listens on")
    http_port: int = Field(8080, ge=0, le=65535, description="the HTTP port")
    database_url: str | None = Field(
        None, pattern=r"^postgres(ql)?://", description="postgresql://... (SQLite under data_dir when unset)"
    )
    nats_url: str | None = Field(
        None, description="NATS server(s), comma-separated for a cluster (an embedded nats-server when unset)"
    )
    nats_creds: FilePath | None = Field(None, description="a NATS .creds file (user JWT and NKey seed) to connect with")
    nats_port: int = Field(4222, ge=0, le=65535, description="the embedded nats-server's port")
    role: RoleName = Field("all", description="all, or one part for Kubernetes: ingest, query, projector, relay")
    background_process: bool = Field(True, description="serve's projector and relay in a second process")
    http_workers: int = Field(1, ge=1, le=64, description="processes answering HTTP on serve's port")
    nats_replicas: int = Field(
        1, ge=1, le=5, description="servers that keep the stream and each KV bucket (raised at start, never lowered)"
    )
    nats_duplicate_window_s: float = Field(120.0, gt=0, description="JetStream's deduplication window")
    nats_memory_limit_mib: int = Field(
        NATS_MEMORY_LIMIT_MIB, ge=0, description="the embedded nats-server's soft memory limit (GOMEMLIMIT), 0: none"
    )
    nats_jetstream_memory_mib: int = Field(
        NATS_JETSTREAM_MEMORY_MIB, ge=1, description="the embedded server's JetStream max_memory_store"
    )
    log_format: Literal["json", "console"] | None = Field(None, description="json or console (by TTY when unset)")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="the lowest level logged"
    )
    commit_batch_facts_max: int = Field(2_000, ge=1_000, description="facts one transaction may hold (>= a batch)")
    commit_wait_ms: float = Field(0.0, ge=0, description="how long a transaction may wait for more facts")
    commit_queue_facts_max: int = Field(50_000, ge=1, description="facts waiting to commit before ingest is 503")
    view_lag_max: int = Field(
        100_000, ge=0, description="facts the views may be behind while catching up before webhooks wait, 0: no bound"
    )
    group_commit: bool = Field(True, description="off only to measure what group commit gains")
    body_bytes_max: int = Field(1 << 20, ge=1, description="the largest single webhook body")
    batch_body_bytes_max: int = Field(8 << 20, ge=1, description="the largest batch body")
    signature_tolerance_s: int = Field(300, ge=1, description="how far a webhook-timestamp may be off our clock")
    secret_grace_s: int = Field(24 * 3600, ge=0, description="how long a rotated-out source secret keeps working")
    registry_refresh_s: float = Field(0.25, gt=0, description="how often a process looks for registry changes")
    # A process has two PostgreSQL pools (store and views) besides a few plain connections; every pod draws
    # on the server's max_connections (100 by default), so each role's defaults are small (services/roles.py).
    pg_pool_size: int | None = Field(
        None, ge=1, description="PostgreSQL connections each of a process's two pools keeps open (by role when unset)"
    )
    pg_max_overflow: int | None = Field(
        None, ge=0, description="connections each pool may open beyond its size under load (by role when unset)"
    )
    pg_readers_max: int | None = Field(
        None, ge=0, description="plain connections the views read on, one per thread (by role when unset)"
    )
    pg_connect_timeout_s: int = Field(
        DEFAULT_LIMITS.connect_timeout_s, ge=1, description="how long to wait for a PostgreSQL connection"
    )
    migrate: bool = Field(
        True, description="create a missing schema at start (false: only `reciprocity migrate` changes the schema)"
    )
    dead_loop_restart_s: float = Field(
        30.0, ge=0, description="how long a background loop may be dead before /healthz fails (restart the process)"
    )
    lock_timeout_s: int = Field(
        int(DEFAULT_LIMITS.lock_timeout_s), ge=1, description="how long a write waits for another's lock, then fails"
    )

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, *args: Any, **kwargs: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what the caller passes: from_env hands over its explicit mapping, and Settings(...) in a test
        # or a benchmark never picks up the environment of whoever runs it.
        return (init_settings,)

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, level: object) -> object:
        return level.lower() if isinstance(level, str) else level

    @field_validator("nats_url")
    @classmethod
    def _servers_in_the_url(cls, url: str | None) -> str | None:
        if url is not None:
            parse_servers(url)  # its errors never quote the URL, which may hold a password
        return url

    @model_validator(mode="after")
    def _shared_roles_share_a_store(self) -> Settings:
        if ROLES[self.role].shares_store and not (self.database_url and self.nats_url):
            raise ValueError(
                f"--role {self.role} shares its store and bus with other pods: set RECIPROCITY_DATABASE_URL "
                "(postgresql://...) and RECIPROCITY_NATS_URL"
            )
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """From RECIPROCITY_* variables (empty ones count as unset), then flags given as `overrides`."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(env_name(name))
            if raw:
                values[name] = raw
        values.update({name: value for name, value in overrides.items() if value is not None})
        try:
            return cls(**values)
        except ValidationError as invalid:
            raise SettingsError(_explain(invalid)) from None

    def connection_limits(self) -> ConnectionLimits:
        """What the store, views, registry and locks open their connections with: the PG_* settings, or the
        role's defaults where unset."""
        share = ROLES[self.role].postgres
        return ConnectionLimits(
            pool_size=self.pg_pool_size or share.pool_size,
            max_overflow=share.max_overflow if self.pg_max_overflow is None else self.pg_max_overflow,
            readers_max=share.readers_max if self.pg_readers_max is None else self.pg_readers_max,
            connect_timeout_s=self.pg_connect_timeout_s,
            lock_timeout_s=self.lock_timeout_s,
        )

    def schema_mode(self) -> SchemaMode:
        """What a process started with these settings may do to the schema (ledger/schema.py)."""
        return SchemaMode.CREATE if self.migrate else SchemaMode.EXISTING

    def with_(self, **changes: Any) -> Settings:
        return self.model_copy(update=changes)

    def as_env(self) -> dict[str, str]:
        """The environment that gives these settings back through from_env (for a child process)."""
        return {
            env_name(name): str(value).lower() if isinstance(value, bool) else str(value)
            for name, value in self.model_dump().items()
            if value is not None
        }


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _explain(invalid: ValidationError) -> str:
    problems = []
    for error in invalid.errors(include_url=False):
        where = env_name(str(error["loc"][0])) if error["loc"] else "settings"
        # A URL may hold a password: its value is never repeated.
        shown = error["loc"] and not str(error["loc"][0]).endswith("_url") and not isinstance(error["input"], dict)
        given = f"={error['input']!r}" if shown else ""
        problems.append(f"{where}{given}: {error['msg']}")
    return "; ".join(problems)
