"""The tenant-facing Stripe RPCs of ``cic.billing.v1.BillingService``: a tenant's billing
account, and customer-portal sessions."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import asyncpg
import grpc
import stripe

from cic.billing.v1 import billing_pb2
from cic_billing.accounts import STATUS_BY_EVENT, read_account, tenant_id_problem
from cic_billing.ledger import DATABASE_UNAVAILABLE, TRANSIENT_DB_ERRORS, db_or_unavailable
from cic_billing.metering import StripeReporter
from cic_billing.metrics import BillingMetrics
from cic_billing.stripe_api import TransientStripeError
from cic_common.grpc_replies import abort, stamp

log = logging.getLogger(__name__)

MAX_RETURN_URL_CHARS = 2000


def return_url_problem(url: str) -> str | None:
    """Why Stripe should not send the tenant back to ``url``, or None."""
    if not url:
        return "return_url is empty"
    if len(url) > MAX_RETURN_URL_CHARS:
        return f"return_url is longer than {MAX_RETURN_URL_CHARS} characters"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "return_url contains a space or a control character"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "return_url is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "return_url must be an absolute http:// or https:// URL"
    return None


class AccountRpcs:
    """Set by the servicer that mixes this in."""

    _pool: asyncpg.Pool
    _reporter: StripeReporter | None  # None: no STRIPE_API_KEY
    _metrics: BillingMetrics

    async def GetBillingAccount(
        self, request: billing_pb2.GetBillingAccountRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.BillingAccount:
        problem = tenant_id_problem(request.tenant_id)
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        async with db_or_unavailable(context):
            account = await read_account(self._pool, request.tenant_id)
        return billing_pb2.BillingAccount(
            tenant_id=request.tenant_id,
            stripe_enabled=self._reporter is not None,
            customer_id=account.customer_id or "",
            status=STATUS_BY_EVENT.get(
                account.status_event_type or "", billing_pb2.BILLING_STATUS_UNSPECIFIED
            ),
            status_event_type=account.status_event_type or "",
            status_changed_at=stamp(account.status_changed_at),
            last_payment_failed_at=stamp(account.last_payment_failed_at),
        )

    async def CreatePortalSession(
        self, request: billing_pb2.CreatePortalSessionRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.CreatePortalSessionResponse:
        problem = tenant_id_problem(request.tenant_id) or return_url_problem(request.return_url)
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        reporter = self._reporter
        if reporter is None:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "billing has no Stripe key")
        try:
            url, customer = await reporter.portal_session(request.tenant_id, request.return_url)
        except TRANSIENT_DB_ERRORS:
            await abort(context, grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE)
        except TransientStripeError as err:
            self._metrics.portal_sessions.labels("unavailable").inc()
            log.warning("no portal session for tenant %s: %s", request.tenant_id, err)
            await abort(context, grpc.StatusCode.UNAVAILABLE, "Stripe cannot be reached; retry")
        except stripe.StripeError as err:
            self._metrics.portal_sessions.labels("refused").inc()
            reason = f"{type(err).__name__} (HTTP {err.http_status})"
            if not isinstance(err, stripe.AuthenticationError | stripe.PermissionError):
                reason += f": {err.user_message or err}"  # the others never echo the key
            log.error(
                "Stripe refused a portal session for tenant %s: %s", request.tenant_id, reason
            )
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Stripe refused the session: {reason}",
            )
        self._metrics.portal_sessions.labels("created").inc()
        log.info("portal session for tenant %s (customer %s)", request.tenant_id, customer)
        return billing_pb2.CreatePortalSessionResponse(url=url, customer_id=customer)
