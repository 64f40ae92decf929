"""The simulated node's aiohttp application: `create_app(config)`."""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry

from cic_vllm_sim import control, handlers
from cic_vllm_sim.config import SimConfig
from cic_vllm_sim.engine import ENGINE, Engine
from cic_vllm_sim.metrics import SimMetrics
from cic_vllm_sim.protocol import ApiError

MAX_BODY_BYTES = 64 * 1024 * 1024


@web.middleware
async def vllm_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count requests per route and answer every error in vLLM's error shape."""
    resource = request.match_info.route.resource
    if resource is not None:
        request.app[ENGINE].stats.requests[resource.canonical] += 1
    try:
        return await handler(request)
    except ApiError as api_error:
        return error_response(api_error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        phrase = HTTPStatus(exc.status).phrase
        return error_response(ApiError(exc.status, phrase, phrase))


def error_response(error: ApiError) -> web.Response:
    return web.Response(body=error.body(), status=error.status, content_type="application/json")


def create_app(config: SimConfig, registry: CollectorRegistry | None = None) -> web.Application:
    """A simulated vLLM node serving ``config.model`` (metrics in ``registry``, else a new one)."""
    registry = registry if registry is not None else CollectorRegistry()
    app = web.Application(middlewares=[vllm_errors], client_max_size=MAX_BODY_BYTES)
    metrics = SimMetrics(registry, config.model_name, config.max_model_len)
    app[ENGINE] = Engine(config, metrics)
    app[control.REGISTRY] = registry
    app.add_routes(
        [
            web.post("/v1/chat/completions", handlers.chat_completions),
            web.post("/v1/completions", handlers.completions),
            web.post("/v1/embeddings", handlers.embeddings),
            web.get("/v1/models", control.models),
            web.get("/health", control.health),
            web.get("/version", control.version),
            web.get("/metrics", control.metrics),
            web.get("/sim/config", control.get_sim_config),
            web.post("/sim/config", control.post_sim_config),
            web.get("/sim/stats", control.sim_stats),
        ]
    )
    return app
