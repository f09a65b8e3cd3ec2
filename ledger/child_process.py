"""Child processes that never outlive their parent: the embedded nats-server, serve's background and HTTP
processes, the influence worker. Linux's parent-death signal reaches a child even after a SIGKILL."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1
# Resolved before any fork: the child may only call it, not load anything, between fork and exec.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel for SIGKILL when the parent thread dies.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
