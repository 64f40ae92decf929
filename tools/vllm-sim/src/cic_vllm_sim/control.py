"""Node routes besides inference (/health, /version, /v1/models, /metrics) and the
simulator's own control routes (/sim/config, /sim/stats)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cic_vllm_sim import responses
from cic_vllm_sim.engine import ENGINE
from cic_vllm_sim.protocol import ApiError, bad_request

REGISTRY = web.AppKey("registry", CollectorRegistry)
RATE_KNOBS = ("fail_rate", "drop_rate")
DELAY_KNOBS = ("ttft_ms", "itl_ms")


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    """vLLM answers 200 with an empty body while its engine is alive."""
    return web.Response(status=200)


async def version(request: web.Request) -> web.Response:
    return json_response({"version": request.app[ENGINE].config.vllm_version})


async def models(request: web.Request) -> web.Response:
    body = responses.models_response(request.app[ENGINE].config, int(time.time()))
    return web.Response(body=body, content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def sim_stats(request: web.Request) -> web.Response:
    return json_response(request.app[ENGINE].stats_dict())


async def get_sim_config(request: web.Request) -> web.Response:
    return json_response(request.app[ENGINE].knobs.as_dict())


async def post_sim_config(request: web.Request) -> web.Response:
    """Change any of ttft_ms, itl_ms, fail_rate, drop_rate, hang on the running node."""
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise bad_request("body must be a JSON object") from None
    engine = request.app[ENGINE]
    engine.update_knobs(parse_knobs(data))
    return json_response(engine.knobs.as_dict())


def parse_knobs(data: Any) -> dict[str, Any]:
    """The knob changes in ``data``, checked; raises ApiError naming the first bad one."""
    if not isinstance(data, dict):
        raise bad_request("body must be a JSON object")
    changes: dict[str, Any] = {}
    for name, value in data.items():
        if name == "hang":
            if not isinstance(value, bool):
                raise bad_request("hang must be true or false", name)
        elif name in RATE_KNOBS + DELAY_KNOBS:
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise bad_request(f"{name} must be a number at least 0", name)
            if name in RATE_KNOBS and value > 1:
                raise bad_request(f"{name} must be between 0 and 1", name)
            value = float(value)
        else:
            raise _unknown_knob(name)
        changes[name] = value
    return changes


def _unknown_knob(name: str) -> ApiError:
    known = ", ".join(("hang", *RATE_KNOBS, *DELAY_KNOBS))
    return bad_request(f"unknown setting {name!r}; known: {known}", name)
