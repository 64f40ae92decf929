"""A TCP port in front of a real Postgres, Redis or gRPC server, for tests in which it goes away.

The gateway is given the relay's URL; :meth:`TcpRelay.cut` then closes the port and every
connection made through it (what a crashed or unreachable server looks like to its clients:
open connections drop, new ones are refused), and :meth:`TcpRelay.restore` opens the same port
again. The server behind it (TCP or unix socket) and other tests are not touched.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "redis": 6379}


class TcpRelay:
    def __init__(self, target_url: str) -> None:
        self._target_url = target_url
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def address(self) -> str:
        """``host:port`` of the relay (for a ``tcp://host:port`` target such as a gRPC server)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``target_url`` as a client reaches it through the relay."""
        parts = urlsplit(self._target_url)
        if parts.scheme == "unix":
            return f"redis://127.0.0.1:{self.port}/0"
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "host"])
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc, query=query))

    async def _connect_target(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        parts = urlsplit(self._target_url)
        if parts.scheme == "unix":
            return await asyncio.open_unix_connection(parts.path)
        socket_dir = dict(parse_qsl(parts.query)).get("host", "")
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
        if socket_dir.startswith("/"):
            return await asyncio.open_unix_connection(f"{socket_dir}/.s.PGSQL.{port}")
        return await asyncio.open_connection(parts.hostname or "127.0.0.1", port)

    async def start(self) -> TcpRelay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def restore(self) -> None:
        """Listens again on the same port."""
        await self.start()

    async def cut(self) -> None:
        """Refuses new connections and drops the open ones."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await self._connect_target()
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, target_writer}
        pipes = [
            asyncio.create_task(_pipe(reader, target_writer)),
            asyncio.create_task(_pipe(target_reader, writer)),
        ]
        self._tasks.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
                self._tasks.discard(task)
            for end in (writer, target_writer):
                end.transport.abort()
                self._writers.discard(end)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
