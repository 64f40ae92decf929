"""OpenTelemetry set-up from OpenTelemetry's own standard ``OTEL_*`` variables.

The SDK reads ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_*`` and the
sampler variables itself; this module only decides which exporter ``OTEL_TRACES_EXPORTER``
asks for (``otlp``, ``console`` or ``none``; default ``none`` so a laptop needs no collector).
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter


def _exporter(name: str) -> SpanExporter | None:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "console":
        return ConsoleSpanExporter()
    return None


def setup_tracing(service: str, environ: Mapping[str, str]) -> TracerProvider:
    """Installs a global tracer provider for ``service``; returns it so it can be shut down."""
    resource = Resource.create({SERVICE_NAME: environ.get("OTEL_SERVICE_NAME", service)})
    provider = TracerProvider(resource=resource)
    for name in environ.get("OTEL_TRACES_EXPORTER", "none").split(","):
        exporter = _exporter(name.strip())
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider
