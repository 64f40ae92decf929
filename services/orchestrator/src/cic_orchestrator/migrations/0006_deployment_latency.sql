-- Deployments: the mean time to first token (ms) above which one more node is launched; 0: off.
ALTER TABLE scaling_policies ADD COLUMN target_latency_ms double precision NOT NULL DEFAULT 0;
