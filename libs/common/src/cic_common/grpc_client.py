"""gRPC channels for calling other services: a default deadline on every call, and the current
trace context carried in the metadata."""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry import propagate

DEFAULT_TIMEOUT_S = 5.0


def _with_defaults(
    details: grpc.aio.ClientCallDetails, timeout: float
) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata()
    for key, value in details.metadata or ():
        metadata.add(key, value)
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    for key, value in carrier.items():
        metadata.add(key, value)
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout if details.timeout is not None else timeout,
        metadata=metadata,
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_defaults(client_call_details, self._timeout), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    """Streams get the trace context only: a watch stream has no natural deadline."""

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_defaults(client_call_details, None), request)  # type: ignore[arg-type]


def create_channel(address: str, default_timeout_s: float = DEFAULT_TIMEOUT_S) -> grpc.aio.Channel:
    """An insecure channel to ``host:port`` for traffic inside the cluster."""
    return grpc.aio.insecure_channel(
        address,
        interceptors=[_UnaryUnary(default_timeout_s), _UnaryStream()],
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.enable_retries", 1),
        ],
    )
