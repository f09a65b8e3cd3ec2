"""Group commit in the real store: what a request that stops waiting leaves behind."""

from __future__ import annotations

import asyncio

from ledger.group_commit import FactWriter, GroupCommitter, ThreadWriter
from ledger.store import open_ledger
from services.settings import Settings
from tests.helpers import give
from tests.ledger.test_recording import incoming


async def test_a_request_cancelled_while_it_waits_has_its_facts_committed_and_the_others_answered(settings: Settings):
    """A request cancelled (say, by shutdown) after its facts were queued: they are taken as they were, the
    commit goes on, and the requests queued with it get their outcomes."""
    ledger = open_ledger(settings.database_url, settings.data_dir)
    committer = GroupCommitter(ThreadWriter(FactWriter(ledger)), batch_facts_max=100, wait_s=0.05, queue_facts_max=1000)
    await committer.start()
    try:
        cancelled = asyncio.create_task(committer.submit([incoming(give("g1", "ann", "bob"))]))
        answered = asyncio.create_task(committer.submit([incoming(give("g2", "bob", "ann"))]))
        await asyncio.sleep(0)  # both queued; the committer lingers for more
        cancelled.cancel()
        (outcome,) = await answered
        assert cancelled.cancelled()
        assert outcome.status == "recorded"
        assert [f.fact.external_id for f in ledger.tenant_log("acme", 0, 10)] == ["g1", "g2"]
    finally:
        await committer.close()
        ledger.close()
