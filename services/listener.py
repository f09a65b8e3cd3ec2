"""The HTTP listening socket, bound once by `serve` (and shared with its HTTP workers) or by the demo.

A port taken by another process is an error, never a port shared with it: SO_REUSEADDR only lets a restart
bind while the old connections linger in TIME_WAIT."""

from __future__ import annotations

import errno
import socket

BACKLOG = 1024


class ListenError(OSError):
    """The host cannot be resolved or the port cannot be bound; `taken` when another process holds it."""

    def __init__(self, message: str, *, taken: bool = False) -> None:
        super().__init__(message)
        self.taken = taken


def bound_listener(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one), inheritable by child processes."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
            0
        ]
        listener = socket.socket(family, kind)
    except OSError as failure:
        raise ListenError(f"cannot listen on {host}: {failure.strerror}") from None
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError as failure:
        listener.close()
        if failure.errno == errno.EADDRINUSE:
            raise ListenError(f"port {port} on {host} is taken", taken=True) from None
        raise ListenError(f"cannot listen on {host} port {port}: {failure.strerror}") from None
    listener.listen(BACKLOG)
    listener.set_inheritable(True)
    return listener
