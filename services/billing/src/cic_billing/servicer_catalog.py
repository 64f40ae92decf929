"""The model catalog and region RPCs of ``cic.billing.v1.BillingService``. A change reloads this
replica's price table at once (other replicas within ``PRICE_REFRESH_S``)."""

from __future__ import annotations

import logging
import re

import grpc

from cic.billing.v1 import billing_pb2
from cic_billing import catalog
from cic_billing.catalog import (
    MAX_CONTEXT_LENGTH,
    MAX_MULTIPLIER_PPM,
    ModelRow,
    NewModel,
    RegionRow,
)
from cic_billing.events import BIGINT_MAX
from cic_billing.ledger import DATABASE_UNAVAILABLE, TRANSIENT_DB_ERRORS, db_or_unavailable
from cic_billing.pricing import DEFAULT_PRICE_MODEL, PriceBook
from cic_billing.servicer_admin import MAX_MODEL_CHARS
from cic_common.grpc_replies import abort, stamp

log = logging.getLogger(__name__)

MAX_REGION_NAME_CHARS = 200
_REGION_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TYPE_NAMES: dict[int, str] = {
    billing_pb2.MODEL_TYPE_CHAT: "chat",
    billing_pb2.MODEL_TYPE_COMPLETION: "completion",
    billing_pb2.MODEL_TYPE_EMBEDDING: "embedding",
}
_TYPE_ENUMS = {name: value for value, name in _TYPE_NAMES.items()}
_PRICE_FIELDS = ("prompt_micro_usd_per_mtok", "completion_micro_usd_per_mtok")


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def model_message(row: ModelRow) -> billing_pb2.CatalogModel:
    return billing_pb2.CatalogModel(
        name=row.name,
        type=_TYPE_ENUMS.get(row.type, 0),  # type: ignore[arg-type]
        context_length=row.context_length,
        prompt_micro_usd_per_mtok=row.prompt_micro_usd_per_mtok,
        completion_micro_usd_per_mtok=row.completion_micro_usd_per_mtok,
        created_at=stamp(row.created_at),
        updated_at=stamp(row.updated_at),
    )


def region_message(row: RegionRow) -> billing_pb2.Region:
    return billing_pb2.Region(
        code=row.code,
        name=row.name,
        cost_multiplier_ppm=row.cost_multiplier_ppm,
        created_at=stamp(row.created_at),
        updated_at=stamp(row.updated_at),
    )


def name_problem(name: str) -> str | None:
    if not name.strip():
        return "name is empty"
    if len(name) > MAX_MODEL_CHARS:
        return f"name is longer than {MAX_MODEL_CHARS} characters"
    if _has_control(name):
        return "name contains a control character"
    if name == DEFAULT_PRICE_MODEL:
        return f"name {DEFAULT_PRICE_MODEL!r} is the default price, not a model"
    return None


def _model_fields_problem(
    model_type: int | None, context_length: int | None, prices: dict[str, int]
) -> str | None:
    """What is wrong with the fields given (None: not given)."""
    if model_type is not None and model_type not in _TYPE_NAMES:
        return "type must be chat, completion or embedding"
    if context_length is not None and not 1 <= context_length <= MAX_CONTEXT_LENGTH:
        return f"context_length must be between 1 and {MAX_CONTEXT_LENGTH}"
    for field, value in prices.items():
        if not 0 <= value <= BIGINT_MAX:
            return f"{field} is negative"
    return None


def _changes(request: billing_pb2.UpdateModelRequest) -> dict[str, int]:
    """The fields of an update that are set (the type as its enum value)."""
    fields = {
        "type": (request.HasField("type"), request.type),
        "context_length": (request.HasField("context_length"), request.context_length),
        "prompt_micro_usd_per_mtok": (
            request.HasField("prompt_micro_usd_per_mtok"),
            request.prompt_micro_usd_per_mtok,
        ),
        "completion_micro_usd_per_mtok": (
            request.HasField("completion_micro_usd_per_mtok"),
            request.completion_micro_usd_per_mtok,
        ),
    }
    return {name: value for name, (given, value) in fields.items() if given}


