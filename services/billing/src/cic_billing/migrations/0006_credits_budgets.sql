-- Prepaid credits and budgets (cic_billing.credits, cic_billing.budgets). Money is integer
-- micro-dollars.

-- A grant of credit to a tenant. Usage draws from a tenant's live grants (remaining > 0, not
-- expired) oldest-expiring first (no expiry last, then the oldest grant), when it is recorded.
CREATE TABLE credit_grants (
    id                  text PRIMARY KEY,
    tenant_id           text NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('sign_up', 'promotional', 'purchased')),
    amount_micro_usd    bigint NOT NULL CHECK (amount_micro_usd > 0),
    remaining_micro_usd bigint NOT NULL
                        CHECK (remaining_micro_usd >= 0 AND remaining_micro_usd <= amount_micro_usd),
    expires_at          timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_grants_live_idx ON credit_grants (tenant_id, expires_at, created_at)
    WHERE remaining_micro_usd > 0;
CREATE INDEX credit_grants_tenant_idx ON credit_grants (tenant_id, created_at DESC);

-- What each request drew from which grant. usage_events.credit_micro_usd is their sum: the part
-- of the request's cost that credits covered (the rest is metered to Stripe).
CREATE TABLE credit_draws (
    request_id       text NOT NULL REFERENCES usage_events (request_id),
    grant_id         text NOT NULL REFERENCES credit_grants (id),
    amount_micro_usd bigint NOT NULL CHECK (amount_micro_usd > 0),
    PRIMARY KEY (request_id, grant_id)
);
CREATE INDEX credit_draws_grant_idx ON credit_draws (grant_id);

ALTER TABLE usage_events ADD COLUMN credit_micro_usd bigint NOT NULL DEFAULT 0
    CHECK (credit_micro_usd >= 0 AND credit_micro_usd <= cost_micro_usd);

-- A budget per tenant (scope 'tenant', scope_id = tenant id) or per environment (scope
-- 'environment', scope_id = environment id). blocked_reason is what the gateway enforces:
-- NULL (served), 'monthly_limit' or 'credit_exhausted' (prepaid tenants only).
CREATE TABLE budgets (
    scope                   text NOT NULL CHECK (scope IN ('tenant', 'environment')),
    scope_id                text NOT NULL,
    tenant_id               text NOT NULL,
    monthly_limit_micro_usd bigint CHECK (monthly_limit_micro_usd >= 0),
    alert_thresholds        integer[] NOT NULL DEFAULT '{}',
    prepaid                 boolean NOT NULL DEFAULT false CHECK (scope = 'tenant' OR NOT prepaid),
    blocked_reason          text CHECK (blocked_reason IN ('monthly_limit', 'credit_exhausted')),
    blocked_since           timestamptz,
    updated_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, scope_id)
);

-- Spend per scope and calendar month (UTC), kept by ingestion for every tenant and environment
-- (with a budget or not); alerted_pct is the highest alert threshold already published.
CREATE TABLE budget_spend (
    scope           text NOT NULL,
    scope_id        text NOT NULL,
    month           date NOT NULL,
    tenant_id       text NOT NULL,
    spent_micro_usd bigint NOT NULL DEFAULT 0 CHECK (spent_micro_usd >= 0),
    alerted_pct     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, scope_id, month)
);

-- This month's spend so far, from the ledger.
INSERT INTO budget_spend (scope, scope_id, month, tenant_id, spent_micro_usd)
SELECT 'tenant', tenant_id, date_trunc('month', finished_at AT TIME ZONE 'UTC')::date, tenant_id,
       sum(cost_micro_usd)
FROM usage_events
WHERE finished_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
GROUP BY 2, 3, 4
UNION ALL
SELECT 'environment', environment_id, date_trunc('month', finished_at AT TIME ZONE 'UTC')::date,
       min(tenant_id), sum(cost_micro_usd)
FROM usage_events
WHERE finished_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
  AND environment_id IS NOT NULL
GROUP BY 2, 3;
