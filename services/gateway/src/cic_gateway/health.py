"""``/healthz`` (the process answers) and ``/readyz`` (Postgres, Redis and the scheduler answer,
and the gateway is not shutting down)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cic_gateway.jsonio import json_response
from cic_gateway.resources import DB, LIFECYCLE, REDIS, SERVICES

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 1.0


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _postgres(app: web.Application) -> None:
    await app[DB].fetchval("SELECT 1", timeout=CHECK_TIMEOUT_S)


async def _redis(app: web.Application) -> None:
    await app[REDIS].ping()


async def _scheduler(app: web.Application) -> None:
    stub = health_pb2_grpc.HealthStub(app[SERVICES].scheduler_channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=CHECK_TIMEOUT_S)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise RuntimeError("scheduler is not serving")


_CHECKS: dict[str, Callable[[web.Application], Awaitable[None]]] = {
    "postgres": _postgres,
    "redis": _redis,
    "scheduler": _scheduler,
}


async def _check(name: str, app: web.Application) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await _CHECKS[name](app)
    except Exception as err:
        log.warning("readiness check %s failed: %s", name, type(err).__name__)
        return "unavailable"
    return "ok"


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    results = await asyncio.gather(*(_check(name, app) for name in _CHECKS))
    checks = dict(zip(_CHECKS, results, strict=True))
    if app[LIFECYCLE].draining:
        return json_response({"status": "draining", "checks": checks}, status=503)
    ready = all(result == "ok" for result in checks.values())
    failed = [name for name, result in checks.items() if result != "ok"]
    body = {"status": "ready" if ready else "unavailable", "checks": checks, "failed": failed}
    return json_response(body, status=200 if ready else 503)
