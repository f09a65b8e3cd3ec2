"""Instructions per accepted fact in `serve`'s own process (HTTP, validation, group commit, writer), counted
by valgrind's callgrind: the same work gives the same count within about 1%, however busy the machine is,
where req/s on these shared 2 cores moves by 10-25% between runs of one commit.

    .venv/bin/python bench/instructions.py                          # SQLite, batch100 and single
    .venv/bin/python bench/instructions.py --stores sqlite,postgresql --facts 2000

It starts `reciprocity serve` under callgrind with instrumentation off (its children, nats-server and the
background process, run untraced), warms it up with the same kind of requests, then switches counting on
(`callgrind_control -i on`), sends a fixed number of facts from a separate process, dumps the counters and
divides. Compare commits by running this file from a worktree of each (copy it there if it is older).
Needs valgrind (Debian's package).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg.sql import SQL, Identifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import DEFAULT_DATABASE_URL, drive, give_body, signed_requests
from services.settings import Settings
from tests.processes import Server, cli_json

PATH = "/v1/tenants/bench/webhooks/crm"
CONCURRENCY = {"single": 32, "batch100": 4}  # as bench/ingest.py


class TracedServer(Server):
    """`serve` started under callgrind, counting nothing until told to."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        super().__init__(settings, workdir / "serve.log")
        self.ready_timeout_s = 300.0  # start-up under valgrind is slow
        self.callgrind_out = workdir / "callgrind.out"
        self.workdir = workdir

    def start(self) -> TracedServer:
        python = sys.executable
        wrapper = self.workdir / "python-under-callgrind"
        wrapper.write_text(
            f"#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file={self.callgrind_out} "
            f'{python} "$@"\n'
        )
        wrapper.chmod(0o755)
        sys.executable = str(wrapper)  # what Server.start runs
        try:
            super().start()
        finally:
            sys.executable = python
        return self

    def counted(self, send) -> int:
        """Instructions `serve` executed while `send()` ran."""
        assert self.process is not None
        pid = str(self.process.pid)
        subprocess.run(["callgrind_control", "--instr=on", pid], check=True, capture_output=True)
        send()
        subprocess.run(["callgrind_control", "--dump", pid], check=True, capture_output=True)
        time.sleep(1)
        newest = max(self.workdir.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
        found = re.search(r"^(?:summary|totals):\s*(\d+)", newest.read_text(errors="replace"), re.M)
        assert found, f"no totals in {newest}"
        return int(found.group(1))


def requests(secret: str, port: int, mode: str, tag: str, facts: int) -> list[bytes]:
    if mode == "single":
        bodies = [json.dumps(give_body(tag, n)).encode() for n in range(facts)]
        return signed_requests(secret, port, PATH, bodies)
    bodies = [
        json.dumps({"events": [give_body(f"{tag}-{b}", n) for n in range(100)]}).encode() for b in range(facts // 100)
    ]
    return signed_requests(secret, port, PATH + "/batch", bodies)


def measure(store: str, mode: str, facts: int, database_url: str) -> float:
    schema = f"bench_{uuid.uuid4().hex[:8]}" if store == "postgresql" else None
    with tempfile.TemporaryDirectory(prefix="reciprocity-instructions-") as tmp:
        workdir = Path(tmp)
        settings = Settings(
            data_dir=workdir / "data", database_url=f"{database_url}?schema={schema}" if schema else None
        )
        try:
            cli_json(settings, "tenant", "create", "bench")
            secret = cli_json(settings, "source", "add", "bench", "crm")["secret"]
            server = TracedServer(settings, workdir).start()
            try:

                def send(tag: str) -> None:
                    _, bad, _ = drive(
                        server.port, requests(secret, server.port, mode, tag, facts), CONCURRENCY[mode], 3600
                    )
                    assert not bad, f"refused: {bad[:5]}"

                send("warm")  # every participant met, caches and statements warm
                return server.counted(lambda: send("counted")) / facts
            finally:
                server.stop()
        finally:
            if schema:
                with psycopg.connect(database_url, autocommit=True) as conn:
                    conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="sqlite")
    parser.add_argument("--modes", default="batch100,single")
    parser.add_argument("--facts", type=int, default=2000, help="facts counted per measurement (and warm-up)")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    args = parser.parse_args()
    print(f"{'store':<11}{'mode':<10}{'facts':>7}{'instructions/fact':>20}")
    for store in args.stores.split(","):
        for mode in args.modes.split(","):
            per_fact = measure(store, mode, args.facts, args.database_url)
            print(f"{store:<11}{mode:<10}{args.facts:>7}{per_fact:>20,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
