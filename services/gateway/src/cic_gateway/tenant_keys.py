"""The tenant's own API keys, managed with an ``admin``-role key: ``GET/POST /v1/api-keys``,
``DELETE /v1/api-keys/{id}``. Same body and answer as the admin API's key creation, limited to
the caller's tenant and its environments; another tenant's key id is 404. Creations and
revocations are written to the audit log with the calling key as actor."""

from __future__ import annotations

from aiohttp import web

from cic_gateway import store
from cic_gateway.admin import NewKey, key_json, listing, make_key
from cic_gateway.admin_auth import audit_tenant_call
from cic_gateway.errors import not_found
from cic_gateway.jsonio import json_response, read_json_object, validated
from cic_gateway.keys import ADMIN, require_role
from cic_gateway.resources import DB, KEYS, REVOCATIONS
from cic_gateway.store import KeyAuth


async def _caller(request: web.Request) -> KeyAuth:
    auth = await request.app[KEYS].authenticate(request)
    require_role(auth, ADMIN)
    return auth


async def list_keys(request: web.Request) -> web.Response:
    auth = await _caller(request)
    keys = await store.list_keys(request.app[DB], auth.tenant_id)
    return json_response(listing([key_json(k) for k in keys]))


async def create_key(request: web.Request) -> web.Response:
    auth = await _caller(request)
    _, data = await read_json_object(request)
    created = await make_key(request, auth.tenant_id, validated(NewKey, data))
    await audit_tenant_call(request, auth, 201, key_id=created["id"])
    return json_response(created, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    auth = await _caller(request)
    key_id = request.match_info["key_id"]
    row = await store.revoke_key(request.app[DB], key_id, tenant_id=auth.tenant_id)
    if row is None:
        raise not_found(f"No API key with id '{key_id}'.")
    request.app[KEYS].forget_key(key_id)
    await request.app[REVOCATIONS].key_revoked(key_id)  # every other replica too
    await audit_tenant_call(request, auth, 204, key_id=key_id)
    return web.Response(status=204)
