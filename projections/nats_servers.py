"""RECIPROCITY_NATS_URL as nats-py needs it: a list of servers, and their credentials given on their own.

nats-py refuses a comma-separated string, and it reads a user and password only from the URL of the server
it is connecting to: a server it discovered from the cluster (or a listed one without them) would be tried
without any. So the servers go to the client without credentials, and the credentials as options that
hold for every server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

SCHEMES = ("nats", "tls", "ws", "wss")


@dataclass(frozen=True)
class NatsServers:
    servers: tuple[str, ...]  # scheme://host:port, no credentials
    user: str | None = None
    password: str | None = None
    token: str | None = None  # nats://TOKEN@host: a user without a password is a token, as for nats-py

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of nats.connect: the servers, and whichever credentials the URL gave."""
        options: dict[str, Any] = {"servers": list(self.servers)}
        if self.token is not None:
            options["token"] = self.token
        if self.user is not None:
            options["user"], options["password"] = self.user, self.password
        return options


def parse_servers(url: str) -> NatsServers:
    """`nats://user:password@a:4222,nats://b:4222,c:4222` (the scheme defaults to nats:// as in nats-py).
    A user or password with a comma, `@` or `/` in it is percent-encoded. The errors never quote the URL:
    it may hold a password."""
    parts = [part.strip() for part in url.split(",")]
    if not all(parts):
        raise ValueError("a server of the comma-separated list is empty")
    servers, credentials = [], set()
    for number, part in enumerate(parts, start=1):
        parsed = urlsplit(part if "://" in part else f"nats://{part}")
        servers.append(_server(parsed, number))
        if "@" in parsed.netloc:
            credentials.add((parsed.username, parsed.password))
    if len({scheme in ("ws", "wss") for scheme in (urlsplit(server).scheme for server in servers)}) > 1:
        raise ValueError("websocket and plain NATS servers cannot be mixed")
    if len(credentials) > 1:
        raise ValueError("the servers give different users or passwords: one client has one identity")
    if not credentials:
        return NatsServers(tuple(servers))
    ((user, password),) = credentials
    if password is None:
        return NatsServers(tuple(servers), token=unquote(user or ""))
    return NatsServers(tuple(servers), user=unquote(user or ""), password=unquote(password))


def _server(parsed: SplitResult, number: int) -> str:
    """The server's URL without its user information; nats and tls default to port 4222, as in nats-py."""
    if parsed.scheme not in SCHEMES:
        raise ValueError(f"server {number}: the scheme is not one of {', '.join(SCHEMES)}")
    try:
        port = parsed.port  # ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError(f"server {number}: the port is not a number from 0 to 65535") from None
    if not parsed.hostname:
        raise ValueError(f"server {number}: no host")
    address = parsed.netloc.rpartition("@")[2]
    if port is None and parsed.scheme in ("nats", "tls"):
        address += ":4222"
    return parsed._replace(netloc=address).geturl()