def code_problem(code: str) -> str | None:
    if not _REGION_CODE.fullmatch(code):
        return (
            "code must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return None


def _region_name_problem(name: str) -> str | None:
    if not name.strip() or len(name) > MAX_REGION_NAME_CHARS or _has_control(name):
        return f"name must be 1 to {MAX_REGION_NAME_CHARS} characters without control characters"
    return None


def _multiplier_problem(ppm: int) -> str | None:
    if not 1 <= ppm <= MAX_MULTIPLIER_PPM:
        return f"cost_multiplier_ppm must be between 1 and {MAX_MULTIPLIER_PPM}"
    return None


class CatalogRpcs:
    """Set by the servicer that mixes this in."""

    _prices: PriceBook

    async def ListModels(
        self, request: billing_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ListModelsResponse:
        async with db_or_unavailable(context):
            rows = await catalog.list_models(self._prices.pool)
        return billing_pb2.ListModelsResponse(models=[model_message(r) for r in rows])

    async def CreateModel(
        self, request: billing_pb2.CreateModelRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.CatalogModel:
        model = request.model
        prices = {field: getattr(model, field) for field in _PRICE_FIELDS}
        problem = name_problem(model.name) or _model_fields_problem(
            model.type, model.context_length, prices
        )
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            row = await catalog.create_model(
                self._prices.pool,
                NewModel(
                    model.name,
                    _TYPE_NAMES[model.type],
                    model.context_length,
                    model.prompt_micro_usd_per_mtok,
                    model.completion_micro_usd_per_mtok,
                ),
            )
            await self._prices.reload()
        except catalog.AlreadyExists:
            await abort(
                context, grpc.StatusCode.ALREADY_EXISTS, f"model {model.name!r} is in the catalog"
            )
        except TRANSIENT_DB_ERRORS:
            await abort(context, grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE)
        log.info("model %s added to the catalog", model.name)
        return model_message(row)

    async def UpdateModel(
        self, request: billing_pb2.UpdateModelRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.CatalogModel:
        given = _changes(request)
        problem = name_problem(request.name) or _model_fields_problem(
            given.get("type"),
            given.get("context_length"),
            {f: given[f] for f in _PRICE_FIELDS if f in given},
        )
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        changes: dict[str, object] = dict(given)
        if "type" in given:
            changes["type"] = _TYPE_NAMES[given["type"]]
        async with db_or_unavailable(context):
            row = await catalog.update_model(self._prices.pool, request.name, changes)
            await self._prices.reload()
        if row is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no model {request.name!r}")
        log.info("model %s changed: %s", request.name, ", ".join(sorted(changes)) or "nothing")
        return model_message(row)

    async def DeleteModel(
        self, request: billing_pb2.DeleteModelRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.DeleteModelResponse:
        problem = name_problem(request.name)
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        async with db_or_unavailable(context):
            found = await catalog.delete_model(self._prices.pool, request.name)
            await self._prices.reload()
        if not found:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no model {request.name!r}")
        log.info("model %s removed from the catalog", request.name)
        return billing_pb2.DeleteModelResponse()

    async def ListRegions(
        self, request: billing_pb2.ListRegionsRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ListRegionsResponse:
        async with db_or_unavailable(context):
            rows = await catalog.list_regions(self._prices.pool)
        return billing_pb2.ListRegionsResponse(regions=[region_message(r) for r in rows])

    async def CreateRegion(
        self, request: billing_pb2.CreateRegionRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Region:
        region = request.region
        problem = (
            code_problem(region.code)
            or _region_name_problem(region.name)
            or _multiplier_problem(region.cost_multiplier_ppm)
        )
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            row = await catalog.create_region(
                self._prices.pool, region.code, region.name, region.cost_multiplier_ppm
            )
            await self._prices.reload()
        except catalog.AlreadyExists:
            await abort(
                context, grpc.StatusCode.ALREADY_EXISTS, f"region {region.code!r} already exists"
            )
        except TRANSIENT_DB_ERRORS:
            await abort(context, grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE)
        log.info("region %s added (cost x%s ppm)", region.code, region.cost_multiplier_ppm)
        return region_message(row)

    async def UpdateRegion(
        self, request: billing_pb2.UpdateRegionRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Region:
        name = request.name if request.HasField("name") else None
        ppm = request.cost_multiplier_ppm if request.HasField("cost_multiplier_ppm") else None
        problem = (
            code_problem(request.code)
            or (None if name is None else _region_name_problem(name))
            or (None if ppm is None else _multiplier_problem(ppm))
        )
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        async with db_or_unavailable(context):
            row = await catalog.update_region(self._prices.pool, request.code, name, ppm)
            await self._prices.reload()
        if row is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no region {request.code!r}")
        log.info("region %s changed", request.code)
        return region_message(row)
