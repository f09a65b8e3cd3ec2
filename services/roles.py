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
class Role:
    parts: frozenset[str]
    # Under serve, the parts its background process runs (on the other core) unless that process is off.
    background: frozenset[str] = frozenset()
    shares_store: bool = True  # needs PostgreSQL and NATS, shared with other pods


ROLES: dict[str, Role] = {
    "all": Role(PARTS, background=frozenset({"projector", "relay"}), shares_store=False),
    "ingest": Role(frozenset({"ingest"})),
    "query": Role(frozenset({"query"})),
    "projector": Role(frozenset({"projector"})),
    "relay": Role(frozenset({"relay"})),
}


def role_parts(role: str) -> frozenset[str]:
    return ROLES[role].parts


def background_parts(role: str, background_process: bool) -> frozenset[str]:
    """What serve's background process runs (nothing when there is none)."""
    return ROLES[role].background if background_process else frozenset()


def http_parts(role: str, background_process: bool) -> frozenset[str]:
    """What serve's HTTP processes run: the role's parts, less what its background process runs."""
    return role_parts(role) - background_parts(role, background_process)
