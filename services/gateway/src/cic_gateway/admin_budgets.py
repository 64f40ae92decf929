"""Admin API: prepaid credit grants and budgets, kept by billing.

Amounts are USD as JSON numbers or decimal strings, exact to the micro-dollar (the answers carry
the integer micro-dollars too). A budget is a tenant's or an environment's monthly hard limit
(``monthly_limit_usd``; null: none) with alert thresholds in percent of it, and for a tenant the
``prepaid`` flag (its requests are refused while its credit balance is spent). A PUT replaces the
whole budget; the gateway refuses a blocked scope's requests within about a second.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BeforeValidator, Field, StrictBool, StrictInt, field_validator

from cic.billing.v1 import billing_pb2
from cic_gateway import environments
from cic_gateway.admin import Body, call_billing, future_time, listing, tenant_or_404
from cic_gateway.admin_auth import audit_detail
from cic_gateway.errors import bad_request, not_found
from cic_gateway.jsonio import json_response, query_limit, read_json_object, validated
from cic_gateway.money import BIGINT_MAX, millionths, usd
from cic_gateway.resources import DB

MAX_DRAWS = 1000

Usd = Annotated[int, BeforeValidator(millionths), Field(ge=0, le=BIGINT_MAX)]
Percent = Annotated[StrictInt, Field(ge=1, le=1000)]


class NewGrant(Body):
    kind: Literal["sign_up", "promotional", "purchased"]
    amount_usd: Annotated[int, BeforeValidator(millionths), Field(gt=0, le=BIGINT_MAX)]
    expires_at: datetime | None = None

    _expires_at = field_validator("expires_at")(future_time)


class EnvironmentBudget(Body):
    monthly_limit_usd: Usd | None = None
    alert_thresholds: Annotated[list[Percent], Field(max_length=10)] = []


class TenantBudget(EnvironmentBudget):
    prepaid: StrictBool = False


def iso(stamp: Timestamp) -> str:
    return stamp.ToDatetime(UTC).isoformat().replace("+00:00", "Z")


def grant_json(grant: billing_pb2.CreditGrant) -> dict[str, Any]:
    return {
        "id": grant.id,
        "object": "credit_grant",
        "tenant_id": grant.tenant_id,
        "kind": grant.kind,
        "amount_usd": usd(grant.amount_micro_usd),
        "amount_micro_usd": grant.amount_micro_usd,
        "remaining_usd": usd(grant.remaining_micro_usd),
        "remaining_micro_usd": grant.remaining_micro_usd,
        "expires_at": iso(grant.expires_at) if grant.HasField("expires_at") else None,
        "created_at": iso(grant.created_at),
    }


def budget_json(budget: billing_pb2.Budget) -> dict[str, Any]:
    limit = budget.monthly_limit_micro_usd if budget.HasField("monthly_limit_micro_usd") else None
    body: dict[str, Any] = {
        "object": "budget",
        "tenant_id": budget.scope.tenant_id,
        "environment_id": budget.scope.environment_id or None,
        "monthly_limit_usd": None if limit is None else usd(limit),
        "monthly_limit_micro_usd": limit,
        "alert_thresholds": list(budget.alert_thresholds),
        "spent_usd": usd(budget.spent_micro_usd),
        "spent_micro_usd": budget.spent_micro_usd,
        "period_start": iso(budget.period_start),
        "period_end": iso(budget.period_end),
        "blocked": bool(budget.blocked_reason),
        "blocked_reason": budget.blocked_reason or None,
    }
    if not budget.scope.environment_id:
        body["prepaid"] = budget.prepaid
    return body


async def create_grant(request: web.Request) -> web.Response:
    tenant = await tenant_or_404(request)
    _, data = await read_json_object(request)
    body = validated(NewGrant, data)
    audit_detail(request).update(kind=body.kind, amount_micro_usd=body.amount_usd)
    call = billing_pb2.CreateCreditGrantRequest(
        tenant_id=tenant["id"], kind=body.kind, amount_micro_usd=body.amount_usd
    )
    if body.expires_at is not None:
        call.expires_at.FromDatetime(body.expires_at.astimezone(UTC))
    grant = await call_billing(request, "CreateCreditGrant", call)
    return json_response(grant_json(grant), status=201)


async def list_grants(request: web.Request) -> web.Response:
    tenant = await tenant_or_404(request)
    reply = await call_billing(
        request, "ListCreditGrants", billing_pb2.ListCreditGrantsRequest(tenant_id=tenant["id"])
    )
    body = listing([grant_json(g) for g in reply.grants])
    body.update(balance_usd=usd(reply.balance_micro_usd), balance_micro_usd=reply.balance_micro_usd)
    return json_response(body)


async def list_draws(request: web.Request) -> web.Response:
    tenant = await tenant_or_404(request)
    request_id = request.query.get("request_id", "")
    limit = query_limit(request, 100, MAX_DRAWS)
    if len(request_id) > 200 or "\x00" in request_id:
        raise bad_request("request_id is not a request id", param="request_id")
    reply = await call_billing(
        request,
        "ListCreditDraws",
        billing_pb2.ListCreditDrawsRequest(
            tenant_id=tenant["id"], request_id=request_id, limit=limit
        ),
    )
    return json_response(
        listing(
            [
                {
                    "request_id": d.request_id,
                    "grant_id": d.grant_id,
                    "amount_usd": usd(d.amount_micro_usd),
                    "amount_micro_usd": d.amount_micro_usd,
                    "request_cost_micro_usd": d.cost_micro_usd,
                    "finished_at": iso(d.finished_at),
                }
                for d in reply.draws
            ]
        )
    )


async def _environment_scope(request: web.Request) -> billing_pb2.BudgetScope:
    environment_id = request.match_info["environment_id"]
    audit_detail(request)["environment_id"] = environment_id
    row = await environments.get_environment(request.app[DB], environment_id)
    if row is None:
        raise not_found(f"No environment with id '{environment_id}'.")
    audit_detail(request)["tenant_id"] = row["tenant_id"]
    return billing_pb2.BudgetScope(tenant_id=row["tenant_id"], environment_id=environment_id)


async def _set_budget(
    request: web.Request, scope: billing_pb2.BudgetScope, model: type[EnvironmentBudget]
) -> web.Response:
    _, data = await read_json_object(request)
    body = validated(model, data)
    audit_detail(request)["budget"] = body.model_dump()
    call = billing_pb2.SetBudgetRequest(
        scope=scope,
        alert_thresholds=body.alert_thresholds,
        prepaid=isinstance(body, TenantBudget) and body.prepaid,
    )
    if body.monthly_limit_usd is not None:
        call.monthly_limit_micro_usd = body.monthly_limit_usd
    return json_response(budget_json(await call_billing(request, "SetBudget", call)))


async def set_tenant_budget(request: web.Request) -> web.Response:
    tenant = await tenant_or_404(request)
    return await _set_budget(request, billing_pb2.BudgetScope(tenant_id=tenant["id"]), TenantBudget)


async def get_tenant_budget(request: web.Request) -> web.Response:
    tenant = await tenant_or_404(request)
    scope = billing_pb2.BudgetScope(tenant_id=tenant["id"])
    budget = await call_billing(request, "GetBudget", billing_pb2.GetBudgetRequest(scope=scope))
    return json_response(budget_json(budget))


async def set_environment_budget(request: web.Request) -> web.Response:
    scope = await _environment_scope(request)
    return await _set_budget(request, scope, EnvironmentBudget)


async def get_environment_budget(request: web.Request) -> web.Response:
    scope = await _environment_scope(request)
    budget = await call_billing(request, "GetBudget", billing_pb2.GetBudgetRequest(scope=scope))
    return json_response(budget_json(budget))
