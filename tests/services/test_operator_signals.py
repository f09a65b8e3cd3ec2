"""What an operator sees: HTTP metrics by method, route and status; which process holds a worker's lock;
the commit queue; influence recompute time; log lines with role, pid and tenant; rebuild's progress; tail's
plain refusals."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import time

import pytest
import structlog.testing
from prometheus_client.parser import text_string_to_metric_families

from ledger.group_commit import FactWriter
from projections.kv import recorded_lag
from projections.nats_bus import BUCKETS
from projections.rebuild import rebuild
from services.bootstrap import open_components
from services.http.app import create_app
from services.natsserver import EmbeddedNatsServer
from services.progress import ProgressReport
from tests.conftest import make_sender
from tests.helpers import community, give, post_all, received, until
from tests.processes import cli, free_port

BALANCE_ROUTE = "/v1/tenants/{tenant}/participants/{participant}/balance"
WEBHOOK_ROUTE = "/v1/tenants/{tenant}/webhooks/{source}"


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels` (summed when several do), None if none."""
    found = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    return sum(found) if found else None


async def scrape(client) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    return await response.text()


async def test_requests_are_counted_and_timed_by_method_route_pattern_and_status(client):
    await post_all(client, [give("g1", "ann", "bob")])
    headers = client.sender.read_headers()
    for _ in range(2):
        assert (
            await client.get("/v1/tenants/acme/participants/ann/balance?min_position=1", headers=headers)
        ).status == 200
    assert (await client.get("/v1/tenants/acme/participants/zed/balance", headers=headers)).status == 404
    text = await scrape(client)
    counted = "reciprocity_http_requests_total"
    assert metric(text, counted, method="GET", route=BALANCE_ROUTE, status="200") == 2
    assert metric(text, counted, method="GET", route=BALANCE_ROUTE, status="404") == 1
    assert metric(text, counted, method="POST", route=WEBHOOK_ROUTE, status="201") == 1
    # One latency histogram, with the same labels: its counts are the counter's.
    timed = "reciprocity_query_duration_seconds_count"
    assert metric(text, timed, method="GET", route=BALANCE_ROUTE, status="200") == 2
    assert metric(text, timed, route=BALANCE_ROUTE) == 3
    assert "reciprocity_http_request_duration_seconds" not in text
    assert "ann" not in text and "zed" not in text  # ids never become label values


async def test_a_method_nobody_routes_counts_as_other_not_as_a_new_series(client):
    for method in ("PROPFIND", "PURGE"):  # (methods the HTTP parser knows, which no route takes)
        assert (await client.request(method, "/healthz")).status == 405
    text = await scrape(client)
    assert metric(text, "reciprocity_http_requests_total", method="OTHER", status="405") == 2
    assert "PROPFIND" not in text and "PURGE" not in text


async def test_get_log_lines_carry_the_tenant_and_never_the_participant(client):
    with structlog.testing.capture_logs() as logs:
        await client.get("/v1/tenants/acme/participants/ann/balance", headers=client.sender.read_headers())
        await client.get("/v1/tenants/acme/pairs/ann/bob", headers=client.sender.read_headers())
        await client.get("/v1/tenants/acme/balances", headers=client.sender.read_headers())
    lines = [line for line in logs if line["event"] == "request"]
    assert [(line["method"], line["tenant"], line["path"]) for line in lines] == [
        ("GET", "acme", "/v1/tenants/acme/participants/{participant}/balance"),
        ("GET", "acme", "/v1/tenants/acme/pairs/{a}/{b}"),
        ("GET", "acme", "/v1/tenants/acme/balances"),
    ]
    assert "ann" not in repr(lines) and "bob" not in repr(lines)


async def test_the_projector_lock_holder_reports_worker_active_and_a_standby_reports_0(
    client, settings, aiohttp_client
):
    async def active() -> bool:
        return metric(await scrape(client), "reciprocity_worker_active", worker="projector") == 1

    await until(active, 10, "the projector taking its lock")
    standby = await open_components(settings)  # a second process on the same store: it stands by
    try:
        other = await aiohttp_client(create_app(settings, standby))
        text = await scrape(other)
        assert metric(text, "reciprocity_worker_active", worker="projector") == 0
        assert metric(text, "reciprocity_worker_active", worker="relay") is None  # no NATS here: it may not relay
    finally:
        await standby.close()


