"""A cheap closed-loop HTTP/1.1 load generator: keep-alive connections speaking raw asyncio
protocols, one pre-built request each, so that the client spends as little CPU as it can.

It understands just what the benchmark needs of a response: the status, a ``Content-Length``
body or a chunked one (a stream of server-sent events), and nothing else.
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass, field
from typing import cast

_HEAD_END = b"\r\n\r\n"
_CRLF = b"\r\n"
_DONE_EVENT = b"data: [DONE]"
REQUEST_TIMEOUT_S = 30.0


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; :meth:`send` writes a request and resolves with the status
    and the raw body (chunk framing included) once the response is complete."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body_start = -1
        self._content_length = -1
        self._chunk_at = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("connection closed by the server"))

    @property
    def open(self) -> bool:
        return self._transport is not None

    def send(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        if self._transport is None:
            raise ConnectionError("connection closed")
        self._buffer.clear()
        self._body_start = self._content_length = -1
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(raw)
        return self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._body_start < 0 and not self._read_head():
            return
        end = self._body_end()
        if end >= 0 and self._waiter is not None and not self._waiter.done():
            status = int(self._buffer[9:12])
            self._waiter.set_result((status, bytes(self._buffer[self._body_start : end])))

    def _read_head(self) -> bool:
        head_end = self._buffer.find(_HEAD_END)
        if head_end < 0:
            return False
        self._body_start = self._chunk_at = head_end + 4
        for line in bytes(self._buffer[:head_end]).lower().split(_CRLF)[1:]:
            name, _, value = line.partition(b":")
            if name == b"content-length":
                self._content_length = int(value)
        return True

    def _body_end(self) -> int:
        """Where the body ends in the buffer, or -1 while it is incomplete."""
        if self._content_length >= 0:
            end = self._body_start + self._content_length
            return end if len(self._buffer) >= end else -1
        while (line_end := self._buffer.find(_CRLF, self._chunk_at)) >= 0:
            size = int(bytes(self._buffer[self._chunk_at : line_end]).split(b";")[0], 16)
            if size == 0:
                return line_end + 4 if len(self._buffer) >= line_end + 4 else -1
            next_chunk = line_end + 2 + size + 2
            if len(self._buffer) < next_chunk:
                return -1
            self._chunk_at = next_chunk
        return -1


@dataclass
class PhaseResult:
    """Latencies (seconds) of the requests that started after the warm-up; failures of all."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    window_s: float = 0.0

    def fail(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)


async def _connect(host: str, port: int) -> HttpConnection:
    _, protocol = await asyncio.get_running_loop().create_connection(HttpConnection, host, port)
    return protocol


def _failure(status: int, body: bytes, stream: bool) -> str | None:
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    if stream and _DONE_EVENT not in body:
        return f"stream without [DONE]: {body[-200:]!r}"
    return None


async def _worker(
    address: tuple[str, int],
    conn: HttpConnection,
    raw: bytes,
    stream: bool,
    window: tuple[float, float],
    out: PhaseResult,
) -> None:
    """Sends back to back until the window closes; failures count during the warm-up too."""
    measure_from, stop_at = window
    while (started := time.perf_counter()) < stop_at:
        try:
            status, body = await conn.send(raw)
        except ConnectionError as err:
            out.fail(str(err))
            conn = await _connect(*address)
            continue
        ended = time.perf_counter()
        problem = _failure(status, body, stream)
        if problem is not None:
            out.fail(problem)
        elif started >= measure_from:
            out.latencies.append(ended - started)
    conn.close()


async def run_phase(
    host: str,
    port: int,
    raw: bytes,
    *,
    stream: bool,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
) -> PhaseResult:
    """``concurrency`` connections each sending ``raw`` back to back for warm-up + duration;
    only the requests started after the warm-up are counted."""
    conns = [await _connect(host, port) for _ in range(concurrency)]
    out = PhaseResult()
    gc.collect()
    gc.disable()
    try:
        measure_from = time.perf_counter() + warmup_s
        window = (measure_from, measure_from + duration_s)
        tasks = [
            asyncio.ensure_future(_worker((host, port), c, raw, stream, window, out)) for c in conns
        ]
        done, pending = await asyncio.wait(tasks, timeout=warmup_s + duration_s + REQUEST_TIMEOUT_S)
        for task in pending:
            task.cancel()
            out.fail("no answer within the request timeout")
        for task in done:
            if task.exception() is not None:
                out.fail(repr(task.exception()))
        out.window_s = time.perf_counter() - measure_from if not pending else duration_s
    finally:
        gc.enable()
        for conn in conns:
            conn.close()
    return out
