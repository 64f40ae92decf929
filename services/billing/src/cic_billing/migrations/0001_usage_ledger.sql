-- The usage ledger: one row per request the gateway sent to a node, keyed by the gateway's id.
-- Money is integer micro-dollars (1 USD = 1,000,000); a row's cost is fixed when it is recorded.
CREATE TABLE usage_events (
    request_id        text PRIMARY KEY,
    tenant_id         text NOT NULL,
    api_key_id        text,
    model             text NOT NULL,
    node_id           text,
    prompt_tokens     bigint NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens bigint NOT NULL CHECK (completion_tokens >= 0),
    cost_micro_usd    bigint NOT NULL CHECK (cost_micro_usd >= 0),
    started_at        timestamptz,
    finished_at       timestamptz NOT NULL,
    streamed          boolean NOT NULL DEFAULT false,
    status_code       integer NOT NULL,
    recorded_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX usage_events_tenant_finished_at_idx ON usage_events (tenant_id, finished_at);

-- Prices per million tokens, in micro-dollars. The row '*' prices every model without its own row.
CREATE TABLE model_prices (
    model                         text PRIMARY KEY,
    prompt_micro_usd_per_mtok     bigint NOT NULL CHECK (prompt_micro_usd_per_mtok >= 0),
    completion_micro_usd_per_mtok bigint NOT NULL CHECK (completion_micro_usd_per_mtok >= 0),
    updated_at                    timestamptz NOT NULL DEFAULT now()
);

INSERT INTO model_prices (model, prompt_micro_usd_per_mtok, completion_micro_usd_per_mtok) VALUES
    ('cic-sim-small', 100000, 200000),  -- $0.10 / $0.20 per million tokens
    ('*', 500000, 1500000)              -- $0.50 / $1.50 per million tokens
ON CONFLICT (model) DO NOTHING;
