"""Admin API: tenants and their API keys (the guard and the audit log are in ``admin_auth``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import grpc
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, field_validator

from cic_gateway import environments, store, tenant_events
from cic_gateway.admin_auth import audit_detail
from cic_gateway.errors import ApiError, bad_request, from_grpc_error, not_found
from cic_gateway.jsonio import json_response, read_json_object, validated
from cic_gateway.keys import DEVELOPER, generate_key
from cic_gateway.resources import DB, KEYS, REVOCATIONS, SERVICES

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Limit = Annotated[StrictInt, Field(gt=0, le=1_000_000_000)]
ConcurrencyLimit = Annotated[StrictInt, Field(gt=0, le=1_000_000)]
Role = Literal["admin", "developer", "read-only"]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def future_time(value: datetime | None) -> datetime | None:
    """A time in the future, in UTC (one without an offset is taken as UTC), that Postgres and
    protobuf can hold: past the year 9999 once in UTC is refused, never a 500."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is too far in the future") from None
    if value <= datetime.now(UTC):
        raise ValueError("must be in the future")
    return value


class NewTenant(Body):
    name: Name
    email: Annotated[str, StringConstraints(strip_whitespace=True, max_length=254)]

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not _EMAIL.match(value):
            raise ValueError("not an email address")
        return value


class TenantChanges(Body):
    status: Literal["active", "suspended"] | None = None
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _status_not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("must be 'active' or 'suspended'")
        return value


class NewKey(Body):
    name: Name
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    environment_id: Annotated[str, StringConstraints(max_length=100)] | None = None
    role: Role = DEVELOPER
    expires_at: datetime | None = None
    concurrency_limit: ConcurrencyLimit | None = None

    _expires_at = field_validator("expires_at")(future_time)


def tenant_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "email": row["email"],
        "status": row["status"],
        "rpm_limit": row["rpm_limit"],
        "tpm_limit": row["tpm_limit"],
        "created_at": store.iso(row["created_at"]),
    }


def key_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "tenant_id": row["tenant_id"],
        "name": row["name"],
        "prefix": row["prefix"],
        "environment_id": row["environment_id"],
        "role": row["role"],
        "rpm_limit": row["rpm_limit"],
        "tpm_limit": row["tpm_limit"],
        "concurrency_limit": row["concurrency_limit"],
        "expires_at": store.iso(row["expires_at"]),
        "created_at": store.iso(row["created_at"]),
        "revoked_at": store.iso(row["revoked_at"]),
        "last_used_at": store.iso(row["last_used_at"]),
    }


def listing(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": items}


async def call_billing(request: web.Request, rpc: str, message: Any) -> Any:
    """Billing's reply to its ``rpc`` with ``message``, or the error its failure is answered with
    (503 while billing is away)."""
    try:
        return await getattr(request.app[SERVICES].billing, rpc)(message)
    except grpc.aio.AioRpcError as err:
        raise from_grpc_error(err, "billing") from None


async def tenant_or_404(request: web.Request) -> dict[str, Any]:
    tenant_id = request.match_info["tenant_id"]
    audit_detail(request)["tenant_id"] = tenant_id
    tenant = await store.get_tenant(request.app[DB], tenant_id)
    if tenant is None:
        raise not_found(f"No tenant with id '{tenant_id}'.")
    return tenant


async def create_tenant(request: web.Request) -> web.Response:
    _, data = await read_json_object(request)
    body = validated(NewTenant, data)
    try:
        tenant = await store.create_tenant(request.app[DB], body.name, body.email)
    except store.DuplicateEmail:
        raise ApiError(
            409, "A tenant with this email already exists.", code="conflict", param="email"
        ) from None
    audit_detail(request)["tenant_id"] = tenant["id"]
    return json_response(tenant_json(tenant), status=201)


async def list_tenants(request: web.Request) -> web.Response:
    tenants = await store.list_tenants(request.app[DB])
    return json_response(listing([tenant_json(t) for t in tenants]))


async def get_tenant(request: web.Request) -> web.Response:
    return json_response(tenant_json(await tenant_or_404(request)))


async def update_tenant(request: web.Request) -> web.Response:
    tenant = await tenant_or_404(request)
    _, data = await read_json_object(request)
    changes = validated(TenantChanges, data)
    values = {name: getattr(changes, name) for name in changes.model_fields_set}
    audit_detail(request)["changes"] = values
    updated = await store.update_tenant(request.app[DB], tenant["id"], values)
    if updated is None:
        raise not_found(f"No tenant with id '{tenant['id']}'.")
    request.app[KEYS].forget_tenant(tenant["id"])
    await request.app[REVOCATIONS].tenant_changed(tenant["id"])  # every other replica too
    await tenant_events.status_changed(request.app, tenant["status"], updated, "operator")
    return json_response(tenant_json(updated))


async def create_key(request: web.Request) -> web.Response:
    tenant = await tenant_or_404(request)
    _, data = await read_json_object(request)
    created = await make_key(request, tenant["id"], validated(NewKey, data))
    audit_detail(request)["key_id"] = created["id"]
    return json_response(created, status=201)


async def make_key(request: web.Request, tenant_id: str, body: NewKey) -> dict[str, Any]:
    """A new key of ``tenant_id`` (in one of its own environments) as the answer shows it: the
    only time its secret is shown."""
    pool = request.app[DB]
    if body.environment_id is not None:
        found = await environments.get_environment(pool, body.environment_id, tenant_id)
        if found is None:
            raise bad_request(
                f"No environment with id '{body.environment_id}' in this tenant.",
                param="environment_id",
            )
    new = generate_key()
    row = await store.create_key(
        pool,
        tenant_id,
        body.name,
        new.prefix,
        new.key_hash,
        body.rpm_limit,
        body.tpm_limit,
        environment_id=body.environment_id,
        role=body.role,
        expires_at=body.expires_at,
        concurrency_limit=body.concurrency_limit,
    )
    return {**key_json(row), "key": new.key}


async def list_keys(request: web.Request) -> web.Response:
    tenant = await tenant_or_404(request)
    keys = await store.list_keys(request.app[DB], tenant["id"])
    return json_response(listing([key_json(k) for k in keys]))


async def revoke_key(request: web.Request) -> web.Response:
    key_id = request.match_info["key_id"]
    audit_detail(request)["key_id"] = key_id
    row = await store.revoke_key(request.app[DB], key_id)
    if row is None:
        raise not_found(f"No API key with id '{key_id}'.")
    request.app[KEYS].forget_key(key_id)
    await request.app[REVOCATIONS].key_revoked(key_id)  # every other replica too
    return web.Response(status=204)
