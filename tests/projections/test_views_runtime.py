"""Projection runtime: deterministic influence, resistance to a gaming ring, crash safety, rebuild."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC
from decimal import Decimal
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.types import PARTICIPANT_PATTERN, decimal_text, utc_text
from ledger.facts import fact_event_id
from ledger.group_commit import FactWriter
from ledger.store import open_ledger
from projections import influence_view, queries, reciprocity
from projections.follower import Follower
from projections.influence_view import InfluenceView
from projections.kv import KvWriter
from projections.nats_bus import BUCKETS
from projections.queries import ReciprocityQueries
from projections.rebuild import rebuild
from projections.runtime import InfluenceWorker, open_view_store
from projections.viewstore import BACKGROUND_READER_MMAP_BYTES, READER_MMAP_BYTES
from services.bootstrap import open_components
from services.roles import background_parts
from tests.helpers import acknowledgement, at, community, give, introduction, received, reversal, view_columns
from tests.processes import cli, cli_json, environment


def project(ledger, views, page_facts_max=500):
    Follower(
        ledger, reciprocity.ReciprocityProjection(views), lambda: views.position(reciprocity.VIEW),
        page_facts_max=page_facts_max,
    ).catch_up()  # fmt: skip
    influence = InfluenceView(views, ReciprocityQueries(views))
    for tenant in influence.stale_tenants():
        influence.recompute(tenant)
    return influence


def test_contributions_json_reads_back_as_the_contributions_and_is_the_same_for_the_same_amounts():
    """The influence view writes each participant's contributions as JSON from flat lists; answers read it
    back, and unchanged rows are found by comparing that text, so equal amounts must give equal text."""
    givers = ["a", 'q"uote', "back\\slash", "tab\t", "\u00e9lan", "\u65e5\u672c", "\U0001f642", ""]
    amounts = [0.1, 1e-06, 123.456789, 5.0, 0.000123, 2.5e-05, 100.0, 0.333333]
    offsets = [0, 0, 3, 8]
    written = influence_view.contributions_json(givers, amounts, offsets)
    expected = [[list(pair) for pair in zip(givers[o:p], amounts[o:p], strict=True)] for o, p in pairwise(offsets)]
    assert [json.loads(text) for text in written] == expected
    assert written[0] == "[]"
    recomputed = [float(repr(amount)) for amount in amounts]  # equal values, other float objects
    assert influence_view.contributions_json(list(givers), recomputed, offsets) == written


def test_influence_answers_are_byte_identical_after_a_rebuild(stores):
    """The same log gives byte-identical influence answers, however it was paged and projected."""
    ledger, views = stores
    writer = FactWriter(ledger)
    facts = [received(f) for f in community()]
    for start in range(0, len(facts), 37):
        writer.commit(facts[start : start + 37])
        project(ledger, views, page_facts_max=13)
    followed = project(ledger, views).page("acme", 1000, None).model_dump_json()
    views.reset(reciprocity.VIEW, (*reciprocity.TABLES, *influence_view.TABLES))
    rebuilt = project(ledger, views, page_facts_max=1000).page("acme", 1000, None).model_dump_json()
    assert rebuilt == followed
    assert json.loads(rebuilt)["items"][0]["rank"] == 1


def test_the_influence_position_never_claims_a_page_committed_while_it_is_read(stores, monkeypatch):
    """The KV writer writes influence rows up to this position, and never again below it. A page committed
    while it is read (after its first read) leaves its tenant to recompute: claiming the page would let the
    writer pass the position that recompute marks its rows with, and the bucket would keep the old scores."""
    ledger, views = stores
    writer = FactWriter(ledger)
    writer.commit([received(give("g1", "ann", "bob"))])
    influence = project(ledger, views)
    before = views.position(reciprocity.VIEW)
    assert influence.reflected_position() == before  # nothing to recompute
    writer.commit([received(give("g2", "bob", "cas"))])
    read = views.read

    def read_then_project(*args):
        rows = read(*args)
        monkeypatch.setattr(views, "read", read)
        Follower(ledger, reciprocity.ReciprocityProjection(views), lambda: views.position(reciprocity.VIEW)).catch_up()
        return rows

    monkeypatch.setattr(views, "read", read_then_project)
    claimed = influence.reflected_position()
    page = views.position(reciprocity.VIEW)
    assert page > before  # the page did commit meanwhile
    assert influence.stale_tenants() == ["acme"]
    assert claimed < page
    for tenant in influence.stale_tenants():
        influence.recompute(tenant)
    assert influence.reflected_position() == page


def test_a_rebuild_has_every_kv_bucket_written_again_from_the_start(stores, settings):
    """A rebuild may change rows the buckets hold (a changed view definition), so the KV writer forgets
    where it was in every bucket, and the stream sequences it saw acknowledged."""
    ledger, views = stores
    FactWriter(ledger).commit([received(f) for f in community()])
    project(ledger, views)
    head = views.position(reciprocity.VIEW)
    for bucket in BUCKETS:
        KvWriter(views, InfluenceView(views, ReciprocityQueries(views)), lambda: head).record_written(bucket, head, 42)
    assert [views.position(f"kv/{b}") for b in BUCKETS] == [head] * 3
    rebuilt = rebuild(settings.database_url, settings.data_dir, None, wait_s=5)
    assert rebuilt["position"] == head
    assert [views.position(f"kv/{b}") for b in BUCKETS] == [0, 0, 0]
    assert views.read("SELECT bucket FROM view_kv") == []


def test_contribution_facts_read_together_equal_one_query_per_contribution(stores):
    """An answer's contributions list the facts behind them, read for all at once; they must be what a
    query per contribution finds: live gives and introductions, newest first, at most ten."""
    ledger, views = stores
    history = [*community(), *(give(f"many{n}", "p01", "p02", occurred_at=at(500 + n)) for n in range(14))]
    history += [introduction("x1", "p01", "p02", "p03", occurred_at=at(600)), reversal("rx", "many3")]
    FactWriter(ledger).commit([received(f) for f in history])
    influence = project(ledger, views)
    rows = views.read(f"SELECT {influence_view.ITEM_COLUMNS} FROM view_influence WHERE tenant = 'acme'")
    items = influence.items("acme", rows)
    one_by_one = (
        "SELECT position, event_id FROM view_gives WHERE tenant = ? AND giver = ? AND receiver = ? AND live = 1"
        " UNION ALL SELECT position, event_id FROM view_introductions WHERE tenant = ? AND introducer = ?"
        " AND (a = ? OR b = ?) AND live = 1 ORDER BY 1 DESC LIMIT 10"
    )
    compared = 0
    for item in items:
        for contribution in item.contributions:
            args = (item.participant, contribution.from_)
            expected = [r[1] for r in views.read(one_by_one, ("acme", *args, "acme", item.participant, *args[1:] * 2))]
            assert [str(f) for f in contribution.facts] == expected, (item.participant, contribution.from_)
            compared += 1
    p02 = next(c for item in items if item.participant == "p01" for c in item.contributions if c.from_ == "p02")
    assert len(p02.facts) == 10 and p02.facts[0] == fact_event_id("acme", "crm", "x1") and compared > 50


def test_a_ring_trading_small_acknowledged_gives_scores_below_an_honest_helper(stores):
    """Five accounts give each other 200 gives of value 1 each, all acknowledged; an honest participant
    gives 20 gives of value 5 to 20 independent people, each acknowledged. Background: the 40-person
    community of `community()` (gives, introductions, acknowledgements, reversals) in the same tenant."""
    ledger, views = stores
    facts = community()
    ring = [f"ring{i}" for i in range(5)]
    for n in range(200 * 5):
        giver, receiver = ring[n % 5], ring[(n + 1 + n // 5 % 4) % 5]
        facts.append(give(f"ring-g{n}", giver, receiver, value="1", occurred_at=at(n % 400)))
        facts.append(acknowledgement(f"ring-a{n}", receiver, f"ring-g{n}", occurred_at=at(n % 400 + 1)))
    for n in range(20):
        facts.append(give(f"honest-g{n}", "honest", f"helped{n}", value="5", occurred_at=at(20 * n)))
        facts.append(acknowledgement(f"honest-a{n}", f"helped{n}", f"honest-g{n}", occurred_at=at(20 * n + 1)))
    writer = FactWriter(ledger)
    for start in range(0, len(facts), 500):
        outcomes = writer.commit([received(f) for f in facts[start : start + 500]])
        assert all(o.status != "rejected" or o.problem.status == 422 for o in outcomes)
    influence = project(ledger, views)
    scores = {item.participant: item.score for item in influence.page("acme", 1000, None).items}
    assert all(scores[member] < scores["honest"] for member in ring), (scores["honest"], [scores[m] for m in ring])


CRASHING_PROJECTOR = """
import sys
from pathlib import Path
from projections import reciprocity
from projections.follower import Follower
from projections.runtime import InfluenceWorker, open_view_store
from ledger.store import open_ledger
url = sys.argv[2] or None
ledger, views = open_ledger(url, Path(sys.argv[1])), open_view_store(url, Path(sys.argv[1]))
print("started", flush=True)
Follower(ledger, reciprocity.ReciprocityProjection(views), lambda: views.position(reciprocity.VIEW),
         page_facts_max=7).catch_up()
