"""The credit, budget, spend and invoice RPCs of ``cic.billing.v1.BillingService`` (credits in
:mod:`cic_billing.credits`, budgets in :mod:`cic_billing.budgets`)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import asyncpg
import grpc
import stripe

from cic.billing.v1 import billing_pb2
from cic_billing import budgets, credits
from cic_billing.accounts import tenant_id_problem
from cic_billing.budget_state import BudgetState
from cic_billing.budgets import ENVIRONMENT, TENANT, BudgetRow, Scope
from cic_billing.events import BIGINT_MAX, to_datetime
from cic_billing.ledger import DATABASE_UNAVAILABLE, TRANSIENT_DB_ERRORS, db_or_unavailable
from cic_billing.metering import StripeReporter
from cic_billing.stripe_api import TransientStripeError
from cic_common.grpc_replies import abort, stamp

log = logging.getLogger(__name__)

MAX_ENVIRONMENT_ID_CHARS = 200
MAX_THRESHOLDS = 10
DEFAULT_INVOICES, MAX_INVOICES = 12, 100


def _grant_message(grant: credits.Grant) -> billing_pb2.CreditGrant:
    return billing_pb2.CreditGrant(
        id=grant.id,
        tenant_id=grant.tenant_id,
        kind=grant.kind,
        amount_micro_usd=grant.amount_micro_usd,
        remaining_micro_usd=grant.remaining_micro_usd,
        expires_at=stamp(grant.expires_at),
        created_at=stamp(grant.created_at),
    )


def _scope_of(message: billing_pb2.BudgetScope) -> tuple[Scope | None, str | None]:
    """The scope named, or why it names none."""
    problem = tenant_id_problem(message.tenant_id)
    if problem:
        return None, f"scope.{problem}"
    env = message.environment_id
    if not env:
        return (TENANT, message.tenant_id), None
    if len(env) > MAX_ENVIRONMENT_ID_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in env):
        return None, "scope.environment_id is not an environment id"
    return (ENVIRONMENT, env), None


def _period(now: datetime) -> tuple[datetime, datetime]:
    start = budgets.month_of(now)
    end = budgets.next_month(start)
    return (
        datetime(start.year, start.month, 1, tzinfo=UTC),
        datetime(end.year, end.month, 1, tzinfo=UTC),
    )


def _budget_message(
    scope: Scope, tenant_id: str, row: BudgetRow | None, spent: int, now: datetime
) -> billing_pb2.Budget:
    start, end = _period(now)
    reply = billing_pb2.Budget(
        scope=billing_pb2.BudgetScope(
            tenant_id=tenant_id, environment_id=scope[1] if scope[0] == ENVIRONMENT else ""
        ),
        spent_micro_usd=row.spent_micro_usd if row else spent,
        period_start=stamp(start),
        period_end=stamp(end),
    )
    if row is not None:
        if row.monthly_limit_micro_usd is not None:
            reply.monthly_limit_micro_usd = row.monthly_limit_micro_usd
        reply.alert_thresholds.extend(row.alert_thresholds)
        reply.prepaid = row.prepaid
        reply.blocked_reason = row.blocked_reason or ""
    return reply


class BudgetRpcs:
    """Set by the servicer that mixes this in."""

    _pool: asyncpg.Pool
    _reporter: StripeReporter | None  # None: no STRIPE_API_KEY
    budget_state: BudgetState

    async def CreateCreditGrant(
        self, request: billing_pb2.CreateCreditGrantRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.CreditGrant:
        problem = tenant_id_problem(request.tenant_id)
        if request.kind not in credits.KINDS:
            problem = problem or f"kind must be one of {', '.join(credits.KINDS)}"
        if not 0 < request.amount_micro_usd <= BIGINT_MAX:
            problem = problem or "amount_micro_usd must be more than 0"
        now = datetime.now(UTC)
        expires_at = None
        if request.HasField("expires_at"):
            try:
                expires_at = to_datetime(request.expires_at)
            except ValueError:
                problem = problem or "expires_at is not a valid timestamp"
            if expires_at is not None and expires_at <= now:
                problem = problem or "expires_at is in the past"
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        scope: Scope = (TENANT, request.tenant_id)
        async with db_or_unavailable(context):
            async with self._pool.acquire() as conn, conn.transaction():
                grant = await credits.insert_grant(
                    conn, request.tenant_id, request.kind, request.amount_micro_usd, expires_at
                )
                changes = await budgets.recompute(conn, [scope], now)
                await self.budget_state.mirror(conn, changes)
        await self.budget_state.announce([], changes)
        log.info(
            "credit grant %s for tenant %s: %s, %d micro-USD",
            grant.id,
            grant.tenant_id,
            grant.kind,
            grant.amount_micro_usd,
        )
        return _grant_message(grant)

    async def ListCreditGrants(
        self, request: billing_pb2.ListCreditGrantsRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ListCreditGrantsResponse:
        problem = tenant_id_problem(request.tenant_id)
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        async with db_or_unavailable(context):
            grants, balance = await credits.list_grants(self._pool, request.tenant_id)
        return billing_pb2.ListCreditGrantsResponse(
            grants=[_grant_message(g) for g in grants], balance_micro_usd=balance
        )

    async def ListCreditDraws(
        self, request: billing_pb2.ListCreditDrawsRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ListCreditDrawsResponse:
        problem = tenant_id_problem(request.tenant_id)
        if not 0 <= request.limit <= credits.MAX_DRAWS_LIMIT:
            problem = problem or f"limit must be 0 to {credits.MAX_DRAWS_LIMIT}"
        if "\x00" in request.request_id:
            problem = problem or "request_id contains a NUL character"
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        limit = request.limit or credits.DEFAULT_DRAWS_LIMIT
        async with db_or_unavailable(context):
            rows = await credits.list_draws(
                self._pool, request.tenant_id, request.request_id or None, limit
            )
        return billing_pb2.ListCreditDrawsResponse(
            draws=[
                billing_pb2.CreditDraw(
                    request_id=r.request_id,
                    grant_id=r.grant_id,
                    amount_micro_usd=r.amount_micro_usd,
                    cost_micro_usd=r.cost_micro_usd,
                    finished_at=stamp(r.finished_at),
                )
                for r in rows
            ]
        )

    async def SetBudget(
        self, request: billing_pb2.SetBudgetRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Budget:
        scope, problem = _scope_of(request.scope)
        limit = (
            request.monthly_limit_micro_usd if request.HasField("monthly_limit_micro_usd") else None
        )
        if limit is not None and not 0 <= limit <= BIGINT_MAX:
            problem = problem or "monthly_limit_micro_usd is negative"
        thresholds = list(request.alert_thresholds)
        if len(thresholds) > MAX_THRESHOLDS:
            problem = problem or f"at most {MAX_THRESHOLDS} alert_thresholds"
        if any(not 1 <= t <= budgets.MAX_THRESHOLD_PCT for t in thresholds):
            problem = problem or f"alert_thresholds must be 1 to {budgets.MAX_THRESHOLD_PCT}"
        if scope is not None and scope[0] == ENVIRONMENT and request.prepaid:
            problem = problem or "prepaid applies to a tenant's budget only"
        if problem or scope is None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem or "no scope")
        now = datetime.now(UTC)
        tenant_id = request.scope.tenant_id
        async with db_or_unavailable(context):
            async with self._pool.acquire() as conn, conn.transaction():
                await budgets.rebase_alerts(conn, scope, tenant_id, limit, thresholds, now)
                written = await budgets.upsert_budget(
                    conn, scope, tenant_id, limit, thresholds, request.prepaid
                )
                changes = await budgets.recompute(conn, [scope], now) if written else []
                await self.budget_state.mirror(conn, changes)
            row = await budgets.read_budget(self._pool, scope, tenant_id, now)
        if not written:
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"tenant {tenant_id!r} has no environment {scope[1][:100]!r}",
            )
        await self.budget_state.announce([], changes)
        log.info("budget of %s set: limit %s micro-USD", budgets.scope_key(scope), limit)
        return _budget_message(scope, tenant_id, row, 0, now)

    async def GetBudget(
        self, request: billing_pb2.GetBudgetRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Budget:
        scope, problem = _scope_of(request.scope)
        if problem or scope is None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem or "no scope")
        now = datetime.now(UTC)
        async with db_or_unavailable(context):
            tenant_id = request.scope.tenant_id
            row = await budgets.read_budget(self._pool, scope, tenant_id, now)
            spent = 0 if row else await budgets.month_spend(self._pool, scope, tenant_id, now)
        return _budget_message(scope, request.scope.tenant_id, row, spent, now)

    async def GetSpend(
        self, request: billing_pb2.GetSpendRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Spend:
        tenant_scope, problem = _scope_of(billing_pb2.BudgetScope(tenant_id=request.tenant_id))
        env_scope: Scope | None = None
        if request.environment_id and not problem:
            env_scope, problem = _scope_of(
                billing_pb2.BudgetScope(
                    tenant_id=request.tenant_id, environment_id=request.environment_id
                )
            )
        if problem or tenant_scope is None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem or "no tenant")
        now = datetime.now(UTC)
        start, end = _period(now)
        async with db_or_unavailable(context):
            async with self._pool.acquire() as conn:
                spent = await budgets.month_spend(conn, tenant_scope, request.tenant_id, now)
                balance = int(await conn.fetchval(credits.BALANCE_SQL, request.tenant_id))
                row = await budgets.read_budget(conn, tenant_scope, request.tenant_id, now)
                reply = billing_pb2.Spend(
                    tenant_id=request.tenant_id,
                    period_start=stamp(start),
                    period_end=stamp(end),
                    spent_micro_usd=spent,
                    credit_balance_micro_usd=balance,
                    budget=_budget_message(tenant_scope, request.tenant_id, row, spent, now),
                )
                if env_scope is not None:
                    env_row = await budgets.read_budget(conn, env_scope, request.tenant_id, now)
                    env_spent = await budgets.month_spend(conn, env_scope, request.tenant_id, now)
                    reply.environment_budget.CopyFrom(
                        _budget_message(env_scope, request.tenant_id, env_row, env_spent, now)
                    )
        return reply

    async def ListInvoices(
        self, request: billing_pb2.ListInvoicesRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ListInvoicesResponse:
        problem = tenant_id_problem(request.tenant_id)
        if not 0 <= request.limit <= MAX_INVOICES:
            problem = problem or f"limit must be 0 to {MAX_INVOICES}"
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        reporter = self._reporter
        if reporter is None:
            return billing_pb2.ListInvoicesResponse(available=False)
        try:
            invoices = await reporter.invoices(request.tenant_id, request.limit or DEFAULT_INVOICES)
        except (TransientStripeError, stripe.StripeError) as err:
            log.warning("invoices of tenant %s not read: %s", request.tenant_id, type(err).__name__)
            return billing_pb2.ListInvoicesResponse(available=False)
        except TRANSIENT_DB_ERRORS:  # the tenant's Stripe customer is looked up first
            await abort(context, grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE)
        reply = billing_pb2.ListInvoicesResponse(available=True)
        for invoice in invoices:
            reply.invoices.add(
                id=invoice.id,
                number=invoice.number,
                status=invoice.status,
                amount_due_cents=invoice.amount_due_cents,
                amount_paid_cents=invoice.amount_paid_cents,
                currency=invoice.currency,
                created=stamp(invoice.created),
                hosted_invoice_url=invoice.hosted_invoice_url,
            )
        return reply
