"""A TCP proxy in front of PostgreSQL that a test can make refuse new connections: the server restarting or
a network blip, as the processes behind the proxy see it, while the real server goes on for everyone else."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from urllib.parse import urlsplit, urlunsplit


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


class RefusingProxy:
    """Forwards connections to the server of `database_url` while `refusing` is false; while it is true, a
    new connection is accepted and closed at once (the client sees the server close it). It runs its own event
    loop on a thread, so a test's blocking database calls through it cannot hold it up."""

    def __init__(self, database_url: str) -> None:
        self.target = urlsplit(database_url)
        self.refusing = False
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.serve, name="refusing-proxy", daemon=True)
        self.listening = threading.Event()

    @property
    def url(self) -> str:
        """The database URL through the proxy."""
        user = f"{self.target.username}@" if self.target.username else ""
        return urlunsplit(self.target._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    def __enter__(self) -> RefusingProxy:
        self.thread.start()
        assert self.listening.wait(5), "the proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self.forward, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.listening.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()
            pending = asyncio.all_tasks(self.loop)  # the pipes still open: closed before the loop is
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    async def forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        try:
            upstream = await asyncio.open_connection(self.target.hostname, self.target.port or 5432)
        except OSError:
            writer.close()
            return
        with contextlib.suppress(Exception):
            await asyncio.gather(pipe(reader, upstream[1]), pipe(upstream[0], writer))
