"""Tracing: no SDK (no span cost) unless an exporter is asked for, trace context carried anyway."""

from opentelemetry import context, propagate
from opentelemetry.sdk.trace import TracerProvider

from cic_common.tracing import build_tracer_provider, setup_tracing

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_no_exporter_installs_no_sdk() -> None:
    assert setup_tracing("svc", {}) is None
    assert setup_tracing("svc", {"OTEL_TRACES_EXPORTER": "none"}) is None
    assert (
        setup_tracing("svc", {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"})
        is None
    )


def test_console_exporter_installs_a_provider() -> None:
    provider = build_tracer_provider("svc", {"OTEL_TRACES_EXPORTER": "console"})
    try:
        assert isinstance(provider, TracerProvider)
        assert provider.resource.attributes["service.name"] == "svc"
    finally:
        assert provider is not None
        provider.shutdown()


def test_incoming_trace_context_is_carried_on_without_an_sdk() -> None:
    token = context.attach(propagate.extract({"traceparent": TRACEPARENT}))
    try:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    finally:
        context.detach(token)
    assert carrier["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
