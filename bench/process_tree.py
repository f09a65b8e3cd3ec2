"""The processes of one `serve` and what each has used, read from /proc (Linux): for the benchmarks only."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def serve_processes(pid: int) -> list[tuple[str, str]]:
    """(pid, name) of serve, its children (its background process, extra HTTP processes, the embedded
    nats-server) and the background's child (the influence worker)."""
    found, processes = [], [(str(pid), "serve")]
    while processes:
        process, name = processes.pop()
        found.append((process, name))
        for task in Path(f"/proc/{process}/task").iterdir():
            for child in (task / "children").read_text().split():
                kind = Path(f"/proc/{child}/comm").read_text().strip()
                if b"resource_tracker" in Path(f"/proc/{child}/cmdline").read_bytes():
                    continue  # multiprocessing's helper beside the influence worker
                if kind.startswith("python"):
                    worker = b"http_worker" in Path(f"/proc/{child}/cmdline").read_bytes()
                    kind = "influence" if name != "serve" else "http_worker" if worker else "background"
                processes.append((child, kind))
    return found


def cpu_seconds(pid: str | int) -> float:
    """User and system CPU seconds a process has used so far (OSError once it has ended)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # utime and stime, the 14th and 15th fields; the 2nd (comm) may hold spaces, so count after it.
    utime, stime = stat.rsplit(")", 1)[1].split()[11:13]
    return (int(utime) + int(stime)) / CLOCK_TICKS


def cpu_by_role(pid: int) -> Counter[str]:
    """CPU seconds so far of each kind of process in serve's tree (serve_processes' names)."""
    used = Counter[str]()
    for process, role in serve_processes(pid):
        try:
            used[role] += cpu_seconds(process)
        except OSError:
            continue  # it ended between the listing and the read
    return used
