"""Admin API: a tenant's environments (``/admin/tenants/{id}/environments``,
``/admin/environments/{id}``). A change reaches every replica's key cache at once (the key-events
channel of :mod:`cic_gateway.revocation`), so a suspended environment's keys stop within
moments and an activated one's work again."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field, StrictInt, StringConstraints, field_validator

from cic_gateway import environments, store
from cic_gateway.admin import Body, Limit, listing, tenant_or_404
from cic_gateway.admin_auth import audit_detail
from cic_gateway.errors import ApiError, not_found
from cic_gateway.jsonio import json_response, read_json_object, validated
from cic_gateway.resources import DB, KEYS, REVOCATIONS

_SLUG = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
EnvironmentName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=_SLUG)
]
Region = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_SLUG)]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Models = Annotated[list[ModelName], Field(max_length=1000)]
DayLimit = Annotated[StrictInt, Field(gt=0, le=1_000_000_000_000)]
ConcurrencyLimit = Annotated[StrictInt, Field(gt=0, le=1_000_000)]


def _unique(models: list[str] | None) -> list[str] | None:
    return None if models is None else list(dict.fromkeys(models))


class NewEnvironment(Body):
    name: EnvironmentName
    region: Region | None = None
    # The models its keys may call (None: every model).
    models: Models | None = None
    tpm_limit: Limit | None = None
    tokens_per_day: DayLimit | None = None
    concurrency_limit: ConcurrencyLimit | None = None

    unique_models = field_validator("models")(_unique)


class EnvironmentChanges(Body):
    name: EnvironmentName | None = None
    status: Literal["active", "suspended"] | None = None
    region: Region | None = None
    models: Models | None = None
    tpm_limit: Limit | None = None
    tokens_per_day: DayLimit | None = None
    concurrency_limit: ConcurrencyLimit | None = None

    unique_models = field_validator("models")(_unique)

    @field_validator("name", "status", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("must not be null")
        return value


def environment_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "tenant_id": row["tenant_id"],
        "name": row["name"],
        "status": row["status"],
        "region": row["region"],
        "models": row["models"],
        "tpm_limit": row["tpm_limit"],
        "tokens_per_day": row["tokens_per_day"],
        "concurrency_limit": row["concurrency_limit"],
        "created_at": store.iso(row["created_at"]),
    }


def _duplicate(name: object) -> ApiError:
    return ApiError(
        409,
        f"This tenant already has an environment named '{name}'.",
        code="conflict",
        param="name",
    )


async def create_environment(request: web.Request) -> web.Response:
    tenant = await tenant_or_404(request)
    _, data = await read_json_object(request)
    body = validated(NewEnvironment, data)
    values = body.model_dump(exclude_none=True)
    try:
        row = await environments.create_environment(request.app[DB], tenant["id"], values)
    except environments.DuplicateName:
        raise _duplicate(body.name) from None
    audit_detail(request)["environment_id"] = row["id"]
    return json_response(environment_json(row), status=201)


async def list_environments(request: web.Request) -> web.Response:
    tenant = await tenant_or_404(request)
    rows = await environments.list_environments(request.app[DB], tenant["id"])
    return json_response(listing([environment_json(r) for r in rows]))


async def update_environment(request: web.Request) -> web.Response:
    environment_id = request.match_info["environment_id"]
    detail = audit_detail(request)
    detail["environment_id"] = environment_id
    _, data = await read_json_object(request)
    changes = validated(EnvironmentChanges, data)
    values = {name: getattr(changes, name) for name in changes.model_fields_set}
    detail["changes"] = values
    try:
        row = await environments.update_environment(request.app[DB], environment_id, values)
    except environments.DuplicateName:
        raise _duplicate(values.get("name")) from None
    if row is None:
        raise not_found(f"No environment with id '{environment_id}'.")
    detail["tenant_id"] = row["tenant_id"]
    request.app[KEYS].forget_environment(environment_id)
    await request.app[REVOCATIONS].environment_changed(environment_id)  # every other replica too
    return json_response(environment_json(row))
