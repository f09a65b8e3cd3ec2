"""On PostgreSQL the projector and relay of other processes learn of a commit by the store's NOTIFY, rather than
at their next poll: they listen on the channel the store notifies on."""

from __future__ import annotations

import threading

import pytest

from ledger.group_commit import FactWriter
from ledger.store import open_ledger
from projections.follower import PostgresNotifications
from tests.helpers import give, received

pytestmark = pytest.mark.postgres


def test_a_commit_wakes_a_listener_on_the_ledgers_commit_channel(postgres_schema_url, tmp_path):
    ledger = open_ledger(postgres_schema_url, tmp_path)
    woken = threading.Event()
    listening = PostgresNotifications(postgres_schema_url, ledger.commit_channel, woken.set)
    try:
        assert ledger.commit_channel
        listening.start()
        writer = FactWriter(ledger)
        # LISTEN starts on the listener's own thread: commit until one is heard (each commit notifies).
        for n in range(40):
            writer.commit([received(give(f"g{n}", "ann", "bob"))])
            if woken.wait(0.5):
                break
        assert woken.is_set(), f"no NOTIFY heard on {ledger.commit_channel!r} after 40 commits"
    finally:
        listening.stop()
        ledger.close()
