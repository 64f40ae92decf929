"""A stand-in for many vLLM nodes' ``/health`` and ``/metrics`` at the cost of almost nothing.

    python bench/node_mirror.py --port P --metrics-from http://127.0.0.1:SIM/metrics

It fetches a real ``/metrics`` page once (from a running ``cic-vllm-sim``) and then serves it,
byte for byte, to every ``GET /metrics``, and ``200`` to every ``GET /health``, over keep-alive
HTTP/1.1 with a minimal asyncio protocol. The scheduler benchmark registers its 64 nodes at this
address: the scheduler scrapes and probes exactly what it would from vLLM, while the stand-in does
not take the CPU that 64 real nodes would each spend on their own machines.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import cast

import aiohttp
import uvloop

_END = b"\r\n\r\n"


def _response(status: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


class Mirror(asyncio.Protocol):
    def __init__(self, answers: dict[bytes, bytes]) -> None:
        self._answers = answers
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(_END)) >= 0:
            request_line = bytes(self._buffer[: self._buffer.find(b"\r\n")])
            del self._buffer[: end + len(_END)]
            parts = request_line.split(b" ")
            path = parts[1].split(b"?")[0] if len(parts) > 1 else b""
            answer = self._answers.get(path) or _response("404 Not Found", b"", "text/plain")
            assert self._transport is not None
            self._transport.write(answer)


async def serve(port: int, metrics_from: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(metrics_from) as resp:
        resp.raise_for_status()
        page = await resp.read()
    answers = {
        b"/metrics": _response("200 OK", page, "text/plain; version=0.0.4; charset=utf-8"),
        b"/health": _response("200 OK", b"", "text/plain"),
    }
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Mirror(answers), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--metrics-from", required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a stop, not a failure
    uvloop.run(serve(args.port, args.metrics_from))


if __name__ == "__main__":
    main()
