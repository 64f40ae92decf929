-- Nodes the orchestrator launched or adopted, with their lifecycle state.
CREATE TABLE nodes (
    id text PRIMARY KEY,
    model text NOT NULL,
    provider text NOT NULL,
    accelerators text NOT NULL DEFAULT '',
    cloud text NOT NULL DEFAULT '',
    vllm_args jsonb NOT NULL DEFAULT '[]'::jsonb,
    state text NOT NULL
        CHECK (state IN ('launching', 'ready', 'draining', 'terminated', 'failed')),
    endpoint text NOT NULL DEFAULT '',
    failure_reason text NOT NULL DEFAULT '',
    provider_handle jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX nodes_state_idx ON nodes (state);

-- One live node per endpoint: the same server cannot be adopted twice.
CREATE UNIQUE INDEX nodes_live_endpoint_key ON nodes (endpoint)
    WHERE endpoint <> '' AND state IN ('launching', 'ready', 'draining');
