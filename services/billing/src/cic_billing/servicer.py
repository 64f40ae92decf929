"""``cic.billing.v1.BillingService``: records usage events once each and sums them per tenant
(prices, webhooks and reconciliation are in :mod:`cic_billing.servicer_admin`, the model catalog
and regions in :mod:`cic_billing.servicer_catalog`, a tenant's billing account and portal
sessions in :mod:`cic_billing.servicer_accounts`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NoReturn

import grpc

from cic.billing.v1 import billing_pb2, billing_pb2_grpc
from cic_billing.charging import Charger
from cic_billing.events import InvalidBatchError, text_problem, to_datetime, to_rows
from cic_billing.ledger import TRANSIENT_DB_ERRORS, Ledger, UsageSums
from cic_billing.metrics import BillingMetrics
from cic_billing.pricing import NoPriceError, PriceBook
from cic_billing.servicer_accounts import AccountRpcs
from cic_billing.servicer_admin import AdminRpcs, StripeParts
from cic_billing.servicer_budgets import BudgetRpcs
from cic_billing.servicer_catalog import CatalogRpcs
from cic_billing.servicer_notify import NotificationRpcs
from cic_common.grpc_replies import abort

log = logging.getLogger(__name__)


class BillingServicer(
    AccountRpcs,
    BudgetRpcs,
    CatalogRpcs,
    NotificationRpcs,
    AdminRpcs,
    billing_pb2_grpc.BillingServiceServicer,
):
    def __init__(
        self, ledger: Ledger, prices: PriceBook, metrics: BillingMetrics, stripe: StripeParts
    ) -> None:
        super().__init__(prices, metrics, stripe)
        self._ledger = ledger
        self._pool = prices.pool
        # Set by the service: records each batch with its credit draws and budgets.
        self.charger: Charger | None = None

    async def RecordUsage(
        self, request: billing_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.RecordUsageResponse:
        """All or nothing: a bad event (INVALID_ARGUMENT), a model without a price
        (FAILED_PRECONDITION) or a database failure (UNAVAILABLE) writes nothing. Otherwise each
        event whose request id is new is written once; the rest count as duplicates."""
        started = time.perf_counter()
        try:
            return await self._record(request.events, context)
        finally:
            self._metrics.ingest_seconds.observe(time.perf_counter() - started)

    async def _record(
        self, events: Sequence[billing_pb2.UsageEvent], context: grpc.aio.ServicerContext
    ) -> billing_pb2.RecordUsageResponse:
        self._metrics.batch_size.observe(len(events))
        try:
            rows = to_rows(events, await self._prices.current())
            if self.charger is None:
                inserted = await self._ledger.insert(rows)
            else:
                inserted = await self.charger.record(rows)
        except InvalidBatchError as err:
            await self._reject(context, "invalid", grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except NoPriceError as err:
            await self._reject(context, "no_price", grpc.StatusCode.FAILED_PRECONDITION, str(err))
        except TRANSIENT_DB_ERRORS as err:
            log.warning("usage batch not recorded: %s: %s", type(err).__name__, err)
            message = "the usage ledger is unavailable; retry the batch"
            await self._reject(context, "unavailable", grpc.StatusCode.UNAVAILABLE, message)
        recorded, duplicates = len(inserted), len(events) - len(inserted)
        self._metrics.events_recorded.inc(recorded)
        self._metrics.duplicate_events.inc(duplicates)
        return billing_pb2.RecordUsageResponse(recorded=recorded, duplicates=duplicates)

    async def _reject(
        self,
        context: grpc.aio.ServicerContext,
        reason: str,
        code: grpc.StatusCode,
        message: str,
    ) -> NoReturn:
        self._metrics.rejected_batches.labels(reason).inc()
        await abort(context, code, message)

    async def GetUsage(
        self, request: billing_pb2.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.GetUsageResponse:
        """Sums the tenant's events with ``finished_at`` in ``[start, end)``; an unset start is
        the beginning of time, an unset end is now."""
        problem = _usage_request_problem(request)
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        group_by = _GROUP_BY.get(request.group_by)
        start = to_datetime(request.start) if request.HasField("start") else None
        end = to_datetime(request.end) if request.HasField("end") else datetime.now(UTC)
        try:
            usage = await self._ledger.tenant_usage(
                request.tenant_id, start, end, request.model or None, group_by
            )
        except TRANSIENT_DB_ERRORS as err:
            log.warning("usage not read: %s: %s", type(err).__name__, err)
            await abort(context, grpc.StatusCode.UNAVAILABLE, "the usage ledger is unavailable")
        reply = billing_pb2.GetUsageResponse(tenant_id=request.tenant_id)
        _fill_sums(reply, usage.total)
        for model, sums in usage.by_model.items():
            _fill_sums(reply.by_model.add(model=model), sums)
        for bucket, sums in usage.breakdown:
            row = reply.breakdown.add()
            if isinstance(bucket, datetime):
                row.period_start.FromDatetime(bucket)
            else:
                row.key = bucket
            _fill_sums(row, sums)
        return reply


# GetUsageRequest.group_by -> the ledger's breakdown (unspecified: none).
_GROUP_BY = {
    billing_pb2.USAGE_GROUP_BY_MODEL: "model",
    billing_pb2.USAGE_GROUP_BY_KEY: "key",
    billing_pb2.USAGE_GROUP_BY_ENVIRONMENT: "environment",
    billing_pb2.USAGE_GROUP_BY_HOUR: "hour",
    billing_pb2.USAGE_GROUP_BY_DAY: "day",
    billing_pb2.USAGE_GROUP_BY_MONTH: "month",
}


def _usage_request_problem(request: billing_pb2.GetUsageRequest) -> str | None:
    if not request.tenant_id:
        return "tenant_id is empty"
    if request.group_by and request.group_by not in _GROUP_BY:
        return "group_by is not a known grouping"
    for name in ("tenant_id", "model"):
        problem = text_problem(getattr(request, name))
        if problem:
            return f"{name} {problem}"
    times: dict[str, datetime] = {}
    for field in ("start", "end"):
        if request.HasField(field):
            try:
                times[field] = to_datetime(getattr(request, field))
            except ValueError:
                return f"{field} is not a valid timestamp"
    if "start" in times and "end" in times and times["end"] < times["start"]:
        return "end is before start"
    return None


def _fill_sums(
    target: billing_pb2.GetUsageResponse | billing_pb2.ModelUsage | billing_pb2.UsageRow,
    sums: UsageSums,
) -> None:
    target.requests = sums.requests
    target.prompt_tokens = sums.prompt_tokens
    target.completion_tokens = sums.completion_tokens
    target.cost_micro_usd = sums.cost_micro_usd
