"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, for every
route; gRPC failures of the services behind the gateway mapped to HTTP statuses."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import asyncpg
import grpc
import orjson
import redis.exceptions
from aiohttp import web

log = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"
# nginx's status for a request whose client went away first (metrics and usage events only).
CLIENT_CLOSED_REQUEST = 499


class ApiError(Exception):
    """An error answered to the client as is; the message must be safe to show."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def to_response(self) -> web.Response:
        return error_response(
            self.status,
            self.message,
            type=self.type,
            code=self.code,
            param=self.param,
            headers=self.headers,
        )


def error_body(
    message: str, *, type: str, code: str | None = None, param: str | None = None
) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def error_response(
    status: int,
    message: str,
    *,
    type: str = INVALID_REQUEST,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(message, type=type, code=code, param=param),
        content_type="application/json",
        headers=headers,
    )


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def not_found(message: str, code: str = "not_found") -> ApiError:
    return ApiError(404, message, code=code)


def invalid_api_key(message: str = "Incorrect API key provided.") -> ApiError:
    return ApiError(401, message, code="invalid_api_key")


def from_http_exception(exc: web.HTTPException, request: web.Request) -> web.Response:
    """aiohttp's own HTTP errors (unknown route, wrong method, body too large) in OpenAI's shape."""
    status = exc.status
    if status == 404:
        message, code = f"Unknown request URL: {request.method} {request.path}.", "unknown_url"
    elif status == 405:
        message, code = (
            f"Method {request.method} is not allowed on {request.path}.",
            "method_not_allowed",
        )
    elif status == 413:
        message, code = "The request body is too large.", "request_too_large"
    else:
        message, code = exc.reason, None
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    kind = SERVER_ERROR if status >= 500 else INVALID_REQUEST
    return error_response(status, message, type=kind, code=code, headers=headers)


_GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, INVALID_REQUEST, "invalid_argument"),
    grpc.StatusCode.OUT_OF_RANGE: (400, INVALID_REQUEST, "invalid_argument"),
    grpc.StatusCode.NOT_FOUND: (404, INVALID_REQUEST, "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, INVALID_REQUEST, "conflict"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, INVALID_REQUEST, "conflict"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, INVALID_REQUEST, "resource_exhausted"),
}
# The message of these codes comes from our own services and is meant for the caller.
_SHOW_DETAILS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}


def from_grpc_error(err: grpc.aio.AioRpcError, service: str) -> ApiError:
    """A failed call to ``service`` as the error the admin caller sees."""
    code = err.code()
    mapped = _GRPC_TO_HTTP.get(code)
    if mapped is None:
        if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            log.warning("%s call failed: %s %s", service, code.name, err.details())
        return ApiError(
            503,
            f"The {service} service is unavailable; try again shortly.",
            type=SERVER_ERROR,
            code="service_unavailable",
        )
    status, kind, short = mapped
    message = (
        err.details()
        if code in _SHOW_DETAILS and err.details()
        else f"The {service} refused the call."
    )
    return ApiError(status, message, type=kind, code=short)


# Postgres or Redis out of reach (a closed pool, a refused, dropped or timed-out connection):
# the caller gets 503 and may retry, never a 500 with a traceback.
DEPENDENCY_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)


def service_unavailable() -> ApiError:
    return ApiError(
        503,
        "The service is temporarily unavailable; try again shortly.",
        type=SERVER_ERROR,
        code="service_unavailable",
    )
