"""The admin API's guard: the operator token, compared in constant time, and one audit-log row
for every call, allowed or refused. The row names the caller by a fingerprint of the token it
presented, never by the token."""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from cic_gateway import store
from cic_gateway.errors import DEPENDENCY_ERRORS, error_response
from cic_gateway.keys import bearer_token
from cic_gateway.request_keys import AUDIT_DETAIL
from cic_gateway.resources import DB, SETTINGS
from cic_gateway.store import KeyAuth

log = logging.getLogger(__name__)

ADMIN_PREFIX = "/admin"
_MAX_PATH_CHARS = 500


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def is_admin_request(request: web.Request) -> bool:
    """Admin routes by their pattern; unmatched paths under /admin too, so that they are audited."""
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


def _presented_token(request: web.Request) -> str | None:
    return request.headers.get("X-Admin-Token") or bearer_token(request)


def audit_detail(request: web.Request) -> dict[str, Any]:
    """The mutable detail of this call's audit row."""
    detail: dict[str, Any] | None = request.get(AUDIT_DETAIL)
    if detail is None:
        detail = request[AUDIT_DETAIL] = {}
    return detail


@web.middleware
async def admin_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    # A CORS preflight carries no credentials and reaches no admin handler (see cors.py).
    if request.method == hdrs.METH_OPTIONS or not is_admin_request(request):
        return await handler(request)
    expected = request.app[SETTINGS].admin_api_token.get_secret_value()
    presented = _presented_token(request)
    status = 500
    if presented is None:
        actor = "anonymous"
        audit_detail(request)["refused"] = "no admin token"
    elif not hmac.compare_digest(_digest(presented), _digest(expected)):
        actor = f"invalid:{fingerprint(presented)}"
        audit_detail(request)["refused"] = "wrong admin token"
    else:
        actor = f"admin:{fingerprint(presented)}"
    try:
        if actor.startswith("admin:"):
            response = await handler(request)
        else:
            response = error_response(
                401, "A valid admin token is required.", code="invalid_admin_token"
            )
        status = response.status
        return response
    finally:
        await audit_call(request, actor, status, request.get(AUDIT_DETAIL) or {})


async def audit_tenant_call(
    request: web.Request, auth: KeyAuth, status: int, **detail: Any
) -> None:
    """The audit row of a tenant API call that changed something, made with ``auth``'s key."""
    await audit_call(request, f"key:{auth.key_id}", status, {"tenant_id": auth.tenant_id, **detail})


async def audit_call(request: web.Request, actor: str, status: int, detail: dict[str, Any]) -> None:
    """Writes the call's audit row; a row that cannot be written is logged, never raised."""
    try:
        await store.write_audit(
            request.app[DB],
            actor=actor,
            method=request.method,
            path=request.rel_url.raw_path[:_MAX_PATH_CHARS],  # as sent: never a NUL
            status=status,
            source=request.remote,
            detail=detail,
        )
    except DEPENDENCY_ERRORS as err:  # Postgres is down: the call was answered 503 already
        log.warning(
            "could not write the audit row for %s %s: %s",
            request.method,
            request.path,
            type(err).__name__,
        )
    except Exception:
        log.exception("could not write the audit row for %s %s", request.method, request.path)
