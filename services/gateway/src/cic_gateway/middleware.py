"""What every request goes through: its ids, its metrics, and errors in OpenAI's shape.

Order (outermost first): :func:`request_context` (ids, metrics, last-resort errors), the admin
guard (:mod:`cic_gateway.admin_auth`), :func:`openai_errors` (turns every error a handler raises
into OpenAI's error shape, so the guard and the metrics see the final status).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from cic_gateway.errors import (
    CLIENT_CLOSED_REQUEST,
    DEPENDENCY_ERRORS,
    SERVER_ERROR,
    ApiError,
    error_response,
    from_http_exception,
    service_unavailable,
)
from cic_gateway.request_keys import CLIENT_REQUEST_ID, MODEL_LABEL, REQUEST_ID
from cic_gateway.resources import METRICS

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("cic.gateway")

_MAX_CLIENT_REQUEST_ID = 200


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def route_label(request: web.Request) -> str:
    """The matched route's pattern, or ``unmatched``: never the raw path (unbounded)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _client_request_id(request: web.Request) -> str | None:
    value = request.headers.get("X-Request-Id")
    if (
        not value
        or len(value) > _MAX_CLIENT_REQUEST_ID
        or not value.isprintable()
        or not value.isascii()
    ):
        return None
    return value


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[REQUEST_ID] = new_request_id()
    client_request_id = _client_request_id(request)
    if client_request_id is not None:
        request[CLIENT_REQUEST_ID] = client_request_id
    metrics = request.app[METRICS]
    route = route_label(request)
    started = time.perf_counter()
    status = 500
    metrics.in_flight.labels(route).inc()
    span = _tracer.start_span(
        f"{request.method} {route}",
        context=propagate.extract(request.headers),
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route},
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = CLIENT_CLOSED_REQUEST
        raise
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception:
        log.exception(
            "unhandled error in %s %s (request %s)", request.method, route, request[REQUEST_ID]
        )
        return _internal_error()
    finally:
        span.set_attribute("http.response.status_code", status)
        span.end()
        otel_context.detach(token)
        metrics.in_flight.labels(route).dec()
        metrics.requests.labels(route, str(status), request.get(MODEL_LABEL, "")).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as err:
        return err.to_response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return from_http_exception(exc, request)
    except DEPENDENCY_ERRORS as err:
        if request.transport is None or request.transport.is_closing():
            raise  # the client went away: nothing to answer
        log.warning(
            "%s %s: a dependency is unavailable (%s)",
            request.method,
            request.path,
            type(err).__name__,
        )
        return service_unavailable().to_response()
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception(
            "unhandled error in %s %s (request %s)",
            request.method,
            request.path,
            request[REQUEST_ID],
        )
        return _internal_error()


def _internal_error() -> web.Response:
    return error_response(
        500, "The server had an error while processing your request.", type=SERVER_ERROR
    )


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the client's own ``x-request-id`` if it sent one, else ours."""
    ours = request.get(REQUEST_ID)
    if ours is not None:
        response.headers["x-request-id"] = request.get(CLIENT_REQUEST_ID) or ours
