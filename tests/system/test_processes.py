"""The service as users run it: real `reciprocity` processes, killed and restarted."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from ledger.store import open_ledger
from tests.helpers import Sender, envelope, give
from tests.processes import Server, cli, cli_json

pytestmark = pytest.mark.slow


@pytest.fixture
def server(settings, tmp_path):
    running = Server(settings, tmp_path / "serve.log")
    yield running
    running.stop()


def sender_for(settings, tenant="acme", source="crm") -> Sender:
    cli_json(settings, "tenant", "create", tenant)
    secret = cli_json(settings, "source", "add", tenant, source)["secret"]
    read_key = cli_json(settings, "key", "add", tenant, "--scope", "read")["key"]
    return Sender(tenant, source, secret, read_key)


def post(server: Server, sender: Sender, fact, secret: str | None = None) -> tuple[int, dict]:
    body = json.dumps(envelope(fact)).encode()
    return server.post(sender.path, body, sender.headers(body, secret=secret))


def test_the_writing_connection_is_synchronous_full(sqlite_settings):
    """SQLite commits reach the disk before a 2xx (a killed process alone could not show this)."""
    ledger = open_ledger(None, sqlite_settings.data_dir)
    assert ledger.recorder.writer_synchronous() == "FULL"
    ledger.close()


def test_a_fact_answered_2xx_survives_sigkill(settings, server):
    """Kill -9 right after the 2xx: on restart every acknowledged fact is there."""
    sender = sender_for(settings)
    server.start()
    answers = [post(server, sender, give(f"g{n}", "ann", "bob")) for n in range(20)]
    server.kill()
    assert [status for status, _ in answers] == [201] * 20
    server.start()
    status, page = server.get("/v1/tenants/acme/events", sender.read_headers())
    assert status == 200
    assert [e["event_id"] for e in page["events"]] == [body["event_id"] for _, body in answers]


def test_a_source_added_while_serving_works_within_a_second(settings, server):
    sender = sender_for(settings)
    server.start()
    secret = cli_json(settings, "source", "add", "acme", "chat")["secret"]
    added_at = time.monotonic()
    chat = Sender("acme", "chat", secret, sender.read_key)
    while post(server, chat, give("c1", "ann", "bob"))[0] != 201:
        assert time.monotonic() - added_at < 1.0, "the new source was not accepted within a second"
        time.sleep(0.05)


def test_after_rotation_the_old_secret_works_for_the_grace_period(settings, server):
    sender = sender_for(settings)
    server.start()
    rotated = cli_json(settings, "source", "rotate", "acme", "crm")
    assert set(rotated) >= {"tenant", "source", "secret"} and rotated["secret"] != sender.secret
    time.sleep(0.6)
    assert post(server, sender, give("g1", "ann", "bob"))[0] == 201  # old secret, within the grace period
    assert post(server, sender, give("g2", "ann", "bob"), secret=rotated["secret"])[0] == 201
    cli_json(settings, "source", "rotate", "acme", "crm", "--grace-s", "0")
    time.sleep(0.6)
    assert post(server, sender, give("g3", "ann", "bob"), secret=rotated["secret"])[0] == 401


def test_secrets_and_keys_never_appear_in_the_logs(settings, server, tmp_path):
    sender = sender_for(settings)
    server.start()
    post(server, sender, give("g1", "ann", "bob"))
    post(server, sender, give("g1", "ann", "cas"))
    body = json.dumps(envelope(give("g2", "ann", "bob"))).encode()
    headers = sender.headers(body)
    headers["webhook-signature"] += " v1,AAAA"  # a valid one among others is enough
    server.post(sender.path, body, headers)
    server.post(sender.path, body, {**headers, "webhook-signature": "v1,AAAA"})
    server.get("/v1/tenants/acme/events", sender.read_headers())
    server.stop()
    logs = (tmp_path / "serve.log").read_text()
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["event"] == "request" and line["path"].startswith("/v1/")]
    assert [line["status"] for line in requests] == [201, 409, 201, 401, 200]
    assert all(line["request_id"] and line["duration_ms"] >= 0 for line in requests)
    assert requests[0]["tenant"] == "acme" and requests[0]["source"] == "crm" and requests[0]["event_ids"]
    assert requests[-1]["method"] == "GET" and requests[-1]["tenant"] == "acme"  # the reads' lines say whose too
    assert all(line["role"] == "all" and line["pid"] > 0 for line in lines)
    for secret in (sender.secret, sender.secret.removeprefix("whsec_"), sender.read_key, headers["webhook-signature"]):
        assert secret not in logs


def test_cli_commands_print_the_contracted_json(settings):
    assert cli_json(settings, "tenant", "create", "acme") == {"tenant": "acme"}
    added = cli_json(settings, "source", "add", "acme", "crm")
    assert set(added) == {"tenant", "source", "secret"} and added["secret"].startswith("whsec_")
    key = cli_json(settings, "key", "add", "acme", "--scope", "read", "--scope", "ingest")
    # DESIGN section 6, admin lifecycle: `key add` also prints the key's non-secret id, which `key revoke` takes.
    assert set(key) == {"tenant", "key", "scopes", "id"} and key["scopes"] == ["ingest", "read"]
    assert re.fullmatch(r"[0-9a-f]{16}", key["id"]) and key["id"] not in key["key"]


def test_cli_refusals_say_why_and_exit_non_zero(settings):
    cli_json(settings, "tenant", "create", "acme")
    again = cli(settings, "tenant", "create", "acme")
    assert again.returncode == 1 and "exists already" in again.stderr
    orphan = cli(settings, "source", "add", "nobody", "crm")
    assert orphan.returncode == 1 and "tenant create nobody" in orphan.stderr
    bad_scope = cli(settings, "key", "add", "acme", "--scope", "write")
    assert bad_scope.returncode == 2 and "invalid choice" in bad_scope.stderr
    bad_slug = cli(settings, "tenant", "create", "Not A Slug")
    assert bad_slug.returncode == 2


def test_send_signs_and_posts_a_fact_to_the_running_server(settings, server):
    sender = sender_for(settings)
    server.start()
    sent = cli_json(
        settings,
        "send",
        "acme",
        "crm",
        "give.recorded",
        "giver=ann",
        "receiver=bob",
        "kind=help",
        "context.location=Utrecht",
        "--id",
        "g1",
        "--url",
        server.url,
    )
    assert sent["status"] == "recorded" and sent["http_status"] == 201
    refused = cli(
        settings, "send", "acme", "crm", "give.recorded", "giver=ann", "receiver=ann", "kind=help", "--url", server.url
    )
    assert refused.returncode == 1 and "giver_is_not_receiver" not in refused.stderr and "422" in refused.stderr
    status, page = server.get("/v1/tenants/acme/events", sender.read_headers())
    assert status == 200 and page["events"][0]["data"]["context"] == {"location": "Utrecht"}


def _logged(log: Path, event: str, timeout_s: float = 5.0) -> dict:
    """The first log line of an event (lines reach the file within the logger's flush interval)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for line in log.read_text().splitlines():
            if f'"{event}"' in line:
                return json.loads(line)
        assert time.monotonic() < deadline, f"no {event} line in {log}"
        time.sleep(0.05)


def test_the_projector_and_the_relay_log_worker_active_when_they_take_their_lock(sqlite_settings, tmp_path):
    """DESIGN's operator signal: which process projects and which relays, by a `worker_active` line each."""
    server = Server(sqlite_settings, tmp_path / "serve.log").start()
    deadline = time.monotonic() + 20
    try:
        while True:
            lines = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines() if line[:1] == "{"]
            active = {line.get("worker") for line in lines if line["event"] == "worker_active"}
            if {"projector", "relay"} <= active:
                break
            assert time.monotonic() < deadline, f"worker_active logged for {active} only"
            time.sleep(0.1)
    finally:
        server.stop()


