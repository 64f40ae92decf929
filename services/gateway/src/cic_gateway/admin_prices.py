"""Admin API: model prices, kept by billing (micro-dollars per million tokens, integers).

A change prices the requests recorded from then on; what is in the ledger keeps its cost. The
model ``*`` prices every model without a price of its own.
"""

from __future__ import annotations

from typing import Annotated, Any

import grpc
from aiohttp import web
from pydantic import Field, StrictInt

from cic.billing.v1 import billing_pb2
from cic_gateway.admin import Body, listing
from cic_gateway.admin_auth import audit_detail
from cic_gateway.errors import bad_request, from_grpc_error
from cic_gateway.jsonio import json_response, read_json_object, validated
from cic_gateway.resources import CATALOG, SERVICES

MicroUsd = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
MAX_MODEL_CHARS = 200


class NewPrice(Body):
    prompt_micro_usd_per_mtok: MicroUsd
    completion_micro_usd_per_mtok: MicroUsd


def price_json(price: billing_pb2.ModelPrice) -> dict[str, Any]:
    return {
        "model": price.model,
        "prompt_micro_usd_per_mtok": price.prompt_micro_usd_per_mtok,
        "completion_micro_usd_per_mtok": price.completion_micro_usd_per_mtok,
        "updated_at": price.updated_at.ToDatetime().isoformat() + "Z",
    }


def _model(request: web.Request) -> str:
    model = request.match_info["model"]
    audit_detail(request)["model"] = model
    if not model.strip() or len(model) > MAX_MODEL_CHARS or "\x00" in model:
        raise bad_request(f"model: 1 to {MAX_MODEL_CHARS} characters", param="model")
    return model


async def list_prices(request: web.Request) -> web.Response:
    try:
        reply = await request.app[SERVICES].billing.ListPrices(billing_pb2.ListPricesRequest())
    except grpc.aio.AioRpcError as err:
        raise from_grpc_error(err, "billing") from None
    return json_response(listing([price_json(p) for p in reply.prices]))


async def set_price(request: web.Request) -> web.Response:
    model = _model(request)
    _, data = await read_json_object(request)
    body = validated(NewPrice, data)
    audit_detail(request).update(body.model_dump())
    call = billing_pb2.SetPriceRequest(model=model, **body.model_dump())
    try:
        reply = await request.app[SERVICES].billing.SetPrice(call)
    except grpc.aio.AioRpcError as err:
        raise from_grpc_error(err, "billing") from None
    await request.app[CATALOG].changed()  # a new model's price adds it to the catalog
    return json_response(price_json(reply))


async def delete_price(request: web.Request) -> web.Response:
    model = _model(request)
    try:
        await request.app[SERVICES].billing.DeletePrice(billing_pb2.DeletePriceRequest(model=model))
    except grpc.aio.AioRpcError as err:
        raise from_grpc_error(err, "billing") from None
    await request.app[CATALOG].changed()
    return web.Response(status=204)