async def test_the_commit_queue_depth_is_the_facts_waiting_for_a_transaction(client, monkeypatch):
    committer = client.components.committer
    holding, release = asyncio.Event(), asyncio.Event()
    commit = committer.writer.commit

    async def held_commit(items):
        holding.set()
        await release.wait()
        return await commit(items)

    monkeypatch.setattr(committer.writer, "commit", held_commit)
    posts = [asyncio.create_task(client.sender.post(client, give("g0", "ann", "bob")))]
    try:
        await asyncio.wait_for(holding.wait(), 10)  # the first fact's transaction is held...
        posts += [asyncio.create_task(client.sender.post(client, give(f"g{n}", "ann", "bob"))) for n in range(1, 5)]

        async def queued() -> bool:  # ...and the next four wait behind it
            return committer.queued_facts == 4

        await until(queued, 10, "four facts queued behind the held one")
        assert metric(await scrape(client), "reciprocity_commit_queue_facts") == 4
    finally:
        release.set()  # (else closing the committer would wait for the held transaction for ever)
    assert [response.status for response in await asyncio.gather(*posts)] == [201] * 5
    assert metric(await scrape(client), "reciprocity_commit_queue_facts") == 0


async def test_influence_recomputes_are_timed(client):
    await post_all(client, [give("g1", "ann", "bob"), give("g2", "bob", "cas")])

    async def timed() -> bool:
        return (metric(await scrape(client), "reciprocity_influence_recompute_seconds_count") or 0) >= 1

    await until(timed, 30, "an influence recompute")
    text = await scrape(client)
    assert metric(text, "reciprocity_influence_recompute_seconds_sum") > 0


async def test_the_kv_writer_lag_is_what_the_buckets_miss_of_their_views(client, settings, aiohttp_client):
    """No KV writer runs here (no NATS): a process that does not project (serve's HTTP process) reports, from
    the positions the writer records, every position of the view as missing from the buckets."""
    position = await post_all(client, [give("g1", "ann", "bob"), give("g2", "bob", "cas")])
    await until(lambda: client.components.projections.wait_for(position, 0), 10, "the view")
    http_only = await open_components(settings, parts=frozenset({"query"}))  # as serve's HTTP process
    try:
        text = await scrape(await aiohttp_client(create_app(settings, http_only)))
    finally:
        await http_only.close()
    for bucket in ("reciprocity_balances", "reciprocity_pairs"):
        assert metric(text, "reciprocity_kv_writer_lag_events", bucket=bucket) == position
    assert metric(text, "reciprocity_kv_writer_lag_events", bucket="reciprocity_influence") is not None


@pytest.fixture
def nats_url(tmp_path):
    server = EmbeddedNatsServer(tmp_path / "nats-home", free_port())
    yield server.start()
    server.stop()


async def test_the_relay_reports_its_lock_and_the_kv_writer_its_lag_down_to_0(aiohttp_client, settings, nats_url):
    bus_settings = settings.with_(nats_url=nats_url)
    sender = make_sender(bus_settings, "acme", "crm")
    components = await open_components(bus_settings)
    try:
        client = await aiohttp_client(create_app(bus_settings, components))
        client.sender = sender
        await post_all(client, [give(f"g{n}", "ann", "bob") for n in range(5)])

        async def caught_up() -> bool:
            text = await scrape(client)
            lags = [metric(text, "reciprocity_kv_writer_lag_events", bucket=bucket) for bucket in BUCKETS]
            return metric(text, "reciprocity_worker_active", worker="relay") == 1 and lags == [0, 0, 0]

        await until(caught_up, 30, "the relay active and every bucket written")
        text = await scrape(client)
        assert metric(text, "reciprocity_worker_active", worker="projector") == 1
        # Another process reads the same from what the writer records (at most a second later).
        store, influence_position = components.projections.store, components.projections.influence_position

        async def recorded() -> bool:
            return await asyncio.to_thread(recorded_lag, store, influence_position) == dict.fromkeys(BUCKETS, 0)

        await until(recorded, 10, "the written positions recorded")
    finally:
        await components.close()


