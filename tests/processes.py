"""Real `reciprocity` processes for tests that need them: the CLI, and `serve` on a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from services.settings import Settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECIPROCITY_")}
    env["RECIPROCITY_DATA_DIR"] = str(settings.data_dir)
    if settings.database_url:
        env["RECIPROCITY_DATABASE_URL"] = settings.database_url
    env.update(extra)
    return env


def cli(settings: Settings, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=environment(settings),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def cli_json(settings: Settings, *args: str, timeout_s: float = 60) -> dict[str, Any]:
    done = cli(settings, *args, "--json", timeout_s=timeout_s)
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


class Server:
    """`reciprocity serve` in its own process, logging JSON to a file."""

    def __init__(self, settings: Settings, log_path: Path, ready_timeout_s: float = 30.0, **extra_env: str) -> None:
        self.settings = settings
        self.ready_timeout_s = ready_timeout_s
        self.extra_env = extra_env
        self.port = free_port()
        self.nats_port = free_port()  # the embedded nats-server's, so runs never collide
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        env = environment(
            self.settings,
            RECIPROCITY_HTTP_PORT=str(self.port),
            RECIPROCITY_NATS_PORT=str(self.nats_port),
            RECIPROCITY_LOG_FORMAT="json",
            **self.extra_env,
        )
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}: {self.log_path.read_text()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"serve did not become ready in {self.ready_timeout_s} s")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return self.request("GET", path, None, headers or {})

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        return self.request("POST", path, body, headers)

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, Any]:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read() or b"null")
