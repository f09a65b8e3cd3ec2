"""Pausing Python's cyclic garbage collector around work whose new objects all live on.

A page of facts read, or a transaction's aggregates and events, are thousands of objects that none of the
collector's passes would free; passes during such work only walk them (docs/performance.md). Pauses may
overlap across threads (the writer's thread, a reader's): the collector resumes when the last one ends, and
only if it was running when the first began.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_pauses = 0
_resume = False


@contextmanager
def collector_paused() -> Iterator[None]:
    global _pauses, _resume
    with _lock:
        if _pauses == 0:
            _resume = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _resume:
                gc.enable()
