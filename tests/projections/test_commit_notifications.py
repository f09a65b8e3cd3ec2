"""On PostgreSQL the projector and relay of other processes learn of a commit by the store's NOTIFY, rather than
at their next poll: they listen on the channel the store notifies on."""

from __future__ import annotations

import threading
import time

import pytest

from ledger.group_commit import FactWriter
from ledger.store import open_ledger
from projections.follower import COMMIT_WAKE_INTERVAL_S, PostgresNotifications
from tests.helpers import assert_woken_once_per_interval, give, received

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


def test_commits_in_quick_succession_wake_at_most_once_an_interval_and_the_last_one_is_heard(
    postgres_schema_url, tmp_path
):
    """Under load the followers are woken once per interval, so a page gathers that interval's commits; the
    wake after the last commit still comes (nothing committed waits for the poll)."""
    ledger = open_ledger(postgres_schema_url, tmp_path)
    wakes: list[float] = []
    heard = threading.Event()

    def woken() -> None:
        wakes.append(time.monotonic())
        heard.set()

    listening = PostgresNotifications(postgres_schema_url, ledger.commit_channel, woken)
    try:
        listening.start()
        writer = FactWriter(ledger)
        for n in range(40):  # until LISTEN has started
            writer.commit([received(give(f"warm{n}", "ann", "bob"))])
            if heard.wait(0.5):
                break
        assert heard.is_set()
        time.sleep(COMMIT_WAKE_INTERVAL_S * 2)
        wakes.clear()
        started = time.monotonic()
        for n in range(200):
            last_commit = time.monotonic()  # (its NOTIFY comes after this)
            writer.commit([received(give(f"g{n}", "ann", "bob"))])
            if time.monotonic() - started > COMMIT_WAKE_INTERVAL_S * 4:
                break
        time.sleep(COMMIT_WAKE_INTERVAL_S * 3)
        assert_woken_once_per_interval(wakes, n, last_commit, COMMIT_WAKE_INTERVAL_S)
    finally:
        listening.stop()
        ledger.close()
