-- The node agent (a per-node token, stored hashed), three-signal health, replacements.
ALTER TABLE nodes ADD COLUMN agent_token_sha256 text NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN agent_seen_at timestamptz;
ALTER TABLE nodes ADD COLUMN health text NOT NULL DEFAULT ''
    CHECK (health IN ('', 'healthy', 'degraded', 'suspect', 'dead'));
-- Since when the control plane's /health probes of the node fail (NULL: they answer).
ALTER TABLE nodes ADD COLUMN probe_failing_since timestamptz;
ALTER TABLE nodes ADD COLUMN replaces text NOT NULL DEFAULT '';
-- Set once a node's failure or preemption has been answered with a replacement.
ALTER TABLE nodes ADD COLUMN replaced_by text NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN preemption text NOT NULL DEFAULT '';