def test_serve_reports_on_metrics_that_its_projector_and_relay_are_active(settings, tmp_path):
    """Under plain serve the workers run in its background process, which nobody scrapes: /metrics says 1 for
    each while that process holds the locks, 0 once it is killed, and 1 again when serve has restarted it."""
    server = Server(settings, tmp_path / "serve.log").start()
    active = {"projector": 1.0, "relay": 1.0}

    def workers() -> dict[str, float]:
        series = 'reciprocity_worker_active{{worker="{}"}}'
        return {worker: _metric(server, series.format(worker), missing=-1.0) for worker in active}

    def until_workers(expected: dict[str, float], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (seen := workers()) != expected:
            assert time.monotonic() < deadline, f"/metrics says {seen}, not {expected}"
            time.sleep(0.05)

    try:
        until_workers(active, 30)
        background = _logged(tmp_path / "serve.log", "background_started")["child_pid"]
        os.kill(background, signal.SIGKILL)
        until_workers({"projector": 0.0, "relay": 0.0}, 10)  # serve waits a second before it restarts it
        until_workers(active, 60)
    finally:
        server.stop()


def test_the_embedded_nats_server_dies_with_a_service_killed_by_sigkill(settings, tmp_path):
    """The nats-server child (and serve's background process, that one's influence worker, and serve's
    extra HTTP workers) never outlive the service, even one killed without a chance to clean up."""
    server = Server(settings, tmp_path / "serve.log", RECIPROCITY_HTTP_WORKERS="2").start()
    try:
        nats_pid = int((settings.data_dir / "nats" / "nats-server.pid").read_text())
        background_pid = _logged(tmp_path / "serve.log", "background_started")["child_pid"]
        worker_pid = _logged(tmp_path / "serve.log", "http_worker_started")["child_pid"]
        children = {
            nats_pid: b"nats-server",
            background_pid: b"services.background",
            worker_pid: b"services.http_worker",
            _child_running(background_pid, b"spawn_main", timeout_s=15): b"spawn_main",
        }
        assert all(_is_running(pid, command) for pid, command in children.items())
        server.kill()
        deadline = time.monotonic() + 10
        while alive := [command for pid, command in children.items() if _is_running(pid, command)]:
            assert time.monotonic() < deadline, f"outlived their killed service: {alive}"
            time.sleep(0.05)
    finally:
        server.stop()


@pytest.mark.parametrize("operator_value", [None, "4"])
def test_every_python_process_of_serve_has_its_malloc_arenas_bounded_unless_the_operator_chose(
    settings, tmp_path, operator_value
):
    """glibc's arenas (services/malloc_arenas.py): serve's background and HTTP processes and the influence
    worker start with MALLOC_ARENA_MAX=2, or with the operator's own value. (Serve itself sets it with mallopt,
    which /proc does not show; its environment file is the one it started with.)"""
    extra = {"MALLOC_ARENA_MAX": operator_value} if operator_value else {}
    server = Server(settings, tmp_path / "serve.log", RECIPROCITY_HTTP_WORKERS="2", **extra).start()
    try:
        background_pid = _logged(tmp_path / "serve.log", "background_started")["child_pid"]
        pids = [
            background_pid,
            _logged(tmp_path / "serve.log", "http_worker_started")["child_pid"],
            _child_running(background_pid, b"spawn_main", timeout_s=15),  # the influence worker
        ]
        environments = [dict(
            entry.split(b"=", 1) for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in entry
        ) for pid in pids]  # fmt: skip
        assert [env.get(b"MALLOC_ARENA_MAX") for env in environments] == [(operator_value or "2").encode()] * 3
    finally:
        server.stop()


def test_http_workers_share_the_port_and_their_metrics_add_up(settings, tmp_path):
    """With RECIPROCITY_HTTP_WORKERS=2 two processes answer on one port, and /metrics, whichever of them
    answers it, counts the requests of both."""
    sender = sender_for(settings)
    server = Server(settings, tmp_path / "serve.log", RECIPROCITY_HTTP_WORKERS="2").start()
    try:
        _logged(tmp_path / "serve.log", "http_worker_started")
        assert post(server, sender, give("g1", "ann", "bob"))[0] == 201
        path = "/v1/tenants/acme/participants/ann/balance?min_position=1"
        processes: set[str] = set()
        deadline, answered = time.monotonic() + 30, 0
        while len(processes) < 2:  # each request on a new connection; both processes accept them
            assert time.monotonic() < deadline, f"only {processes} answered"
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(lambda _: _request_id(server, path, sender.read_headers()), range(64)))
            processes |= {request_id.rsplit("-", 1)[0] for request_id in answers}
            answered += len(answers)
        route = 'method="GET",route="/v1/tenants/{tenant}/participants/{participant}/balance",status="200"'
        for _ in range(4):  # several scrapes, so both processes answer one with the same totals
            counted = _metric(server, f"reciprocity_query_duration_seconds_count{{{route}}}")
            assert counted == answered
        server.kill()  # no chance to clean up: the next start must not count this run's requests
        server.start()
        _logged(tmp_path / "serve.log", "http_worker_started")
        assert _metric(server, f"reciprocity_query_duration_seconds_count{{{route}}}", missing=0.0) == 0
    finally:
        server.stop()
    assert not (settings.data_dir / "metrics").exists()  # a normal stop removes the files


