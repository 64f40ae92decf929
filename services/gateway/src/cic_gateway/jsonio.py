"""JSON in and out of handlers, with orjson, and request bodies checked against pydantic models."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from cic_gateway.errors import ApiError, bad_request
from cic_gateway.resources import SETTINGS

M = TypeVar("M", bound=BaseModel)
BODY_READ_TIMEOUT_S = 60.0


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


async def read_json_object(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its JSON object: 413 over ``MAX_BODY_BYTES``, 400 unless an object."""
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(
            413, f"The request body is larger than {limit} bytes.", code="request_too_large"
        )
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT_S):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, "Timed out reading the request body.", code="request_timeout") from None
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request(
            "We could not parse the JSON body of your request. The body must be a JSON object."
        ) from None
    if not isinstance(parsed, dict):
        raise bad_request("The request body must be a JSON object.")
    return raw, parsed


def _nul_at(value: Any, where: str = "") -> str | None:
    """Where ``value`` holds a NUL character (in a key or a string), if anywhere."""
    if isinstance(value, str):
        return where if "\x00" in value else None
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = list(enumerate(value))
    else:
        return None
    for key, item in pairs:
        inner = f"{where}.{key}" if where else str(key)
        found = inner if "\x00" in str(key) else _nul_at(item, inner)
        if found is not None:
            return found
    return None


def validated(model: type[M], data: dict[str, Any]) -> M:
    """``data`` as ``model``, or a 400 naming the first bad field. No string may hold a NUL
    character: Postgres text cannot store one."""
    nul = _nul_at(data)
    if nul is not None:
        raise bad_request(f"{nul}: must not contain NUL characters", param=nul)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = f"{where}: {first['msg']}" if where else first["msg"]
        raise bad_request(message, param=where or None) from None


def query_limit(request: web.Request, default: int, most: int, name: str = "limit") -> int:
    """The whole number from 1 to ``most`` in the query's ``name`` (``default`` when absent), or a
    400: only ASCII digits count (``str.isdigit`` also takes '²', which ``int`` refuses)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18) or not 1 <= int(raw) <= most:
        raise bad_request(f"{name}: a whole number from 1 to {most}", param=name)
    return int(raw)
