"""A password in a URL never reaches the log: not in a field, a message, a nested value or a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from services.logs import redact_url
from tests.processes import environment, free_port

PASSWORD = "hunter2-Zq9"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://ledger:pw@127.0.0.1:4222", "nats://ledger:***@127.0.0.1:4222"),
        ("postgresql://u:p@ss/w@db:5432/x?schema=a", "postgresql://u:***@db:5432/x?schema=a"),
        ("nats://a:1@h1:4222,nats://b:2@h2:4222", "nats://a:***@h1:4222,nats://b:***@h2:4222"),
        ("nats://s3cr3t-token@h:4222", "nats://***@h:4222"),
        ("postgresql://db/x?sslmode=require&password=pw&x=1", "postgresql://db/x?sslmode=require&password=***&x=1"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://example.com/people/ann@example.com", "https://example.com/people/ann@example.com"),
    ],
)
def test_redact_url_hides_credentials_and_nothing_else(url, shown):
    assert redact_url(url) == shown


LOGGING_SCRIPT = f"""
import structlog
from services.logs import configure_logging
import sys

configure_logging(sys.argv[1])
log = structlog.get_logger("test")
url = "postgresql://ledger:{PASSWORD}@db.internal:5432/ledger?schema=acme"
log.error("store_unreachable", url=url, error=f"could not connect to {{url}}: timeout", tried=[url, {{"nats": url}}])
log.info(f"connecting to {{url}}")
try:
    raise ConnectionError(f"refused by {{url}}")
except ConnectionError:
    log.exception("connect_failed")
"""


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_password_in_a_url_never_reaches_a_log_line(log_format):
    done = subprocess.run(
        [sys.executable, "-c", LOGGING_SCRIPT, log_format], capture_output=True, text=True, timeout=60, check=True
    )
    output = done.stdout + done.stderr
    assert "store_unreachable" in output and "connect_failed" in output and "ConnectionError" in output
    assert PASSWORD not in output
    assert output.count("postgresql://ledger:***@db.internal:5432/ledger") >= 6


@pytest.mark.slow
def test_serve_logs_the_nats_url_without_its_password(sqlite_settings, tmp_path):
    nats_url = f"nats://reciprocity:{PASSWORD}@127.0.0.1:{free_port()}"  # nobody listens: serve logs its attempts
    env = environment(
        sqlite_settings,
        RECIPROCITY_HTTP_PORT=str(free_port()),
        RECIPROCITY_NATS_URL=nats_url,
        RECIPROCITY_LOG_FORMAT="json",
    )
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            {"starting", "nats_error"} <= events(log_path) and writing_processes(log_path) > 1
        ):
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(15)
    text = log_path.read_text()
    assert {"starting", "nats_error"} <= events(log_path), text
    assert PASSWORD not in text
    starting = next(line for line in lines(log_path) if line["event"] == "starting")
    assert starting["nats"] == nats_url.replace(PASSWORD, "***")
    # Every line says which role and process wrote it: serve's own, and its background process's.
    assert {line["role"] for line in lines(log_path)} == {"all"}
    writers = {line["pid"] for line in lines(log_path)}
    background = next(line for line in lines(log_path) if line["event"] == "background_started")["child_pid"]
    assert {process.pid, background} <= writers, writers


def lines(log_path) -> list[dict]:
    found = []
    for line in log_path.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue  # a line cut by the read, or not ours
    return found


def writing_processes(log_path) -> int:
    """How many processes wrote lines (serve's, and its background process's once that logs)."""
    return len({line.get("pid") for line in lines(log_path)})


def events(log_path) -> set[str]:
    return {line.get("event") for line in lines(log_path)}
