"""``/healthz`` (the process answers), ``/readyz`` (Postgres, Redis and the scheduler answer, and
the gateway is not shutting down), and a background probe of every dependency (billing too) that
keeps ``cic_gateway_dependency_up`` current."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cic_common.periodic import cancel_and_wait
from cic_gateway.jsonio import json_response
from cic_gateway.resources import DB, LIFECYCLE, METRICS, REDIS, SERVICES, SETTINGS

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 1.0

Check = Callable[[web.Application], Awaitable[None]]


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _postgres(app: web.Application) -> None:
    await app[DB].fetchval("SELECT 1", timeout=CHECK_TIMEOUT_S)


async def _redis(app: web.Application) -> None:
    await app[REDIS].ping()


async def _serving(channel: grpc.aio.Channel | None, service: str) -> None:
    if channel is None:
        raise RuntimeError(f"no channel to {service}")
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=CHECK_TIMEOUT_S
    )
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise RuntimeError(f"{service} is not serving")


async def _scheduler(app: web.Application) -> None:
    await _serving(app[SERVICES].scheduler_channel, "scheduler")


async def _billing(app: web.Application) -> None:
    await _serving(app[SERVICES].billing_channel, "billing")


# What /readyz requires; the probe watches billing as well (usage waits in a buffer without it).
_READINESS: dict[str, Check] = {"postgres": _postgres, "redis": _redis, "scheduler": _scheduler}
_DEPENDENCIES: dict[str, Check] = {**_READINESS, "billing": _billing}


async def _answers(name: str, check: Check, app: web.Application) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await check(app)
    except Exception as err:
        log.debug("dependency check %s failed: %s", name, type(err).__name__)
        return False
    return True


async def _check_all(app: web.Application, checks: dict[str, Check]) -> dict[str, bool]:
    results = await asyncio.gather(*(_answers(name, check, app) for name, check in checks.items()))
    return dict(zip(checks, results, strict=True))


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    answers = await _check_all(app, _READINESS)
    checks = {name: "ok" if up else "unavailable" for name, up in answers.items()}
    failed = [name for name, up in answers.items() if not up]
    if failed:
        log.warning("readiness checks failed: %s", ", ".join(failed))
    if app[LIFECYCLE].draining:
        return json_response({"status": "draining", "checks": checks}, status=503)
    body = {"status": "unavailable" if failed else "ready", "checks": checks, "failed": failed}
    return json_response(body, status=503 if failed else 200)


async def probe_dependencies(
    app: web.Application, last: dict[str, bool] | None = None
) -> dict[str, bool]:
    """Checks every dependency once and sets ``cic_gateway_dependency_up``; logs what changed
    since ``last`` (a dependency that goes down is logged once, not at every probe)."""
    answers = await _check_all(app, _DEPENDENCIES)
    gauge = app[METRICS].dependency_up
    for name, up in answers.items():
        gauge.labels(name).set(1 if up else 0)
        if up != (last or {}).get(name, True):
            level = logging.INFO if up else logging.WARNING
            log.log(level, "dependency %s is %s", name, "up" if up else "down")
    return answers


async def _probe_forever(app: web.Application, interval_s: float) -> None:
    last: dict[str, bool] = {}
    while True:
        last = await probe_dependencies(app, last)
        await asyncio.sleep(interval_s)


async def dependency_probes_ctx(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: probes every ``DEPENDENCY_PROBE_INTERVAL_S`` while the app runs."""
    interval_s = app[SETTINGS].dependency_probe_interval_s
    task = asyncio.create_task(_probe_forever(app, interval_s), name="dependency-probes")
    yield
    await cancel_and_wait(task)
