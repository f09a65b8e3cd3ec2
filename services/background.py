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
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import structlog

from ledger.child_process import die_with_parent
from ledger.connections import name_connections
from services.bootstrap import open_components
from services.logs import configure_logging
from services.roles import background_parts
from services.settings import Settings

log = structlog.get_logger(__name__)

RESTART_PAUSE_S = 1.0


async def run(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    components = await open_components(settings, parts=background_parts(settings.role, True))
    try:
        await stop.wait()
    finally:
        await components.close()


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
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
