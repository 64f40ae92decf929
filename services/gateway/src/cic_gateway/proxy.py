"""Forwarding one inference request to a node the scheduler picked, and relaying the answer.

Every request that got a lease gives it back (``ReleaseNode``) whatever happens, and every
request that reached a node emits exactly one usage event with the tokens the node reported.
A client that goes away makes the gateway close the upstream connection at once, which is how
vLLM learns to abort the generation. (Issue 3 adds retrying on another node.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
from aiohttp import web
from opentelemetry import propagate

from cic_gateway.errors import CLIENT_CLOSED_REQUEST, SERVER_ERROR, ApiError, error_body
from cic_gateway.metrics import GatewayMetrics
from cic_gateway.request_keys import MODEL_LABEL
from cic_gateway.scheduler_client import Lease, Outcome, SchedulerClient
from cic_gateway.sse import BadStream, StreamRelay, UsageWish, event_bytes, usage_of
from cic_gateway.store import KeyAuth
from cic_gateway.usage import UsageRecord, UsageSink

log = logging.getLogger(__name__)

_STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    request_id: str
    auth: KeyAuth
    model: str
    path: str
    body: bytes
    stream: bool
    wish: UsageWish


@dataclass(slots=True)
class Exchange:
    """What happened to one request on its node, for the lease and the usage event."""

    lease: Lease
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    status: int = 502
    outcome: int = Outcome.OUTCOME_NODE_ERROR
    reached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def ended(self, status: int, outcome: int) -> None:
        self.status, self.outcome = status, outcome


class ClientGone(Exception):
    """Writing to the client failed: it closed the connection."""


def _node_failed(message: str, status: int = 502, code: str = "upstream_error") -> ApiError:
    return ApiError(status, message, type=SERVER_ERROR, code=code)


class Proxy:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        scheduler: SchedulerClient,
        sink: UsageSink,
        metrics: GatewayMetrics,
    ) -> None:
        self._session = session
        self._scheduler = scheduler
        self._sink = sink
        self._metrics = metrics

    async def handle(self, request: web.Request, call: ProxyRequest) -> web.StreamResponse:
        lease = await self._scheduler.pick(call.model)
        request[MODEL_LABEL] = call.model  # a model the scheduler knows: a bounded metric label
        exchange = Exchange(lease)
        try:
            if call.stream:
                return await self._relay_stream(request, call, exchange)
            return await self._relay_unary(call, exchange)
        except asyncio.CancelledError:
            self._client_gone(exchange)
            raise
        finally:
            self._finish(call, exchange)

    async def _open(self, call: ProxyRequest, exchange: Exchange) -> aiohttp.ClientResponse:
        url = exchange.lease.endpoint + call.path
        headers = {"Content-Type": "application/json", "X-Request-Id": call.request_id}
        propagate.inject(headers)  # vLLM continues the trace when it exports its own spans
        try:
            response = await self._session.post(url, data=call.body, headers=headers)
        except aiohttp.ConnectionTimeoutError:
            self._metrics.upstream_errors.labels("connect").inc()
            exchange.ended(504, Outcome.OUTCOME_NODE_ERROR)
            raise _node_failed(
                "The node serving this model did not answer in time.", 504, "upstream_timeout"
            ) from None
        except aiohttp.ClientConnectorError:
            self._metrics.upstream_errors.labels("connect").inc()
            raise _node_failed("The node serving this model could not be reached.") from None
        except TimeoutError:
            exchange.reached = True
            raise self._timed_out(exchange) from None
        except aiohttp.ClientError:
            exchange.reached = True
            raise self._reset(exchange) from None
        exchange.reached = True
        return response

    def _timed_out(self, exchange: Exchange) -> ApiError:
        self._metrics.upstream_errors.labels("timeout").inc()
        exchange.ended(504, Outcome.OUTCOME_NODE_ERROR)
        return _node_failed("The node serving this model timed out.", 504, "upstream_timeout")

    def _reset(self, exchange: Exchange) -> ApiError:
        self._metrics.upstream_errors.labels("reset").inc()
        exchange.ended(502, Outcome.OUTCOME_NODE_ERROR)
        return _node_failed("The node serving this model failed.")

    async def _relay_unary(self, call: ProxyRequest, exchange: Exchange) -> web.Response:
        upstream = await self._open(call, exchange)
        return self._answer(upstream, await self._read_all(upstream, exchange), exchange)

    async def _read_all(self, upstream: aiohttp.ClientResponse, exchange: Exchange) -> bytes:
        try:
            return await upstream.read()
        except TimeoutError:
            raise self._timed_out(exchange) from None
        except aiohttp.ClientError:
            raise self._reset(exchange) from None
        finally:
            upstream.release()  # back to the pool when read to the end, else closed

    def _answer(
        self, upstream: aiohttp.ClientResponse, body: bytes, exchange: Exchange
    ) -> web.Response:
        """The node's complete answer as the client gets it: as is, unless the node failed."""
        if upstream.status >= 500:
            self._metrics.upstream_errors.labels("status_5xx").inc()
            log.warning("node %s answered %d", exchange.lease.node_id, upstream.status)
            exchange.ended(502, Outcome.OUTCOME_NODE_ERROR)
            raise _node_failed("The node serving this model failed.")
        ok = upstream.status < 400
        exchange.ended(
            upstream.status, Outcome.OUTCOME_SUCCESS if ok else Outcome.OUTCOME_CLIENT_ERROR
        )
        if ok:
            exchange.prompt_tokens, exchange.completion_tokens = usage_of(body)
        content_type = upstream.headers.get("Content-Type", "application/json")
        return web.Response(
            status=upstream.status, body=body, headers={"Content-Type": content_type}
        )

    async def _relay_stream(
        self, request: web.Request, call: ProxyRequest, exchange: Exchange
    ) -> web.StreamResponse:
        upstream = await self._open(call, exchange)
        finished = False
        try:
            if upstream.status != 200:
                return self._answer(upstream, await self._read_all(upstream, exchange), exchange)
            response = web.StreamResponse(status=200, headers=_STREAM_HEADERS)
            try:
                exchange.ended(200, Outcome.OUTCOME_NODE_ERROR)
                await _prepare(response, request)
                finished = await self._pump(upstream, response, call, exchange)
            except ClientGone:
                self._client_gone(exchange)
            return response
        finally:
            if finished:
                upstream.release()
            else:
                upstream.close()  # vLLM aborts an unfinished generation when its connection drops

    async def _pump(
        self,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        call: ProxyRequest,
        exchange: Exchange,
    ) -> bool:
        """Copies events until the node's ``[DONE]``; True when the node's stream ended cleanly.
        A node failure ends the client's stream with an error event (it already has its 200)."""
        relay = StreamRelay(call.wish)
        first_token_seen = False
        try:
            async for data in upstream.content.iter_any():
                for event in relay.feed(data):
                    await _write(response, event)
                exchange.prompt_tokens, exchange.completion_tokens = (
                    relay.prompt_tokens,
                    relay.completion_tokens,
                )
                if relay.first_token_relayed and not first_token_seen:
                    first_token_seen = True
                    self._metrics.ttft.labels(call.model).observe(
                        time.perf_counter() - exchange.started
                    )
            if not relay.done:
                raise BadStream("the stream ended without [DONE]")
        except TimeoutError:
            error = self._timed_out(exchange)
        except (aiohttp.ClientError, BadStream) as err:
            log.warning("stream from node %s broke: %s", exchange.lease.node_id, err)
            self._metrics.upstream_errors.labels("bad_stream").inc()
            error = self._reset(exchange)
        else:
            exchange.ended(200, Outcome.OUTCOME_SUCCESS)
            await _write_eof(response)
            return True
        with contextlib.suppress(ClientGone):
            await _write(
                response, event_bytes(error_body(error.message, type=error.type, code=error.code))
            )
            await _write_eof(response)
        return False

    def _client_gone(self, exchange: Exchange) -> None:
        self._metrics.client_disconnects.inc()
        exchange.ended(CLIENT_CLOSED_REQUEST, Outcome.OUTCOME_CLIENT_ERROR)

    def _finish(self, call: ProxyRequest, exchange: Exchange) -> None:
        if exchange.reached:
            self._emit_usage(call, exchange)
        self._scheduler.release_soon(
            exchange.lease, exchange.outcome, exchange.prompt_tokens, exchange.completion_tokens
        )

    def _emit_usage(self, call: ProxyRequest, exchange: Exchange) -> None:
        self._metrics.tokens.labels(call.model, "prompt").inc(exchange.prompt_tokens)
        self._metrics.tokens.labels(call.model, "completion").inc(exchange.completion_tokens)
        self._sink.emit(
            UsageRecord(
                request_id=call.request_id,
                tenant_id=call.auth.tenant_id,
                api_key_id=call.auth.key_id,
                model=call.model,
                node_id=exchange.lease.node_id,
                prompt_tokens=exchange.prompt_tokens,
                completion_tokens=exchange.completion_tokens,
                started_at=exchange.started_at,
                finished_at=datetime.now(UTC),
                streamed=call.stream,
                status_code=exchange.status,
            )
        )


async def _prepare(response: web.StreamResponse, request: web.Request) -> None:
    try:
        await response.prepare(request)
    except ConnectionError:
        raise ClientGone() from None


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionError:
        raise ClientGone() from None


async def _write_eof(response: web.StreamResponse) -> None:
    try:
        await response.write_eof()
    except ConnectionError:
        raise ClientGone() from None
