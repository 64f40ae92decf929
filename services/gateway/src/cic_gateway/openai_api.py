"""The tenant API: OpenAI's inference routes as vLLM serves them, forwarded to a node."""

from __future__ import annotations

import time
from typing import Any

import grpc
import orjson
from aiohttp import web

from cic_gateway.errors import bad_request, from_grpc_error
from cic_gateway.jsonio import json_response, read_json_object
from cic_gateway.keys import ADMIN, DEVELOPER, require_model_allowed, require_role
from cic_gateway.proxy import ProxyRequest
from cic_gateway.request_checks import check_fields
from cic_gateway.request_keys import REQUEST_ID
from cic_gateway.resources import BUDGETS, CATALOG, KEYS, LIMITER, PROXY, SERVICES
from cic_gateway.scheduler_client import prefix_key
from cic_gateway.sse import UsageWish, upstream_stream_options

_MAX_MODEL_CHARS = 256


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _forward(request, "/v1/chat/completions", streams=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _forward(request, "/v1/completions", streams=True)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _forward(request, "/v1/embeddings", streams=False)


def _model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise bad_request("you must provide a model parameter", param="model")
    if not isinstance(model, str) or not model.strip() or len(model) > _MAX_MODEL_CHARS:
        raise bad_request("model must be a non-empty string", param="model")
    return model


def _stream_body(body: dict[str, Any]) -> tuple[bytes, UsageWish]:
    """The body the node gets for a stream (usage always on) and the usage the client wants;
    ``check_fields`` has already made sure ``stream_options`` is an object when present."""
    options = body.get("stream_options")
    wish = UsageWish.from_request(options)
    return orjson.dumps({**body, "stream_options": upstream_stream_options(options)}), wish


async def _forward(request: web.Request, path: str, *, streams: bool) -> web.StreamResponse:
    auth = await request.app[KEYS].authenticate(request)
    require_role(auth, ADMIN, DEVELOPER)
    request.app[BUDGETS].check(auth)  # a spent budget or prepaid credit: 429 insufficient_quota
    raw, body = await read_json_object(request)
    model = _model_of(body)
    check_fields(path, body)
    request.app[CATALOG].require(model, path)  # 404 not in the catalog, 400 wrong type
    require_model_allowed(auth, model)  # 403 only for a model that exists
    stream = streams and body.get("stream") is True
    upstream_body, wish = _stream_body(body) if stream else (raw, UsageWish(False, False))
    limiter, proxy = request.app[LIMITER], request.app[PROXY]
    routing_key = prefix_key(body) if streams else ""
    # The node is asked for while the rate limits are checked (two round trips at once, not one
    # after the other); a refused request gives its lease straight back. After a refusal the
    # tenant's requests check first, until the wait it was told has passed.
    region = auth.environment.region
    likely = limiter.likely_admits(auth)
    early_pick = proxy.pick_early(model, routing_key, region) if likely else None
    try:
        reservation = await limiter.admit(request, auth, body, generates=streams)
    except BaseException:
        if early_pick is not None:
            proxy.abandon(early_pick)
        raise
    call = ProxyRequest(
        request_id=request[REQUEST_ID],
        auth=auth,
        model=model,
        path=path,
        body=upstream_body,
        stream=stream,
        wish=wish,
        on_usage=reservation.add_usage,
        prefix_key=routing_key,
    )
    try:
        return await proxy.handle(request, call, early_pick)
    finally:
        limiter.settle_soon(reservation)  # with the tokens the node reported (none if no node)


async def list_models(request: web.Request) -> web.Response:
    await request.app[KEYS].authenticate(request)
    try:
        models = await request.app[SERVICES].scheduler.ready_models()
    except grpc.aio.AioRpcError as err:
        raise from_grpc_error(err, "scheduler") from None
    created = int(time.time())
    return json_response(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": created, "owned_by": "cic"} for m in models
            ],
        }
    )


async def get_model(request: web.Request) -> web.Response:
    """OpenAI's model object for a catalog model (with its type and context length)."""
    await request.app[KEYS].authenticate(request)
    entry = request.app[CATALOG].require(request.match_info["model"])
    return json_response(
        {
            "id": entry.name,
            "object": "model",
            "created": entry.created,
            "owned_by": "cic",
            "type": entry.type,
            "context_length": entry.context_length,
        }
    )
