"""A TCP load balancer for tests with several gateway replicas: each new connection goes to the
next backend that accepts it (round robin), as a Kubernetes Service does once a pod that is
going away has left its endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import itertools


class Balancer:
    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self._backends = backends
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.connections: dict[tuple[str, int], int] = {b: 0 for b in backends}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        start = next(self._turn)
        for i in range(len(self._backends)):
            backend = self._backends[(start + i) % len(self._backends)]
            try:
                reader, writer = await asyncio.open_connection(*backend)
            except OSError:
                continue  # refused: that replica is not listening (any more)
            self.connections[backend] += 1
            return reader, writer
        raise ConnectionRefusedError("no backend accepts connections")

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            backend_r, backend_w = await self._connect()
        except OSError:
            client_w.close()
            return
        pipes = [
            asyncio.create_task(_pipe(client_r, backend_w)),
            asyncio.create_task(_pipe(backend_r, client_w)),
        ]
        for task in pipes:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*pipes, return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