"""


def snapshot(views):
    """Every view row, without changed_position (which page changed a row depends on how the log was paged)."""
    tables = ("view_participants", "view_pairs", "view_gives", "view_introductions", "view_acknowledgements")
    return {
        table: sorted(map(tuple, views.read(f"SELECT {', '.join(view_columns(views, table))} FROM {table}")))
        for table in tables
    }


def test_a_projector_killed_mid_page_resumes_to_the_same_view_as_a_rebuild(stores, settings):
    """SIGKILL while pages are being written; the survivor's rows equal a rebuild from position 0."""
    ledger, views = stores
    FactWriter(ledger).commit([received(f) for f in community(1500)])
    head = ledger.head_position()
    worker = subprocess.Popen(
        [sys.executable, "-c", CRASHING_PROJECTOR, str(settings.data_dir), settings.database_url or ""],
        env=environment(settings),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 30
    while views.position(reciprocity.VIEW) == 0 and time.monotonic() < deadline:
        time.sleep(0.005)  # kill as soon as the first pages are in, with hundreds still to go
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    killed_at = views.position(reciprocity.VIEW)
    assert 0 < killed_at < head, "the kill should land mid-way through the log"
    project(ledger, views)
    resumed = snapshot(views)
    views.reset(reciprocity.VIEW, (*reciprocity.TABLES, *influence_view.TABLES))
    project(ledger, views, page_facts_max=5000)
    assert snapshot(views) == resumed


def test_the_rebuild_command_rebuilds_every_view(settings, stores):
    ledger, views = stores
    FactWriter(ledger).commit([received(f) for f in community(100)])
    project(ledger, views)
    before = snapshot(views)
    rebuilt = cli_json(settings, "rebuild")
    assert rebuilt["facts"] == len(ledger.read_log(0, 100_000)) and rebuilt["tenants"] == 1
    assert snapshot(views) == before


def test_the_rebuild_command_refuses_while_another_process_projects(settings):
    from ledger.locks import WorkerLock

    holder = WorkerLock(settings.database_url, settings.data_dir, "projector")
    assert holder.try_acquire()
    try:
        refused = cli(settings, "rebuild", "--wait-s", "0.3")
        assert refused.returncode == 1 and "another process projects" in refused.stderr
    finally:
        holder.release()


@pytest.mark.postgres
async def test_a_worker_whose_lock_was_lost_stops_and_one_process_holds_it_again(postgres_schema_url, tmp_path):
    """On PostgreSQL a worker lock is an advisory lock of the session that took it. When that session dies,
    another process may take the lock, so the worker that held it stops; then whichever process takes the
    lock first works, and only that one."""
    from ledger.connections import postgres_connect
    from ledger.locks import WorkerLock
    from projections.supervision import run_while_holding

    first, second = (WorkerLock(postgres_schema_url, tmp_path, "relay") for _ in range(2))
    starts: list[float] = []
    stopped = asyncio.Event()

    async def work() -> None:
        starts.append(time.monotonic())
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    worker = asyncio.create_task(run_while_holding(first, work, "relay", check_s=0.05))
    try:
        await until_true(lambda: len(starts) == 1)
        assert not second.try_acquire()
        with postgres_connect(postgres_schema_url) as admin:  # the holder's connection dies
            admin.execute("SELECT pg_terminate_backend(%s)", (first.session_pid(),))
        await asyncio.wait_for(stopped.wait(), 10)
        took_over = second.try_acquire()  # racing the first, which tries again at once
        await asyncio.sleep(0.3)
        first_holds = await asyncio.to_thread(first.still_held)
        assert took_over != first_holds  # exactly one holds the lock...
        assert len(starts) == (2 if first_holds else 1)  # ...and only a holder works
        assert not worker.done()
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        second.release()
        first.release()


@pytest.mark.postgres
async def test_concurrent_balance_reads_on_postgresql_go_out_together_and_each_gets_its_own_row(
    postgres_schema_url, tmp_path
):
    """On PostgreSQL the query API's balance reads that arrive while one is in flight go out as one statement.
    Each request still gets its own participant's row (or None), whatever else shares the statement; a
    statement that fails fails its requests only, and the next read opens a new connection."""
    import psycopg

    from ledger.connections import postgres_connect

    ledger, views = open_ledger(postgres_schema_url, tmp_path), open_view_store(postgres_schema_url, tmp_path)
    try:
        facts = [received(give("g1", "ana", "ben", value="2")), received(give("g2", "cai", "ana"))]
        FactWriter(ledger).commit([*facts, received(give("g1", "ana", "ben", value="7"), tenant="other")])
        project(ledger, views)
        queries = ReciprocityQueries(views)
        statements = []
        read_async = views.read_async

        async def counted(statement, params=()):
            statements.append(params)
            return await read_async(statement, params)

        views.read_async = counted
        asked = [
            ("acme", "ana"),
            ("acme", "ben"),
            ("other", "ana"),
            ("acme", "nobody"),
            ("acme", "cai"),
            ("acme", "ana"),
        ]
        answers = await asyncio.gather(*(queries.balance_json_async(t, p) for t, p in asked))
        assert answers == [queries.balance_json(t, p) for t, p in asked]
        assert None not in answers[:3] and answers[3] is None
        assert json.loads(answers[2])["given"]["value"] == "7"  # the other tenant's ana
        assert len(statements) == 1  # six requests, one statement

        with postgres_connect(postgres_schema_url) as admin:  # the loop's connection dies
            admin.execute("SELECT pg_terminate_backend(%s)", (views.async_reader_pid(),))
        failed = await asyncio.gather(*(queries.balance_json_async(t, p) for t, p in asked[:2]), return_exceptions=True)
        assert all(isinstance(outcome, psycopg.OperationalError) for outcome in failed)
        assert await queries.balance_json_async("acme", "ana") == answers[0]  # on a new connection
    finally:
        await views.aclose()
        ledger.close()


async def until_true(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_a_replay_writes_through_a_rollback_journal_only_when_it_has_the_views_file_to_itself(
    sqlite_settings, monkeypatch
):
    """A rebuild's transaction leaves SQLite's WAL for a rollback journal (the WAL would write each page twice),
    which SQLite allows only while no other connection has the file open; with one open it goes through the
    WAL. Either way it writes the same rows, and the file is in WAL mode afterwards."""
    from projections import viewstore
    from projections.replay import replay

    ledger = open_ledger(None, sqlite_settings.data_dir)
    views = open_view_store(None, sqlite_settings.data_dir)
    original, journals, rebuilt = viewstore.leave_wal, [], []

    def leave_wal(connection):
        journals.append(original(connection))
        return journals[-1]

    monkeypatch.setattr(viewstore, "leave_wal", leave_wal)
    try:
        facts = [received(f) for f in community(150)]
        FactWriter(ledger).commit(facts)
        for other_connection_open in (True, False):
            views.reset(reciprocity.VIEW, reciprocity.TABLES)
            other = sqlite3.connect(views.path)
            if other_connection_open:
                other.execute("SELECT COUNT(*) FROM view_tenants").fetchall()
            else:
                other.close()
            assert replay(ledger, views) == len(facts)
            other.close()
            rebuilt.append({t: sorted(map(repr, views.read(f"SELECT * FROM {t}"))) for t in reciprocity.TABLES})
            assert views.read("PRAGMA journal_mode") == [("wal",)]
        assert journals == [False, True]
        assert rebuilt[0] == rebuilt[1] and len(rebuilt[0]["view_gives"]) > 100
        # The fact store, attached to read the gives from, stays open to writers (ingest) meanwhile.
        with views.bulk_transaction({"ledger": ledger.sqlite_file}) as cursor:
            cursor.execute("DELETE FROM view_tenants")
            assert cursor.execute("SELECT COUNT(*) FROM ledger.fact_index")[0][0] == len(facts)
            writer = sqlite3.connect(ledger.sqlite_file, timeout=0.5, isolation_level=None)
            writer.execute("BEGIN IMMEDIATE")  # "database is locked" if the rebuild held the store's write lock
            writer.execute("ROLLBACK")
            writer.close()
    finally:
        views.close()
        ledger.close()


def test_a_replay_stages_rows_in_scratch_files_and_leaves_none_behind(sqlite_settings, monkeypatch):
    """On SQLite a rebuild binds the participant and pair rows into scratch files beside the views file, from
    which its writer thread copies them. Files that a killed rebuild left are replaced; none are left after a
    rebuild, done or failed; and a staging or a copy short of any aggregated row fails the rebuild, which then
    leaves the view empty rather than short."""
    from projections import replay as replay_module

    ledger = open_ledger(None, sqlite_settings.data_dir)
    views = open_view_store(None, sqlite_settings.data_dir)
    staged = [views.path.with_name(f"{views.path.name}.{table}.staged") for table in replay_module.REBUILT_COLUMNS]

    def rows() -> dict[str, list[tuple]]:  # without changed_position, which depends on how the log was paged
        tables = ("view_gives", "view_participants", "view_pairs")
        return {t: sorted(views.read(f"SELECT {', '.join(view_columns(views, t))} FROM {t}")) for t in tables}

    try:
        facts = [received(f) for f in community(150)]
        FactWriter(ledger).commit(facts)
        Follower(ledger, reciprocity.ReciprocityProjection(views), lambda: views.position(reciprocity.VIEW)).catch_up()
        followed = rows()
        for path in staged:  # as a killed rebuild leaves them: another table, rows in it
            with sqlite3.connect(path) as leftover:
                leftover.execute("CREATE TABLE rows (x)")
                leftover.execute("INSERT INTO rows VALUES (1)")

        views.reset(reciprocity.VIEW, reciprocity.TABLES)
        assert replay_module.replay(ledger, views) == len(facts)
        assert rows() == followed and len(followed["view_pairs"]) > 10
        assert not [path for path in staged if path.exists()]

        # A staging that skips a row and says so; one that loses a row and does not say so (SQLite counts the
        # rows an INSERT wrote, not the ones its trigger deleted). Triggers in the participants' file do it.
        faults = {
            "rows of view_participants staged, ": "BEFORE INSERT ON rows WHEN NOT EXISTS (SELECT 1 FROM once) "
            "BEGIN INSERT INTO once VALUES (1); SELECT RAISE(IGNORE); END",
            "copied from staging": "AFTER INSERT ON rows WHEN NOT EXISTS (SELECT 1 FROM once) "
            "BEGIN INSERT INTO once VALUES (1); DELETE FROM rows WHERE rowid = new.rowid; END",
        }
        real_staging_files = replay_module.staging_files
        for message, fault in faults.items():

            @contextlib.contextmanager
            def staging_files(store, fault=fault):
                with real_staging_files(store) as files:
                    scratch = sqlite3.connect(files["view_participants_staged"], isolation_level=None)
                    scratch.execute("CREATE TABLE once (n)")
                    scratch.execute(f"CREATE TRIGGER fault {fault}")
                    scratch.close()
                    yield files

            monkeypatch.setattr(replay_module, "staging_files", staging_files)
            views.reset(reciprocity.VIEW, reciprocity.TABLES)
            with pytest.raises(RuntimeError, match=message):
                replay_module.replay(ledger, views)
            assert views.position(reciprocity.VIEW) == 0
            assert views.read("SELECT COUNT(*) FROM view_participants") == [(0,)]
            assert not [path for path in staged if path.exists()]
    finally:
        views.close()
        ledger.close()


def test_a_reciprocity_page_commits_while_influence_holds_its_write_lock(sqlite_settings):
    """On SQLite the influence view has a file of its own: its once-a-second rewrite, which takes a write
    lock for as long as it writes, must not hold up the pages (and the KV updates that follow them)."""
    ledger = open_ledger(None, sqlite_settings.data_dir)
    views = open_view_store(None, sqlite_settings.data_dir)
    influence_views = open_view_store(None, sqlite_settings.data_dir)  # as the influence worker has its own
    try:
        FactWriter(ledger).commit([received(f) for f in community(50)])
        with influence_views.transaction() as influence_write:
            influence_write.execute("INSERT INTO view_influence_tenants (tenant, position) VALUES ('acme', 1)")
            started = time.monotonic()
            Follower(
                ledger, reciprocity.ReciprocityProjection(views), lambda: views.position(reciprocity.VIEW)
            ).catch_up()  # on this thread: it would wait for the lock (then fail after 30 s) if they shared one
            assert time.monotonic() - started < 5
        assert views.position(reciprocity.VIEW) == ledger.head_position()
    finally:
        influence_views.close()
        views.close()
        ledger.close()


def test_influence_tables_left_in_the_main_views_file_by_an_older_version_are_dropped(sqlite_settings):
    """They would hide the attached file's tables from unqualified names; influence is recomputed instead."""
    data_dir = sqlite_settings.data_dir
    data_dir.mkdir(parents=True)
    with sqlite3.connect(data_dir / "views.sqlite3") as old:
        old.execute("CREATE TABLE view_influence_tenants (tenant TEXT PRIMARY KEY, position INTEGER NOT NULL)")
        old.execute("INSERT INTO view_influence_tenants VALUES ('acme', 99)")
    views = open_view_store(None, data_dir)
    try:
        assert views.read("SELECT COUNT(*) FROM view_influence_tenants") == [(0,)]
        with sqlite3.connect(data_dir / "views.sqlite3") as main:
            assert main.execute("SELECT name FROM sqlite_master WHERE name LIKE 'view_influence%'").fetchall() == []
        with sqlite3.connect(data_dir / "influence.sqlite3") as attached:
            names = {row[0] for row in attached.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert names == set(influence_view.TABLES)
    finally:
        views.close()


async def test_a_process_that_answers_no_queries_maps_less_of_the_views_file(sqlite_settings):
    """serve's background process read through the whole view after a rebuild, and every page it touched
    stayed mapped and counted in its resident memory; the processes that answer queries map 1 GiB."""
    background = await open_components(sqlite_settings, parts=background_parts("all", True))
    http = await open_components(sqlite_settings, parts=frozenset({"ingest", "query"}))
    try:
        for components, mapped in ((background, BACKGROUND_READER_MMAP_BYTES), (http, READER_MMAP_BYTES)):
            store = components.projections.store
            assert store.read("PRAGMA mmap_size") == [(mapped,)]
            assert store.read("PRAGMA influence.mmap_size") == [(mapped,)]
        assert BACKGROUND_READER_MMAP_BYTES < READER_MMAP_BYTES
    finally:
        await http.close()
        await background.close()


async def test_influence_recomputes_in_a_worker_process_started_again_after_it_died(settings, stores):
    """The worker writes the same rows as a recompute in this process would, and a killed worker is
    replaced: the recompute that found it dead fails, the next one runs in a new worker."""
    ledger, views = stores
    FactWriter(ledger).commit([received(f) for f in community(200)])
    expected = project(ledger, views).page("acme", 1000, None).model_dump_json()
    views.reset(influence_view.VIEW, influence_view.TABLES)
    worker = InfluenceWorker(settings.database_url, settings.data_dir)
    try:
        done = await worker.recompute("acme")
        assert done["tenant"] == "acme" and done["participants"] > 30
        assert InfluenceView(views, ReciprocityQueries(views)).page("acme", 1000, None).model_dump_json() == expected
        (child,) = multiprocessing.active_children()
        child.kill()
        child.join(10)
        with pytest.raises(BrokenProcessPool):
            await worker.recompute("acme")
        assert (await worker.recompute("acme"))["participants"] == done["participants"]
        assert multiprocessing.active_children() and multiprocessing.active_children()[0].pid != child.pid
    finally:
        worker.close()


micro_amounts = st.integers(0, 10**15) | st.sampled_from([0, 1, 10, 999_999, 1_000_000, 1_500_000, 10**7, 10**12])


@given(micro=micro_amounts, negative=st.booleans())
def test_money_writes_what_decimal_text_writes(micro, negative):
    micro = -micro if negative else micro
    assert queries.money(micro) == decimal_text(Decimal(micro).scaleb(-6))


@given(
    row=st.builds(
        reciprocity.ParticipantRow,
        *([st.integers(0, 10**6), micro_amounts] * 2),
        *[st.integers(0, 10**6)] * 5,
        micro_amounts,
        st.none() | st.datetimes(timezones=st.just(UTC)).map(utc_text),
        st.integers(0, 10**6),
        micro_amounts,
    ),
    participant=st.from_regex(PARTICIPANT_PATTERN, fullmatch=True),
    position=st.integers(0, 2**62),
)
def test_the_balance_json_is_the_balance_models_json_byte_for_byte(row, participant, position):
    """HTTP and the KV bucket answer a balance without the model; the model (the contract) is the judge."""
    expected = queries.balance_answer(participant, row, position).model_dump_json().encode()
    assert queries.balance_json(participant, row, position) == expected
