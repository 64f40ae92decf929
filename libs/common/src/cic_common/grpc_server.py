"""A ``grpc.aio`` server with the standard health service, reflection, and one interceptor that
records metrics, logs failures and continues the caller's trace; stopped gracefully on SIGTERM."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from cic_common.metrics import GrpcMetrics

log = logging.getLogger(__name__)


def _code_of(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class _LabelledMetrics:
    """The labelled children of the gRPC metrics, looked up once per method and code."""

    def __init__(self, metrics: GrpcMetrics, method: str) -> None:
        self._metrics = metrics
        self._method = method
        self._latency = metrics.server_latency.labels(method)
        self._handled: dict[str, Any] = {}

    def record(self, code: str, started: float) -> None:
        counter = self._handled.get(code)
        if counter is None:
            counter = self._handled[code] = self._metrics.server_handled.labels(self._method, code)
        counter.inc()
        self._latency.observe(time.perf_counter() - started)


def _trace_context(context: grpc.aio.ServicerContext) -> otel_context.Context | None:
    """The caller's trace context, when its metadata carries one."""
    carrier = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
    return propagate.extract(carrier) if "traceparent" in carrier else None


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary-unary and unary-stream handlers with metrics, logging and trace context.

    A method's wrapped handler is built once and kept: building new handler objects for every
    call cost more than the call itself (~0.3 ms). What differs between calls (the caller's
    trace context) is read from each call's own metadata."""

    def __init__(self, metrics: GrpcMetrics | None) -> None:
        self._metrics = metrics
        self._tracer = trace.get_tracer("cic.grpc.server")
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        record = _LabelledMetrics(self._metrics, method).record if self._metrics else None
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, record, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, record, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None and inspect.isasyncgenfunction(
            handler.stream_stream
        ):  # a handler that reads and writes through its context is left as it is
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(method, record, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_unary(self, method: str, record: Any, behaviour: Any) -> Any:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            caller = _trace_context(context)
            token = otel_context.attach(caller) if caller is not None else None
            code = "UNKNOWN"
            try:
                with self._tracer.start_as_current_span(method, kind=trace.SpanKind.SERVER):
                    response = await behaviour(request, context)
                code = _code_of(context)
                return response
            except grpc.aio.AbortError:
                code = _code_of(context)
                raise
            except Exception:
                log.exception("unhandled error in %s", method)
                raise
            finally:
                if token is not None:
                    otel_context.detach(token)
                if record is not None:
                    record(code, started)

        return wrapped

    def _wrap_stream(self, method: str, record: Any, behaviour: Any) -> Any:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            caller = _trace_context(context)
            token = otel_context.attach(caller) if caller is not None else None
            code = "UNKNOWN"
            try:
                async for item in behaviour(request, context):
                    yield item
                code = _code_of(context)
            except grpc.aio.AbortError:
                code = _code_of(context)
                raise
            finally:
                if token is not None:
                    otel_context.detach(token)
                if record is not None:
                    record(code, started)

        return wrapped


class GrpcServer:
    """One service's gRPC server: add servicers, ``start()``, later ``stop(grace)``."""

    def __init__(self, metrics: GrpcMetrics | None = None) -> None:
        # No SO_REUSEPORT: a second process on the same port must fail, not share it silently.
        self.server = grpc.aio.server(
            interceptors=[ObservabilityInterceptor(metrics)], options=[("grpc.so_reuseport", 0)]
        )
        self.health = health.aio.HealthServicer()
        self._service_names: list[str] = [reflection.SERVICE_NAME, health.SERVICE_NAME]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

    def add_service(
        self, full_name: str, add_to_server: Callable[[Any, grpc.aio.Server], None], servicer: Any
    ) -> None:
        """Adds ``servicer`` (``add_to_server`` is the generated ``add_XServicer_to_server``)."""
        add_to_server(servicer, self.server)
        self._service_names.append(full_name)

    async def start(self, port: int, host: str = "[::]") -> int:
        """Binds ``host:port`` (0: a free port), marks every service SERVING; returns the port."""
        reflection.enable_server_reflection(self._service_names, self.server)
        bound = self.server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise OSError(f"cannot bind gRPC port {port}")
        await self.server.start()
        await self._set_all(health_pb2.HealthCheckResponse.SERVING)
        return bound

    async def stop(self, grace: float) -> None:
        """Health to NOT_SERVING, refuse new calls, let calls in flight finish within ``grace``."""
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)

    async def _set_all(self, status: int) -> None:
        for name in self._names_with_overall():
            await self.health.set(name, status)

    def _names_with_overall(self) -> Iterable[str]:
        yield ""
        yield from (
            n
            for n in self._service_names
            if n not in (reflection.SERVICE_NAME, health.SERVICE_NAME)
        )
