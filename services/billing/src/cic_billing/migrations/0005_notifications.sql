-- Notifications (cic_billing.notify): where events go, the events received from the bus, one
-- delivery per (channel, event) and every attempt made at it.

CREATE TABLE notification_channels (
    id          text PRIMARY KEY,
    tenant_id   text,                   -- NULL: the operator's channel (every tenant's events)
    type        text NOT NULL CHECK (type IN ('slack', 'discord', 'email', 'webhook')),
    name        text NOT NULL DEFAULT '',
    config      jsonb NOT NULL,         -- {"url": ...} or {"to": ...}; the signing secret is not here
    secret      text,                   -- the webhook's HMAC secret (webhook channels only)
    event_kinds text[] NOT NULL DEFAULT '{}',  -- empty: every kind the owner may receive
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notification_channels_tenant_idx ON notification_channels (tenant_id);

CREATE TABLE notification_events (
    id          text PRIMARY KEY,
    kind        text NOT NULL,
    tenant_id   text,
    at          timestamptz NOT NULL,
    data        jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notification_deliveries (
    id              text PRIMARY KEY,  -- X-CIC-Delivery: the same on every attempt
    channel_id      text NOT NULL REFERENCES notification_channels (id) ON DELETE CASCADE,
    event_id        text NOT NULL REFERENCES notification_events (id) ON DELETE CASCADE,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,       -- a notifier is sending it until then
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (channel_id, event_id)
);
CREATE INDEX notification_deliveries_due_idx ON notification_deliveries (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX notification_deliveries_channel_idx
    ON notification_deliveries (channel_id, created_at DESC);

CREATE TABLE notification_attempts (
    delivery_id text NOT NULL REFERENCES notification_deliveries (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    status_code integer,               -- the HTTP or SMTP answer; NULL: none (network error)
    error       text NOT NULL DEFAULT '',
    duration_ms integer NOT NULL DEFAULT 0,
    PRIMARY KEY (delivery_id, attempt)
);
