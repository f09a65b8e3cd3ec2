"""What each participant token shows as in the views: its id, or the tombstone `erased-<token>` (DESIGN section 7).

Stored facts name participants by token; the views keep ids (lists order ties by id, a pair is a < b by id).
Following the log resolves a page's tokens once, never per fact, in two layers: `view_names` holds what every
token the views met shows as (written in the transaction of the page that first met it, and set to the
tombstone when that page or a later one applies the participant's erasure), kept in memory here as well; only
a token the views never met is asked of the store's key table. The key table alone would not do: between an
erasure's commit and the page that applies it, the person's later facts would land under the tombstone and
the earlier ones under the id, one person split in two. A token whose key is gone before the views met it
shows as the tombstone from the start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from ledger.facts import Acknowledgement, Erasure, Fact, Give, Introduction, named_people
from ledger.participants import ParticipantNames, tombstone
from ledger.store import StoredFact
from projections.viewstore import ViewCursor, ViewStore

DDL = (
    "CREATE TABLE IF NOT EXISTS view_names (tenant TEXT NOT NULL, token TEXT NOT NULL, participant TEXT NOT NULL,"
    " PRIMARY KEY (tenant, token))",
)
TABLE = "view_names"
# Names kept in memory between pages; past this they are forgotten and read again from view_names as needed.
NAMES_KEPT_MAX = 1_000_000

TenantToken = tuple[str, str]


def tokens_of(fact: Fact) -> tuple[str, ...]:
    """The tokens a fact holds where the views need a name: its people, or an erasure's participant."""
    return (fact.token,) if isinstance(fact, Erasure) else named_people(fact)


def show_names(fact: Fact, tenant: str, names: Mapping[TenantToken, str]) -> None:
    """Rewrites a decoded fact's people from tokens to what they show as (`names` by tenant and token), in place
    (an erasure keeps its token: it says whose name to take away)."""
    if isinstance(fact, Give):
        fact.giver, fact.receiver = names[tenant, fact.giver], names[tenant, fact.receiver]
    elif isinstance(fact, Introduction):
        first, second = fact.introduced
        fact.introducer = names[tenant, fact.introducer]
        fact.introduced = (names[tenant, first], names[tenant, second])
    elif isinstance(fact, Acknowledgement):
        fact.acknowledger = names[tenant, fact.acknowledger]


def _page_names(page: list[StoredFact]) -> Iterable[TenantToken]:
    return ((stored.fact.tenant, token) for stored in page for token in tokens_of(stored.fact))


def insert_names(cursor: ViewCursor, names: Mapping[TenantToken, str]) -> None:
    """Records names met for the first time, in the caller's transaction (a name already there stays)."""
    cursor.executemany(
        f"INSERT INTO {TABLE} (tenant, token, participant) VALUES (?, ?, ?) ON CONFLICT (tenant, token) DO NOTHING",
        [(tenant, token, name) for (tenant, token), name in sorted(names.items())],
    )


class ViewNames:
    """The follower's names: `view_names`, kept in memory, and the store's key table for tokens never met."""

    def __init__(self, store: ViewStore, lookup: Callable[[Iterable[str]], ParticipantNames]) -> None:
        """`lookup` is the store's `Ledger.names`: what tokens show as now, by their key rows."""
        self.store = store
        self.lookup = lookup
        self.known: dict[TenantToken, str] = {}
        self.position = 0  # of the last page whose names are known: a view reset below it empties `known`

    def resolve(self, page: list[StoredFact], after: int) -> dict[TenantToken, str]:
        """Shows the page's facts under their names, in place (call once per page read: the records are then
        names, not tokens); returns the names met for the first time, which the page's transaction records."""
        if after < self.position:  # the view was reset (a rebuild): what was kept may be gone
            self.known.clear()
        known = self.known
        missing = {key for key in _page_names(page) if key not in known}
        new: dict[TenantToken, str] = {}
        if missing:
            found = self._recorded(missing)
            known.update(found)  # recorded already, whatever becomes of this page
            if unmet := missing - found.keys():
                shown = self.lookup(token for _, token in unmet)
                new = {(tenant, token): shown.name(token) for tenant, token in unmet}
        names: Mapping[TenantToken, str] = known
        if new:  # names met for the first time stay out of `known` until their page commits (`committed`)
            names = {key: new.get(key) or known[key] for key in _page_names(page)}
        for stored in page:
            show_names(stored.fact, stored.fact.tenant, names)
        return new

    def _recorded(self, keys: set[TenantToken]) -> dict[TenantToken, str]:
        with self.store.transaction(commit=False) as cursor:
            rows = cursor.lookup(TABLE, ("tenant", "token", "participant"), ("tenant", "token"), keys)
            return {(tenant, token): participant for tenant, token, participant in rows}

    def committed(self, new: Mapping[TenantToken, str], applied: list[StoredFact], position: int) -> None:
        """A page's transaction committed: its new names are recorded, and its erasures took names away."""
        if len(self.known) + len(new) > NAMES_KEPT_MAX:
            self.known.clear()
        self.known.update(new)
        for stored in applied:
            if isinstance(stored.fact, Erasure):
                self.known[stored.fact.tenant, stored.fact.token] = tombstone(stored.fact.token)
        self.position = position
