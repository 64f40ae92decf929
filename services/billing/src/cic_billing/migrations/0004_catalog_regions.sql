-- The model catalog lives in model_prices (one row per model, with its prices): each model gets a
-- type and a context length. The row '*' stays the default price and is no catalog model.
ALTER TABLE model_prices
    ADD COLUMN type text NOT NULL DEFAULT 'chat'
        CHECK (type IN ('chat', 'completion', 'embedding')),
    ADD COLUMN context_length integer NOT NULL DEFAULT 4096
        CHECK (context_length BETWEEN 1 AND 10000000),
    ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();

-- Regions and the multiplier applied to the cost of requests served there, in parts per million
-- (1.5x = 1500000): stored exactly, never as a float.
CREATE TABLE regions (
    code                text PRIMARY KEY,
    name                text NOT NULL,
    cost_multiplier_ppm bigint NOT NULL CHECK (cost_multiplier_ppm > 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Each ledger row keeps the environment of its key and the region of the node that served it.
ALTER TABLE usage_events
    ADD COLUMN environment_id text,
    ADD COLUMN region text;
