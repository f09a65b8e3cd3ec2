"""What differs between SQLite and PostgreSQL in the SQL we write ourselves: placeholders, DDL types, the
collation of text, and how a write transaction begins.

Our SQL is written once, for SQLite: `?` placeholders (statements never hold a literal `?`) and SQLite's type
names in DDL. A dialect turns it into what its database takes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Ids order by byte value (DESIGN section 1): PostgreSQL's "C" collation, not the database's locale.
POSTGRES_DDL_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "TEXT": 'TEXT COLLATE "C"'}
_POSTGRES_DDL_TYPE = re.compile(rf"\b({'|'.join(POSTGRES_DDL_TYPES)})\b")


@dataclass(frozen=True)
class Dialect:
    name: str
    placeholder: str
    begin_write: str  # SQLite takes the write lock at once, so readers never deadlock upgrading to writers

    @property
    def postgres(self) -> bool:
        return self.name == "postgresql"

    def sql(self, statement: str) -> str:
        """A statement written with `?` placeholders, in this dialect's."""
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def ddl(self, statement: str) -> str:
        """A CREATE statement written with SQLite's types, in this dialect's types and collation."""
        if not self.postgres:
            return statement
        return _POSTGRES_DDL_TYPE.sub(lambda found: POSTGRES_DDL_TYPES[found.group(1)], statement)


SQLITE = Dialect(name="sqlite", placeholder="?", begin_write="BEGIN IMMEDIATE")
POSTGRESQL = Dialect(name="postgresql", placeholder="%s", begin_write="BEGIN")


def dialect_of(database_url: str | None) -> Dialect:
    """PostgreSQL when there is a database URL, else SQLite (the settings' rule)."""
    return POSTGRESQL if database_url else SQLITE
