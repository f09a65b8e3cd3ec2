"""The background half of `reciprocity serve`: projector and relay in a process of their own.

`serve` runs HTTP (ingest and queries) in its main process and starts this one beside it, so that
building views, writing KV and relaying the stream use the other core instead of competing with ingest
for one interpreter lock. Both share the same store (SQLite allows one writer per file, and the two
write different files) and the same NATS server; this process learns of new facts from SQLite's
data_version, checked every 10 ms. It dies with its parent (PR_SET_PDEATHSIG) and is restarted by it if it fails.

    python -m services.background    # with the same RECIPROCITY_* environment as serve
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from ledger.child_process import die_with_parent
from ledger.connections import PRIVATE_FILE_MODE, name_connections, private_directory
from projections.supervision import retry_forever
from services.bootstrap import Components, open_components
from services.logs import configure_logging
from services.roles import background_parts
from services.settings import Settings

log = structlog.get_logger(__name__)

RESTART_PAUSE_S = 1.0
WORKERS_FILE = "background-workers.json"  # under the data directory: which locks the background process holds
WORKERS_REPORT_S = 0.5
DEAD_CHECK_S = 1.0  # how often the background process looks for loops that died
EXIT_DEAD_LOOPS = 3  # the exit code of a background process that ended because a loop died


async def run(settings: Settings) -> int:
    """Runs the background parts until SIGTERM (0), or until a loop has been dead for
    RECIPROCITY_DEAD_LOOP_RESTART_S (EXIT_DEAD_LOOPS): this process answers no probe, so it ends itself and
    serve (WatchedProcess) starts it again, as a liveness probe on /healthz restarts a role's pod."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    components = await open_components(settings, parts=background_parts(settings.role, True))
    report = settings.data_dir / WORKERS_FILE
    components.background.start(
        retry_forever(lambda: report_workers(components, report), "worker-report"), "worker-report"
    )
    try:
        dead = await until_stopped_or_dead(components, stop, settings.dead_loop_restart_s)
    finally:
        await components.close()
    if dead:
        log.error("background_exiting", dead_loops=dead, code=EXIT_DEAD_LOOPS)
        return EXIT_DEAD_LOOPS
    return 0


async def report_workers(components: Components, path: Path, interval_s: float = WORKERS_REPORT_S) -> None:
    """Keeps `path` saying which worker locks this process holds, for serve's HTTP processes to report on
    /metrics (`reciprocity_worker_active`): nobody scrapes this process."""
    reported = None
    private_directory(path.parent)  # (on PostgreSQL nothing else may have made it)
    while True:
        held = {
            "projector": components.projections.projecting,
            "relay": bool(components.bus and components.bus.relaying),
        }
        if held != reported:
            staged = path.with_suffix(".tmp")
            staged.write_text(json.dumps({"pid": os.getpid(), **held}))
            staged.chmod(PRIVATE_FILE_MODE)
            staged.replace(path)  # whole or not at all, for a reader at any moment
            reported = held
        await asyncio.sleep(interval_s)


def background_workers(data_dir: Path) -> dict[str, bool]:
    """Which worker locks serve's background process holds, as it last reported them; none while it is not
    running (killed, or being restarted: its report names a process that is gone)."""
    try:
        report = json.loads((data_dir / WORKERS_FILE).read_text())
        alive = b"services.background" in Path(f"/proc/{report['pid']}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError):
        alive = False
    return {worker: alive and bool(report[worker]) for worker in ("projector", "relay")}


async def until_stopped_or_dead(
    components: Components, stop: asyncio.Event, dead_s: float, check_s: float = DEAD_CHECK_S
) -> dict[str, str]:
    """Waits for `stop`; returns the loops dead for `dead_s` if there are any first (else nothing)."""
    while not stop.is_set():
        if dead := components.dead_for(dead_s):
            return dead
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(check_s):
                await stop.wait()
    return {}


class WatchedProcess:
    """A child of `serve` (`python -m <module>` with serve's settings in its environment): restarted when it
    dies, stopped with SIGTERM when serve stops, killed by the kernel if serve dies first."""

    def __init__(
        self,
        settings: Settings,
        module: str = "services.background",
        name: str = "background",
        pass_fds: tuple[int, ...] = (),
        env: dict[str, str] | None = None,
        on_exit: Callable[[int], None] = lambda pid: None,
    ) -> None:
        self.settings = settings
        self.module = module
        self.name = name
        self.pass_fds = pass_fds
        self.on_exit = on_exit
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name=f"{name}-watcher", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._watcher.start()

    def _spawn(self) -> None:
        env = {**os.environ, **self.settings.as_env(), **self.env}
        # The parent-death signal follows the thread that forks: the watcher thread lives as long as serve.
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module], env=env, preexec_fn=die_with_parent, pass_fds=self.pass_fds
        )
        log.info(f"{self.name}_started", child_pid=self.process.pid)  # (`pid` is the writer's own)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            assert self.process is not None
            code = self.process.wait()
            self.on_exit(self.process.pid)
            if self._stopping.is_set():
                return
            log.error(f"{self.name}_died", code=code, restart_in_s=RESTART_PAUSE_S)
            time.sleep(RESTART_PAUSE_S)
            self._spawn()

    def stop(self) -> None:
        self._stopping.set()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def main() -> None:
    # Pages are applied by CPU-bound Python on a thread beside the event loop that relays and writes KV; with
    # the default 5 ms interpreter switch interval the loop would wait that long for the lock, again and again.
    sys.setswitchinterval(0.0005)
    settings = Settings.from_env(os.environ)
    configure_logging(settings.log_format, settings.log_level, settings.role)
    name_connections(f"{settings.role}-background")
    gc.freeze()  # as in serve: start-up's objects out of the collector's sight
    sys.exit(asyncio.run(run(settings)))


if __name__ == "__main__":
    main()
