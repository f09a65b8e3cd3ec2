"""glibc's malloc arenas, bounded for serve's whole process tree.

glibc gives threads that allocate at the same time arenas of their own, up to eight per core, and memory
freed into one arena is not handed to another. The background process runs the follower, the relay, the KV
writer and their thread pools; with the default it peaked 50 to 80 MiB higher than with two arenas, at 300k
and at 1M facts, the follower no slower (docs/performance.md, "bench/memory.py"). Python threads allocate
mostly under the interpreter lock, so two arenas cost them next to no waiting.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

ARENAS_MAX = 2
M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def bound_malloc_arenas() -> None:
    """Bounds this process's arenas and, through the environment, its children's (the background and HTTP
    processes, and the influence worker they start). An operator's own MALLOC_ARENA_MAX stands."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return  # glibc read it when this process started; the children inherit it
    os.environ["MALLOC_ARENA_MAX"] = str(ARENAS_MAX)
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl has no such arenas): nothing to bound
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, ARENAS_MAX)  # this process started without it
