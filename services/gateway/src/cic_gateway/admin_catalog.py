"""Admin API: the model catalog and the regions, kept by billing.

Prices and multipliers arrive as JSON numbers or decimal strings ("0.15") and travel as integers:
prices in micro-dollars per million tokens, multipliers in parts per million. A value with more
decimals than that holds exactly (more than 6) is refused, never rounded. Every change is
announced to every gateway replica, whose catalog cache reloads at once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BeforeValidator, Field, StrictInt, StringConstraints, field_validator

from cic.billing.v1 import billing_pb2
from cic_gateway.admin import Body, call_billing, listing
from cic_gateway.admin_auth import audit_detail
from cic_gateway.catalog import TYPE_NAMES
from cic_gateway.errors import bad_request
from cic_gateway.jsonio import json_response, read_json_object, validated
from cic_gateway.money import BIGINT_MAX, MICRO, millionths, usd
from cic_gateway.resources import CATALOG

MAX_MULTIPLIER_PPM = 1_000_000_000  # 1,000x
_TYPE_ENUMS = {name: value for value, name in TYPE_NAMES.items()}


UsdPerMtok = Annotated[int, BeforeValidator(millionths), Field(ge=0, le=BIGINT_MAX)]
Multiplier = Annotated[int, BeforeValidator(millionths), Field(gt=0, le=MAX_MULTIPLIER_PPM)]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
ModelType = Literal["chat", "completion", "embedding"]
ContextLength = Annotated[StrictInt, Field(ge=1, le=10_000_000)]
RegionCode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
RegionName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


def _no_control(value: str | None) -> str | None:
    if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


class NewModel(Body):
    name: ModelName
    type: ModelType
    context_length: ContextLength
    price_prompt_per_mtok_usd: UsdPerMtok
    price_completion_per_mtok_usd: UsdPerMtok

    _name = field_validator("name")(_no_control)


class ModelChanges(Body):
    """A field left out or sent as null keeps its value; ``name`` may only repeat the path's."""

    name: ModelName | None = None
    type: ModelType | None = None
    context_length: ContextLength | None = None
    price_prompt_per_mtok_usd: UsdPerMtok | None = None
    price_completion_per_mtok_usd: UsdPerMtok | None = None


class NewRegion(Body):
    code: RegionCode
    name: RegionName
    cost_multiplier: Multiplier

    _name = field_validator("name")(_no_control)


class RegionChanges(Body):
    code: RegionCode | None = None
    name: RegionName | None = None
    cost_multiplier: Multiplier | None = None

    _name = field_validator("name")(_no_control)


def _iso(stamp: Timestamp) -> str:
    return stamp.ToDatetime().isoformat() + "Z"


def model_json(model: billing_pb2.CatalogModel) -> dict[str, Any]:
    return {
        "name": model.name,
        "type": TYPE_NAMES.get(model.type, "chat"),
        "context_length": model.context_length,
        "price_prompt_per_mtok_usd": usd(model.prompt_micro_usd_per_mtok),
        "price_completion_per_mtok_usd": usd(model.completion_micro_usd_per_mtok),
        "prompt_micro_usd_per_mtok": model.prompt_micro_usd_per_mtok,
        "completion_micro_usd_per_mtok": model.completion_micro_usd_per_mtok,
        "created_at": _iso(model.created_at),
        "updated_at": _iso(model.updated_at),
    }


def region_json(region: billing_pb2.Region) -> dict[str, Any]:
    return {
        "code": region.code,
        "name": region.name,
        "cost_multiplier": region.cost_multiplier_ppm / MICRO,
        "cost_multiplier_ppm": region.cost_multiplier_ppm,
        "created_at": _iso(region.created_at),
        "updated_at": _iso(region.updated_at),
    }


def _path_name(request: web.Request, field: str) -> str:
    value = request.match_info[field]
    audit_detail(request)[field] = value
    if not value.strip() or len(value) > 200 or any(ord(c) < 32 for c in value):
        raise bad_request(f"{field}: 1 to 200 characters without control characters", param=field)
    return value


async def list_models(request: web.Request) -> web.Response:
    reply = await call_billing(request, "ListModels", billing_pb2.ListModelsRequest())
    return json_response(listing([model_json(m) for m in reply.models]))


async def create_model(request: web.Request) -> web.Response:
    _, data = await read_json_object(request)
    body = validated(NewModel, data)
    audit_detail(request).update(body.model_dump())
    model = billing_pb2.CatalogModel(
        name=body.name,
        type=_TYPE_ENUMS[body.type],
        context_length=body.context_length,
        prompt_micro_usd_per_mtok=body.price_prompt_per_mtok_usd,
        completion_micro_usd_per_mtok=body.price_completion_per_mtok_usd,
    )
    reply = await call_billing(request, "CreateModel", billing_pb2.CreateModelRequest(model=model))
    await request.app[CATALOG].changed()
    return json_response(model_json(reply), status=201)


async def update_model(request: web.Request) -> web.Response:
    name = _path_name(request, "model")
    _, data = await read_json_object(request)
    body = validated(ModelChanges, data)
    if body.name is not None and body.name != name:
        raise bad_request("name: a model cannot be renamed; create the new name", param="name")
    audit_detail(request)["changes"] = body.model_dump(exclude_none=True)
    change = billing_pb2.UpdateModelRequest(name=name)
    if body.type is not None:
        change.type = _TYPE_ENUMS[body.type]
    if body.context_length is not None:
        change.context_length = body.context_length
    if body.price_prompt_per_mtok_usd is not None:
        change.prompt_micro_usd_per_mtok = body.price_prompt_per_mtok_usd
    if body.price_completion_per_mtok_usd is not None:
        change.completion_micro_usd_per_mtok = body.price_completion_per_mtok_usd
    reply = await call_billing(request, "UpdateModel", change)
    await request.app[CATALOG].changed()
    return json_response(model_json(reply))


async def delete_model(request: web.Request) -> web.Response:
    name = _path_name(request, "model")
    await call_billing(request, "DeleteModel", billing_pb2.DeleteModelRequest(name=name))
    await request.app[CATALOG].changed()
    return web.Response(status=204)


async def list_regions(request: web.Request) -> web.Response:
    reply = await call_billing(request, "ListRegions", billing_pb2.ListRegionsRequest())
    return json_response(listing([region_json(r) for r in reply.regions]))


async def create_region(request: web.Request) -> web.Response:
    _, data = await read_json_object(request)
    body = validated(NewRegion, data)
    audit_detail(request).update(body.model_dump())
    region = billing_pb2.Region(
        code=body.code, name=body.name, cost_multiplier_ppm=body.cost_multiplier
    )
    reply = await call_billing(
        request, "CreateRegion", billing_pb2.CreateRegionRequest(region=region)
    )
    return json_response(region_json(reply), status=201)


async def update_region(request: web.Request) -> web.Response:
    code = _path_name(request, "code")
    _, data = await read_json_object(request)
    body = validated(RegionChanges, data)
    if body.code is not None and body.code != code:
        raise bad_request("code: a region's code cannot change", param="code")
    audit_detail(request)["changes"] = body.model_dump(exclude_none=True)
    change = billing_pb2.UpdateRegionRequest(code=code)
    if body.name is not None:
        change.name = body.name
    if body.cost_multiplier is not None:
        change.cost_multiplier_ppm = body.cost_multiplier
    reply = await call_billing(request, "UpdateRegion", change)
    return json_response(region_json(reply))
