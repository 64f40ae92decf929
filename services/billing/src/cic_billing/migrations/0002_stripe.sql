-- Stripe: a customer per tenant, the meter reports sent for the ledger's events, and every
-- webhook event received (each processed once).

CREATE TABLE stripe_customers (
    tenant_id   text PRIMARY KEY,
    customer_id text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One report per tenant and aggregation window: the sum of the costs of the ledger events it
-- claimed, sent to Stripe as one meter event whose identifier is derived from the tenant and the
-- window (so Stripe itself refuses it a second time). state: pending (to send), sent (Stripe
-- took it or already had it), failed (Stripe refused it for good; see last_error), empty
-- (nothing to bill: zero cost).
CREATE TABLE meter_reports (
    id               bigserial PRIMARY KEY,
    tenant_id        text NOT NULL,
    window_start     timestamptz NOT NULL,
    identifier       text NOT NULL UNIQUE,
    value_micro_usd  bigint NOT NULL CHECK (value_micro_usd >= 0),
    events           integer NOT NULL CHECK (events >= 0),
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'sent', 'failed', 'empty')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    UNIQUE (tenant_id, window_start)
);
CREATE INDEX meter_reports_pending_idx ON meter_reports (next_attempt_at, id)
    WHERE state = 'pending';

-- Which report counted an event: NULL until one claims it.
ALTER TABLE usage_events ADD COLUMN meter_report_id bigint REFERENCES meter_reports (id);
CREATE INDEX usage_events_unreported_idx ON usage_events (request_id)
    WHERE meter_report_id IS NULL;
CREATE INDEX usage_events_meter_report_idx ON usage_events (meter_report_id)
    WHERE meter_report_id IS NOT NULL;

-- Every verified webhook event, once (the primary key is Stripe's event id). tenant_status is
-- what the event asks of the tenant ('' when nothing); applied_at is set when the gateway has
-- applied it (events that ask nothing are applied when stored).
CREATE TABLE stripe_events (
    id            text PRIMARY KEY,
    type          text NOT NULL,
    created       timestamptz NOT NULL,
    customer_id   text,
    tenant_id     text,
    tenant_status text NOT NULL DEFAULT '',
    payload       jsonb NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    applied_at    timestamptz
);

-- The newest status event applied per tenant: an older event delivered late changes nothing.
CREATE TABLE tenant_billing_status (
    tenant_id     text PRIMARY KEY,
    status        text NOT NULL CHECK (status IN ('active', 'suspended')),
    event_id      text NOT NULL,
    event_created timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
