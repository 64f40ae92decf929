-- Spot instances for launched nodes, and the autoscaler's per-model policies.
ALTER TABLE nodes ADD COLUMN use_spot boolean NOT NULL DEFAULT false;

CREATE INDEX nodes_model_state_idx ON nodes (model, state);

-- How many nodes a model runs: between min_nodes and max_nodes, enough that each holds about
-- target_queue_per_node requests (running + waiting); new nodes are launched like this.
CREATE TABLE scaling_policies (
    model text PRIMARY KEY,
    min_nodes integer NOT NULL CHECK (min_nodes >= 0),
    max_nodes integer NOT NULL CHECK (max_nodes >= min_nodes AND max_nodes <= 1000),
    target_queue_per_node double precision NOT NULL CHECK (target_queue_per_node > 0),
    accelerators text NOT NULL DEFAULT '',
    cloud text NOT NULL DEFAULT '',
    use_spot boolean NOT NULL DEFAULT false,
    vllm_args jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
