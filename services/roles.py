"""What each role runs, and in which of serve's processes: the one table of roles -> parts -> processes.

A part is a job of the service: `ingest` (webhooks in, group commit, and erasure, which writes), `query`
(the read API, exports and the NATS micro service), `projector` (the views, influence and the KV buckets) and
`relay` (the NATS stream).
`all` is `reciprocity serve` on one machine; the other roles are one part each, for Kubernetes, where they
share PostgreSQL and NATS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RoleName = Literal["all", "ingest", "query", "projector", "relay"]
PARTS = frozenset({"ingest", "query", "projector", "relay"})


@dataclass(frozen=True)
class PostgresShare:
    """The PostgreSQL connections one process of a role takes by default (RECIPROCITY_PG_* override them):
    its pools' size and overflow (each of two: store and views) and the views' plain readers. Small, because
    every pod of every role draws on one server's max_connections; README's "Connections" adds them up."""

    pool_size: int
    max_overflow: int
    readers_max: int


@dataclass(frozen=True)
class Role:
    parts: frozenset[str]
    postgres: PostgresShare
    # Under serve, the parts its background process runs (on the other core) unless that process is off.
    background: frozenset[str] = frozenset()
    shares_store: bool = True  # needs PostgreSQL and NATS, shared with other pods


ROLES: dict[str, Role] = {
    # One machine: nobody else draws on the server.
    "all": Role(PARTS, PostgresShare(4, 8, 16), background=frozenset({"projector", "relay"}), shares_store=False),
    # One writer thread commits; the views are read by probes alone.
    "ingest": Role(frozenset({"ingest"}), PostgresShare(1, 1, 1)),
    # Reads run on several threads at once (balances on the event loop's own connection): a reader each for
    # two, the others through the pool.
    "query": Role(frozenset({"query"}), PostgresShare(1, 2, 2)),
    # The projector's thread and the KV writers read at once while it is active.
    "projector": Role(frozenset({"projector"}), PostgresShare(1, 2, 3)),
    # Reads the log one page at a time and writes its position once a second.
    "relay": Role(frozenset({"relay"}), PostgresShare(1, 1, 1)),
}


def role_parts(role: str) -> frozenset[str]:
    return ROLES[role].parts


def background_parts(role: str, background_process: bool) -> frozenset[str]:
    """What serve's background process runs (nothing when there is none)."""
    return ROLES[role].background if background_process else frozenset()


def http_parts(role: str, background_process: bool) -> frozenset[str]:
    """What serve's HTTP processes run: the role's parts, less what its background process runs."""
    return role_parts(role) - background_parts(role, background_process)
