"""The shared gRPC server runner: health, reflection, metrics, trace context and deadlines."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from cic.billing.v1 import billing_pb2, billing_pb2_grpc
from cic_common.grpc_client import create_channel
from cic_common.grpc_server import GrpcServer
from cic_common.metrics import GrpcMetrics


class _Billing(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self) -> None:
        self.seen_metadata: dict[str, str] = {}
        self.seen_deadline: float | None = None
        self.seen_trace_ids: list[str] = []

    async def RecordUsage(self, request, context):
        self.seen_metadata = {k: v for k, v in context.invocation_metadata()}
        self.seen_deadline = context.time_remaining()
        span_context = trace.get_current_span().get_span_context()
        self.seen_trace_ids.append(format(span_context.trace_id, "032x"))
        if not request.events:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no events")
        return billing_pb2.RecordUsageResponse(recorded=len(request.events))


@pytest.fixture
async def server():
    registry = CollectorRegistry()
    srv = GrpcServer(GrpcMetrics(registry))
    servicer = _Billing()
    srv.add_service(
        "cic.billing.v1.BillingService",
        billing_pb2_grpc.add_BillingServiceServicer_to_server,
        servicer,
    )
    port = await srv.start(0, host="127.0.0.1")
    yield srv, port, servicer, registry
    await srv.stop(0)


async def test_health_serving_then_not_serving(server) -> None:
    srv, port, _, _ = server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", "cic.billing.v1.BillingService"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await srv.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_reflection_lists_services(server) -> None:
    _, port, _, _ = server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
        names = {s.name for s in reply.list_services_response.service}
        assert {"cic.billing.v1.BillingService", "grpc.health.v1.Health"} <= names


async def test_client_sets_deadline_and_metrics_count_codes(server) -> None:
    _, port, servicer, registry = server
    channel = create_channel(f"127.0.0.1:{port}", default_timeout_s=3.0)
    try:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        reply = await stub.RecordUsage(
            billing_pb2.RecordUsageRequest(events=[billing_pb2.UsageEvent(request_id="r")])
        )
        assert reply.recorded == 1
        assert (
            servicer.seen_deadline is not None and 0 < servicer.seen_deadline <= 3.1
        )  # timer slack
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RecordUsage(billing_pb2.RecordUsageRequest())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await channel.close()
    method = "/cic.billing.v1.BillingService/RecordUsage"
    ok = registry.get_sample_value(
        "cic_grpc_server_handled_total", {"method": method, "code": "OK"}
    )
    bad = registry.get_sample_value(
        "cic_grpc_server_handled_total", {"method": method, "code": "INVALID_ARGUMENT"}
    )
    assert (ok, bad) == (1.0, 1.0)


async def test_trace_context_reaches_the_server(server) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    _, port, servicer, _ = server
    tracer = TracerProvider().get_tracer("test")
    channel = create_channel(f"127.0.0.1:{port}")
    try:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        with tracer.start_as_current_span("caller") as span:
            await stub.RecordUsage(
                billing_pb2.RecordUsageRequest(events=[billing_pb2.UsageEvent(request_id="r")])
            )
            trace_id = format(span.get_span_context().trace_id, "032x")
    finally:
        await channel.close()
    assert trace_id in servicer.seen_metadata.get("traceparent", "")
    assert trace.get_current_span() is not None


async def test_port_in_use_is_refused(server) -> None:
    _, port, _, _ = server
    other = GrpcServer()
    with pytest.raises(Exception):  # noqa: B017  (grpc raises RuntimeError or OSError by version)
        await other.start(port, host="127.0.0.1")
    await other.stop(0)


async def test_each_call_continues_its_own_callers_trace(server) -> None:
    _, port, servicer, _ = server
    trace_ids = ["0af7651916cd43dd8448eb211c80319c", "4bf92f3577b34da6a3ce929d0e0e4736"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        request = billing_pb2.RecordUsageRequest(events=[billing_pb2.UsageEvent(request_id="r")])
        for trace_id in [*trace_ids, trace_ids[0]]:
            metadata = (("traceparent", f"00-{trace_id}-b7ad6b7169203331-01"),)
            await stub.RecordUsage(request, metadata=metadata)
        await stub.RecordUsage(request)
    assert servicer.seen_trace_ids == [*trace_ids, trace_ids[0], "0" * 32]
