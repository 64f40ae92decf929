-- Deployments: the clouds new nodes of a model may go to (SkyPilot picks one with capacity).
ALTER TABLE scaling_policies ADD COLUMN clouds jsonb NOT NULL DEFAULT '[]'::jsonb;
