"""The credit, budget, spend and invoice RPCs of the fake billing (the real ones are tested
against the real billing in test_budgets.py): grants and budgets kept in memory, no spend, no
invoices (Stripe off)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cic.billing.v1 import billing_pb2

KINDS = ("sign_up", "promotional", "purchased")


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.FromSeconds(int(time.time()))
    return stamp


def _key(scope: billing_pb2.BudgetScope) -> tuple[str, str]:
    return scope.tenant_id, scope.environment_id


class FakeBudgets:
    """A mixin of FakeBilling; its state is made on first use (no __init__ to chain)."""

    def _budget_state(self) -> dict[str, Any]:
        state: dict[str, Any] | None = getattr(self, "_fake_budget_state", None)
        if state is None:
            state = {"grants": [], "budgets": {}}
            self._fake_budget_state = state
        return state

    def _budget(self, scope: billing_pb2.BudgetScope) -> billing_pb2.Budget:
        found = self._budget_state()["budgets"].get(_key(scope))
        budget = billing_pb2.Budget(scope=scope, period_start=_now(), period_end=_now())
        if found is not None:
            budget.CopyFrom(found)
        return budget

    async def CreateCreditGrant(self, request, context):
        if request.kind not in KINDS or request.amount_micro_usd <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad grant")
        grant = billing_pb2.CreditGrant(
            id="cr_" + secrets.token_hex(12),
            tenant_id=request.tenant_id,
            kind=request.kind,
            amount_micro_usd=request.amount_micro_usd,
            remaining_micro_usd=request.amount_micro_usd,
            created_at=_now(),
        )
        if request.HasField("expires_at"):
            grant.expires_at.CopyFrom(request.expires_at)
        self._budget_state()["grants"].append(grant)
        return grant

    async def ListCreditGrants(self, request, context):
        grants = [g for g in self._budget_state()["grants"] if g.tenant_id == request.tenant_id]
        return billing_pb2.ListCreditGrantsResponse(
            grants=grants[::-1], balance_micro_usd=sum(g.remaining_micro_usd for g in grants)
        )

    async def ListCreditDraws(self, request, context):
        return billing_pb2.ListCreditDrawsResponse()

    async def SetBudget(self, request, context):
        if request.scope.environment_id and request.prepaid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prepaid is for tenants")
        budget = self._budget(request.scope)
        budget.ClearField("monthly_limit_micro_usd")
        if request.HasField("monthly_limit_micro_usd"):
            budget.monthly_limit_micro_usd = request.monthly_limit_micro_usd
        del budget.alert_thresholds[:]
        budget.alert_thresholds.extend(sorted(set(request.alert_thresholds)))
        budget.prepaid = request.prepaid
        self._budget_state()["budgets"][_key(request.scope)] = budget
        return budget

    async def GetBudget(self, request, context):
        return self._budget(request.scope)

    async def GetSpend(self, request, context):
        error = getattr(self, "spend_error", None)  # (code, message): GetSpend refuses
        if error is not None:
            await context.abort(*error)
        reply = billing_pb2.Spend(
            tenant_id=request.tenant_id,
            period_start=_now(),
            period_end=_now(),
            budget=self._budget(billing_pb2.BudgetScope(tenant_id=request.tenant_id)),
        )
        if request.environment_id:
            scope = billing_pb2.BudgetScope(
                tenant_id=request.tenant_id, environment_id=request.environment_id
            )
            reply.environment_budget.CopyFrom(self._budget(scope))
        return reply

    async def ListInvoices(self, request, context):
        return billing_pb2.ListInvoicesResponse(available=False)