def _request_id(server: Server, path: str, headers: dict[str, str]) -> str:
    request = urllib.request.Request(server.url + path, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return response.headers["X-Request-Id"]


def _metric(server: Server, series: str, missing: float | None = None) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    assert missing is not None, f"no {series} in /metrics"
    return missing


def test_a_taken_http_port_is_a_clear_error_with_several_http_workers(settings, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        blocked = Server(settings, tmp_path / "serve.log", RECIPROCITY_HTTP_WORKERS="2")
        blocked.port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="is taken"):
            blocked.start()


def test_an_http_host_that_does_not_resolve_is_a_clear_error_with_several_http_workers(settings, tmp_path):
    blocked = Server(
        settings, tmp_path / "serve.log", RECIPROCITY_HTTP_WORKERS="2", RECIPROCITY_HTTP_HOST="no-such-host.invalid"
    )
    with pytest.raises(RuntimeError, match=r"cannot listen on no-such-host\.invalid: .*RECIPROCITY_HTTP_HOST"):
        blocked.start()
    assert blocked.process.returncode != 0


def _child_running(parent: int, command: bytes, timeout_s: float) -> int:
    """The pid of a child of `parent` running `command`, once there is one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{parent}/task").iterdir():
            for child in (task / "children").read_text().split():
                if _is_running(int(child), command):
                    return int(child)
        time.sleep(0.05)
    raise AssertionError(f"no child of {parent} runs {command!r}")


def test_a_taken_nats_port_is_a_clear_error_and_a_non_zero_exit(settings, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        blocked = Server(settings, tmp_path / "blocked.log")
        blocked.nats_port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="is taken"):
            blocked.start()
        assert blocked.process.returncode != 0


def _is_running(pid: int, command: bytes) -> bool:
    """Alive and running `command` (a zombie has no command line left)."""
    try:
        return command in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


LOGGING_PROCESS = """
import structlog, sys
from services.logs import configure_logging
configure_logging("json")
log = structlog.get_logger()
for n in range(int(sys.argv[1])):
    log.info("request", writer=sys.argv[2], n=n, padding="x" * 300)
"""


def test_log_lines_of_processes_sharing_a_pipe_never_cut_into_each_other():
    """serve's HTTP workers and background process all write to serve's stdout, often a pipe."""
    lines_each = 20_000
    read_end, write_end = os.pipe()
    writers = [
        subprocess.Popen([sys.executable, "-c", LOGGING_PROCESS, str(lines_each), name], stdout=write_end)
        for name in ("a", "b", "c")
    ]
    os.close(write_end)
    with open(read_end, "rb") as output:
        time.sleep(0.5)  # a slow reader: the writers fill the pipe and block in the middle of their writes
        lines = output.read().splitlines()
    assert all(writer.wait(30) == 0 for writer in writers)
    events = [json.loads(line) for line in lines]  # a line cut by another process's write fails here
    assert Counter(event["writer"] for event in events) == {"a": lines_each, "b": lines_each, "c": lines_each}


def test_logging_does_not_wait_for_a_flush_that_is_writing():
    """The event loop logs every request; a flush writes dozens of chunks and must not hold it up meanwhile."""
    import io
    import threading

    from services.logs import BufferedLineLogger

    writing, release = threading.Event(), threading.Event()

    class SlowStream(io.RawIOBase):
        def __init__(self) -> None:
            self.written: list[bytes] = []

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            writing.set()
            release.wait(10)
            self.written.append(bytes(data))
            return len(data)

    stream = SlowStream()
    logger = BufferedLineLogger(stream)
    logger.msg(b"first")
    flushing = threading.Thread(target=logger.flush)
    flushing.start()
    assert writing.wait(5)  # a flush is in its write
    started = time.monotonic()
    logger.msg(b"second")
    waited = time.monotonic() - started
    release.set()
    flushing.join(5)
    logger.flush()
    assert waited < 0.5
    assert b"".join(stream.written).splitlines() == [b"first", b"second"]
