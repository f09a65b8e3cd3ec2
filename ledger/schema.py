"""Versioned schemas: which version of its tables each database holds, and who may create or change them.

Three parts have tables: the store (the library's events table and our fact index), the registry and the
views. Each records its version in `schema_versions`, in its own database. `reciprocity migrate` creates a
missing schema or upgrades an older one; `serve` and the admin commands only create a missing one, and not
even that with RECIPROCITY_MIGRATE=false (so their database user needs no DDL rights). A schema of another
version stops them with the command to run: no process changes a schema it was not asked to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from ledger.connections import ConnectionLimits
from ledger.dialect import Dialect
from ledger.locks import schema_lock

VERSIONS_DDL = "CREATE TABLE IF NOT EXISTS schema_versions (part TEXT PRIMARY KEY, version INTEGER NOT NULL)"
MIGRATE_COMMAND = "reciprocity migrate"

Execute = Callable[[str, Sequence[Any]], list[Any]]


class SchemaCursor(Protocol):
    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[Any]: ...


class SchemaMode(StrEnum):
    CREATE = "create"  # create a missing schema; refuse one of another version
    EXISTING = "existing"  # RECIPROCITY_MIGRATE=false: use the schema as it is, change nothing
    MIGRATE = "migrate"  # `reciprocity migrate`: create a missing schema or upgrade an older one


class SchemaError(RuntimeError):
    """The schema is missing or of another version, and this process may not change it."""


@dataclass(frozen=True)
class SchemaPart:
    """One database's tables. Version 0 is a schema made before versions were recorded: its probe table is
    there without a row in `schema_versions`, and its tables are version 1's (recording versions changed no
    table). A missing schema gets the whole DDL of this release (every statement is CREATE ... IF NOT
    EXISTS); a later one gets the upgrades after its version; a version-0 one the upgrades after version 1,
    then the DDL, which adds any table an old release did not have. So an upgrade may only change tables
    that every version-0 schema of its part has."""

    name: str
    version: int
    probe_table: str
    upgrades: Mapping[int, Sequence[str]] = field(default_factory=dict)  # version -> statements that reach it
    oldest_readable: int = 0  # an older schema cannot be converted: refused in every mode
    what_changed: str = ""  # since that version, for the refusal


def table_exists(execute: Execute, dialect: Dialect, table: str) -> bool:
    if dialect.postgres:  # in the connection's search path, without an error to abort the transaction
        return bool(execute("SELECT to_regclass(%s) IS NOT NULL", (table,))[0][0])
    return bool(execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)))


def found_version(execute: Execute, dialect: Dialect, part: SchemaPart) -> int | None:
    """The version of the part's schema in this database: None when it has none."""
    if table_exists(execute, dialect, "schema_versions"):
        rows = execute(dialect.sql("SELECT version FROM schema_versions WHERE part = ?"), (part.name,))
        if rows:
            return int(rows[0][0])
    return 0 if table_exists(execute, dialect, part.probe_table) else None


def needs_change(part: SchemaPart, found: int | None, mode: SchemaMode) -> bool:
    """Whether this process is to create or upgrade the schema; raises when it may not and must not start."""
    if found == part.version:
        return False
    if found is not None and found < part.oldest_readable:
        raise SchemaError(
            f"the {part.name} is format version {found} (version 0: written before versions were recorded); "
            f"this release reads version {part.oldest_readable} or later only ({part.what_changed}) and cannot "
            "convert it: keep running the release that wrote it, or start with a new, empty store"
        )
    if found is not None and found > part.version:
        raise SchemaError(
            f"the {part.name} schema is version {found}, newer than this release knows ({part.version}); "
            "run the release that wrote it, or a newer one"
        )
    if mode is SchemaMode.MIGRATE or (found is None and mode is SchemaMode.CREATE):
        return True
    if found is None:
        raise SchemaError(
            f"the {part.name} schema does not exist and RECIPROCITY_MIGRATE=false: run `{MIGRATE_COMMAND}` first"
        )
    raise SchemaError(
        f"the {part.name} schema is version {found}, this release needs version {part.version}: "
        f"run `{MIGRATE_COMMAND}` first"
    )


def statements_from(part: SchemaPart, found: int | None, create: Sequence[str]) -> list[str]:
    """What brings the schema from `found` to this release's version."""
    if found is None:
        return list(create)
    upgrades = [
        statement for version in range(max(found, 1) + 1, part.version + 1) for statement in part.upgrades[version]
    ]
    return upgrades + list(create) if found == 0 else upgrades


def record_version(execute: Execute, dialect: Dialect, part: SchemaPart) -> None:
    execute(dialect.ddl(VERSIONS_DDL), ())
    execute(
        dialect.sql(
            "INSERT INTO schema_versions (part, version) VALUES (?, ?) "
            "ON CONFLICT (part) DO UPDATE SET version = excluded.version"
        ),
        (part.name, part.version),
    )


def ensure_schema(
    part: SchemaPart,
    mode: SchemaMode,
    dialect: Dialect,
    transaction: Callable[[], AbstractContextManager[SchemaCursor]],
    statements: Sequence[str],
    *,
    database_url: str | None,
    limits: ConnectionLimits,
    library_tables: Callable[[], None] = lambda: None,
) -> int | None:
    """Creates or upgrades a part's tables as `mode` allows; returns the version found before.

    The version is read first without a lock, so a process meeting its own version changes nothing. A change
    is made under the schema lock and read again there: several processes may start at once. The library's
    tables (`library_tables`) are created on its own connection, before our transaction takes the write lock
    of the same SQLite file.
    """
    with transaction() as cursor:
        found = found_version(cursor.execute, dialect, part)
    if not needs_change(part, found, mode):
        return found
    with schema_lock(database_url, limits):
        with transaction() as cursor:
            found = found_version(cursor.execute, dialect, part)  # another process may have made it meanwhile
        if needs_change(part, found, mode):
            library_tables()
            with transaction() as cursor:
                for statement in statements_from(part, found, statements):
                    cursor.execute(statement)
                record_version(cursor.execute, dialect, part)
    return found
