"""Settings, built once from the environment (a flag of the same name may override), frozen, validated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A setting has a value the service cannot run with; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    database_url: str | None = None
    nats_url: str | None = None
    nats_port: int = 4222
    role: str = "all"  # all, ingest, query, projector or relay (roles other than all need PostgreSQL and NATS)
    background_process: bool = True  # serve's projector and relay in a second process (the other core)
    http_workers: int = 1  # processes answering HTTP on serve's port (serve itself and the others)
    nats_duplicate_window_s: float = 120.0  # JetStream's deduplication window for the event stream
    log_format: str | None = None  # "json" or "console"; by TTY when unset
    log_level: str = "info"
    # Group commit: how many facts one transaction may hold, and how long it may wait for more.
    commit_batch_facts_max: int = 2_000
    commit_wait_ms: float = 0.0
    commit_queue_facts_max: int = 50_000
    group_commit: bool = True  # off only to measure what group commit gains
    body_bytes_max: int = 1 << 20
    batch_body_bytes_max: int = 8 << 20
    signature_tolerance_s: int = 300
    secret_grace_s: int = 24 * 3600
    registry_refresh_s: float = 0.25

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        values: dict[str, Any] = {}
        for spec in fields(cls):
            name = f"RECIPROCITY_{spec.name.upper()}"
            raw = environ.get(name)
            if raw is None or raw == "":
                continue
            values[spec.name] = _parse(name, spec.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.log_format not in (None, "json", "console"):
            raise SettingsError("RECIPROCITY_LOG_FORMAT must be json or console")
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://")):
            raise SettingsError("RECIPROCITY_DATABASE_URL must be a postgresql:// URL (unset means SQLite)")
        for name in ("http_port", "nats_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise SettingsError(f"RECIPROCITY_{name.upper()} must be a TCP port (0-65535)")
        if self.role not in ("all", "ingest", "query", "projector", "relay"):
            raise SettingsError("RECIPROCITY_ROLE must be all, ingest, query, projector or relay")
        if self.role != "all" and not (self.database_url and self.nats_url):
            raise SettingsError(
                f"--role {self.role} shares its store and bus with other pods: set RECIPROCITY_DATABASE_URL "
                "(postgresql://...) and RECIPROCITY_NATS_URL"
            )
        if not 1 <= self.http_workers <= 64:
            raise SettingsError("RECIPROCITY_HTTP_WORKERS must be between 1 and 64")
        if self.commit_batch_facts_max < 1000:
            raise SettingsError("RECIPROCITY_COMMIT_BATCH_FACTS_MAX must hold a full batch (>= 1000)")

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def as_env(self) -> dict[str, str]:
        """The environment that gives these settings back through from_env (for a child process)."""
        return {
            f"RECIPROCITY_{spec.name.upper()}": str(getattr(self, spec.name)).lower()
            if isinstance(getattr(self, spec.name), bool)
            else str(getattr(self, spec.name))
            for spec in fields(self)
            if getattr(self, spec.name) is not None
        }


def _parse(name: str, kind: Any, raw: str) -> Any:
    kind = str(kind)
    try:
        if "bool" in kind:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if "int" in kind:
            return int(raw)
        if "float" in kind:
            return float(raw)
        if "Path" in kind:
            return Path(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind}") from None
    return raw
