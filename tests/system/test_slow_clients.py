"""Slow clients against a real `serve`: a client that never finishes its headers is closed after 10 s, and
clients holding connections open can neither hold up other requests nor take every descriptor."""

from __future__ import annotations

import contextlib
import http.client
import json
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from services.http.connections import HEADERS_TIMEOUT_S, connections_max
from tests.helpers import Sender, envelope, give
from tests.processes import Server, cli_json, environment, free_port

pytestmark = pytest.mark.slow

TRICKLERS = 300
PROMPT_S = 2.0  # a /healthz answer under load; generous for a busy 2-core machine
CLOSE_LATE_S = 10.0  # slack after the header timeout before a trickler's close counts as missing


def trickler(port: int) -> tuple[socket.socket, float]:
    """A connection that has sent the start of a request and keeps its headers coming, a byte at a time."""
    conn = socket.create_connection(("127.0.0.1", port))
    connected_at = time.monotonic()
    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    return conn, connected_at


def keep_trickling(conns: list[socket.socket], stop: threading.Event) -> None:
    """One more header byte on every connection each second: sending something must not keep a connection open."""
    while not stop.wait(1.0):
        for conn in conns:
            with contextlib.suppress(OSError):  # closed by the server: what the test waits for
                conn.send(b"x")


def closed_at(conns: list[socket.socket], deadline: float) -> dict[socket.socket, float]:
    """When the server closed each connection (end of stream or reset), until the deadline."""
    closed: dict[socket.socket, float] = {}
    with selectors.DefaultSelector() as selector:
        for conn in conns:
            selector.register(conn, selectors.EVENT_READ)
        while len(closed) < len(conns) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                try:
                    data = key.fileobj.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    closed[key.fileobj] = time.monotonic()
                    selector.unregister(key.fileobj)
    return closed


def healthz_seconds(port: int) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
        assert answer.status == 200
    return time.monotonic() - started


def test_clients_trickling_headers_are_closed_after_the_timeout_and_others_are_answered_meanwhile(
    sqlite_settings, tmp_path
):
    server = Server(sqlite_settings, tmp_path / "serve.log", RECIPROCITY_HTTP_WORKERS="1").start()
    stop = threading.Event()
    opened = [trickler(server.port) for _ in range(TRICKLERS)]
    conns = [conn for conn, _ in opened]
    try:
        threading.Thread(target=keep_trickling, args=(conns, stop), daemon=True).start()
        latencies = []
        while time.monotonic() < opened[0][1] + HEADERS_TIMEOUT_S - 2:
            latencies.append(healthz_seconds(server.port))
            time.sleep(0.25)
        assert max(latencies) < PROMPT_S, latencies

        closed = closed_at(conns, deadline=opened[-1][1] + HEADERS_TIMEOUT_S + CLOSE_LATE_S)
        assert len(closed) == TRICKLERS, f"{TRICKLERS - len(closed)} trickling clients still connected"
        held = [closed[conn] - connected for conn, connected in opened]
        # The timer starts when the server accepts, which is never before the client's connect returns.
        assert min(held) >= HEADERS_TIMEOUT_S - 0.5, min(held)
        assert max(held) < HEADERS_TIMEOUT_S + CLOSE_LATE_S, max(held)
        assert healthz_seconds(server.port) < PROMPT_S
    finally:
        stop.set()
        for conn in conns:
            conn.close()
        server.stop()


DESCRIPTOR_LIMIT = 400  # the server's, hard and soft


def serve_with_descriptor_limit(settings, log_path) -> tuple[subprocess.Popen[bytes], int]:
    """`reciprocity serve` whose hard descriptor limit is DESCRIPTOR_LIMIT, so the bound is reached soon."""
    port = free_port()
    env = environment(
        settings,
        RECIPROCITY_HTTP_PORT=str(port),
        RECIPROCITY_NATS_PORT=str(free_port()),
        RECIPROCITY_LOG_FORMAT="json",
        RECIPROCITY_HTTP_WORKERS="1",
    )
    limit = (DESCRIPTOR_LIMIT, DESCRIPTOR_LIMIT)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limit),
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        try:
            healthz_seconds(port)
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("serve did not start in 30 s")


def test_connections_beyond_the_bound_are_closed_at_once_and_the_process_keeps_working(sqlite_settings, tmp_path):
    bound = connections_max(DESCRIPTOR_LIMIT)
    cli_json(sqlite_settings, "tenant", "create", "acme")
    secret = cli_json(sqlite_settings, "source", "add", "acme", "crm")["secret"]
    sender = Sender("acme", "crm", secret, read_key="")
    log_path = tmp_path / "serve.log"
    process, port = serve_with_descriptor_limit(sqlite_settings, log_path)
    # Opened before the flood: a keep-alive connection the server holds, through which it must keep working.
    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    kept.request("GET", "/healthz")
    assert kept.getresponse().read() is not None
    flood = [trickler(port)[0] for _ in range(DESCRIPTOR_LIMIT + 200)]  # more than the process has descriptors
    try:
        closed = closed_at(flood, deadline=time.monotonic() + 3)  # well before the header timeout
        assert len(flood) - bound <= len(closed) < len(flood), (len(closed), bound)

        body = json.dumps(envelope(give("g1", "ann", "bob"))).encode()
        kept.request("POST", sender.path, body, sender.headers(body))
        answer = kept.getresponse()
        assert answer.status == 201, answer.read()
        answer.read()
    finally:
        kept.close()
        for conn in flood:
            conn.close()
        process.terminate()
        process.wait(30)  # a clean stop on a loaded machine (aiohttp alone gives open connections 10 s)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(line["event"] == "connections_refused" and line["limit"] == bound for line in lines)
    assert not any(line.get("level") == "error" for line in lines), [line for line in lines if line["level"] == "error"]
