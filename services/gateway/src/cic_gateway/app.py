"""The gateway's aiohttp application, built by :func:`create_app` for ``__main__`` and tests."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry

from cic_gateway import health, resources
from cic_gateway.admin_auth import admin_guard
from cic_gateway.config import GatewaySettings
from cic_gateway.cors import setup_cors
from cic_gateway.dashboard.routes import setup_dashboard
from cic_gateway.metrics import GatewayMetrics
from cic_gateway.middleware import add_request_id_header, openai_errors, request_context
from cic_gateway.openapi import setup_openapi
from cic_gateway.ratelimit import add_rate_limit_headers
from cic_gateway.resources import LIFECYCLE, METRICS, SETTINGS, Lifecycle
from cic_gateway.routes import setup_routes


def create_app(
    settings: GatewaySettings, registry: CollectorRegistry = REGISTRY
) -> web.Application:
    """The app; its resources (Postgres, Redis, gRPC channels, the upstream session, the usage
    sender) open when a runner sets it up and close, in reverse order, when it cleans up."""
    app = web.Application(
        middlewares=[request_context, admin_guard, openai_errors],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = GatewayMetrics(registry)
    app[LIFECYCLE] = Lifecycle()
    app.cleanup_ctx.extend(
        [
            resources.postgres_ctx,
            resources.redis_ctx,
            resources.ratelimit_ctx,
            resources.revocations_ctx,
            resources.budgets_ctx,
            resources.grpc_ctx,
            resources.catalog_ctx,
            resources.usage_ctx,
            resources.upstream_ctx,
            health.dependency_probes_ctx,
        ]
    )
    app.on_response_prepare.append(add_request_id_header)
    app.on_response_prepare.append(add_rate_limit_headers)
    setup_routes(app)
    setup_dashboard(app)
    setup_openapi(app)
    setup_cors(app, settings.cic_cors_origins)  # after every route is added
    return app


def create_runner(app: web.Application, settings: GatewaySettings) -> web.AppRunner:
    """A runner that cancels a handler whose client went away (so its node stops generating)
    and gives requests in flight ``SHUTDOWN_GRACE_S`` to finish when it cleans up."""
    return web.AppRunner(
        app,
        handler_cancellation=True,
        shutdown_timeout=settings.shutdown_grace_s,
        access_log=None,
    )