LOGGING_ROLE = """
import structlog, sys
from services.logs import configure_logging
configure_logging(sys.argv[1], "info", "projector")
structlog.get_logger().info("worker_active", worker="projector")
"""


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_every_log_line_says_its_role_and_process(log_format):
    process = subprocess.Popen(
        [sys.executable, "-c", LOGGING_ROLE, log_format], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    if log_format == "json":
        (line,) = [json.loads(text) for text in out.splitlines()]
        assert (line["event"], line["role"], line["pid"]) == ("worker_active", "projector", process.pid)
    else:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", out)  # without the renderer's colours
        assert "role=projector" in plain and f"pid={process.pid}" in plain


def test_rebuild_logs_its_progress_off_a_terminal_and_keeps_stdout_for_its_answer(settings, stores):
    ledger, _ = stores
    FactWriter(ledger).commit([received(f) for f in community(100)])
    facts = ledger.read_log(0, 100_000)
    done = cli(settings, "rebuild", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)  # stdout holds the answer alone
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    progress = [line for line in lines if line["event"] == "rebuild_progress"]
    assert {line["stage"] for line in progress} == {"log", "views", "influence"}
    assert all(line["role"] == "rebuild" and line["pid"] > 0 for line in lines)
    last_log = [line for line in progress if line["stage"] == "log"][-1]
    assert last_log["done"] == answer["facts"] == len(facts) and last_log["unit"] == "facts"
    assert [line for line in progress if line["stage"] == "influence"][-1]["done"] == answer["tenants"] == 1


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rebuild_progress_on_a_terminal_is_one_line_rewritten_with_rate_and_time_left():
    now = [0.0]
    terminal = Terminal()
    progress = ProgressReport("rebuild", terminal, interval_s=1.0, clock=lambda: now[0])
    progress("log", 0, 100_000)
    for done in range(10_000, 50_001, 10_000):
        now[0] += 1.0
        progress("log", done, 100_000)
    progress.close()
    shown = terminal.getvalue()
    assert shown.startswith("\rrebuild: applying the log 0/100,000 facts") and shown.endswith("\n")
    last = shown.rstrip("\n").split("\r")[-1]
    assert last == "rebuild: applying the log 50,000/100,000 facts, 10,000 facts/s, 5 s left\x1b[K"
    assert shown.count("\n") == 1  # rewritten in place, one line


def test_rebuild_progress_is_shown_at_each_stage_and_at_most_once_an_interval():
    now = [0.0]
    terminal = Terminal()
    progress = ProgressReport("rebuild", terminal, interval_s=5.0, clock=lambda: now[0])
    progress("log", 0, 1_000)
    for done in range(100, 1_001, 100):
        now[0] += 1.0
        progress("log", done, 1_000)  # at 5 s, and at the end
    progress("views", 0, 1_000)
    now[0] += 3.0
    progress("views", 1_000, 1_000)
    shown = [line for line in terminal.getvalue().split("\r") if line]
    assert [line.split(",")[0] for line in shown] == [
        "rebuild: applying the log 0/1",  # (the thousands' comma)
        "rebuild: applying the log 500/1",
        "rebuild: applying the log 1",
        "rebuild: writing the views 0/1",
        "rebuild: writing the views 1",
    ]
    assert shown[-1] == "rebuild: writing the views 1,000/1,000 facts, done in 3 s\x1b[K"


def test_rebuild_reports_each_stage_to_its_caller(settings, stores):
    ledger, _ = stores
    FactWriter(ledger).commit([received(f) for f in community(50)])
    heard: list[tuple[str, int, int]] = []
    rebuilt = rebuild(settings.database_url, settings.data_dir, None, 5, on_progress=lambda *a: heard.append(a))
    stages = [stage for stage, _, _ in heard]
    assert stages.index("log") < stages.index("views") < stages.index("influence")
    assert ("views", rebuilt["facts"], rebuilt["facts"]) in heard and heard[-1] == ("influence", 1, 1)


def test_tail_of_an_unknown_tenant_exits_non_zero_saying_so(sqlite_settings):
    make_sender(sqlite_settings, "acme", "crm")  # the store exists and knows acme only
    done = cli(sqlite_settings, "tail", "zeta", "--nats-url", f"nats://127.0.0.1:{free_port()}", timeout_s=30)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "reciprocity: no tenant 'zeta'"


def test_tail_against_a_server_without_the_stream_says_so_and_exits(tmp_path):
    server = EmbeddedNatsServer(tmp_path / "nats-home", free_port())
    url = server.start()
    try:
        done = _tail(tmp_path, "acme", "--nats-url", url)
    finally:
        server.stop()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"reciprocity: no stream RECIPROCITY_EVENTS on {url}: is the relay running?"
    )


def test_tail_gives_up_on_an_unreachable_server_after_its_retry_time_without_a_traceback(tmp_path):
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    done = _tail(tmp_path, "acme", "--nats-url", url, "--retry-s", "2")
    assert 2 <= time.monotonic() - started < 20
    assert done.returncode == 1
    assert done.stderr.startswith(f"reciprocity: cannot reach NATS at {url} for 2 s")
    assert "Traceback" not in done.stderr


def _tail(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    """`reciprocity tail` where no store is (only NATS can tell it anything)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECIPROCITY_")}
    env["RECIPROCITY_DATA_DIR"] = str(tmp_path / "no-store")
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "tail", *args], env=env, capture_output=True, text=True, timeout=60
    )
