-- Environments: every tenant has some (a `production` one made with the tenant), and every API
-- key belongs to one. An environment carries a region preference, an optional list of allowed
-- models, token quotas (per minute and per day) and a concurrency limit, and can be suspended.
-- Keys gain a role, an optional expiry and a concurrency limit of their own.

CREATE TABLE environments (
    id                 text PRIMARY KEY,
    tenant_id          text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name               text NOT NULL,
    status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    region             text,
    models             text[],
    tpm_limit          integer CHECK (tpm_limit IS NULL OR tpm_limit > 0),
    tokens_per_day     bigint CHECK (tokens_per_day IS NULL OR tokens_per_day > 0),
    concurrency_limit  integer CHECK (concurrency_limit IS NULL OR concurrency_limit > 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX environments_tenant_name ON environments (tenant_id, name);
-- A key's environment is one of its own tenant's (see the foreign key below).
ALTER TABLE environments ADD CONSTRAINT environments_tenant_id_unique UNIQUE (tenant_id, id);

CREATE FUNCTION new_environment_id() RETURNS text LANGUAGE sql VOLATILE SET search_path FROM CURRENT AS
$$ SELECT 'env_' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 24) $$;

-- Every tenant has a production environment, whoever creates the tenant (admin API, dashboard).
CREATE FUNCTION tenant_production_environment() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO environments (id, tenant_id, name) VALUES (new_environment_id(), NEW.id, 'production')
    ON CONFLICT (tenant_id, name) DO NOTHING;
    RETURN NEW;
END $$;
CREATE TRIGGER tenants_production_environment AFTER INSERT ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenant_production_environment();

INSERT INTO environments (id, tenant_id, name)
SELECT new_environment_id(), t.id, 'production' FROM tenants t
ON CONFLICT (tenant_id, name) DO NOTHING;

ALTER TABLE api_keys
    ADD COLUMN environment_id text,
    ADD COLUMN role text NOT NULL DEFAULT 'developer'
        CHECK (role IN ('admin', 'developer', 'read-only')),
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN concurrency_limit integer CHECK (concurrency_limit IS NULL OR concurrency_limit > 0);

-- A key made without an environment belongs to its tenant's production environment (or, if that
-- was renamed, to its oldest one).
CREATE FUNCTION api_key_default_environment() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.environment_id IS NULL THEN
        SELECT e.id INTO NEW.environment_id FROM environments e
        WHERE e.tenant_id = NEW.tenant_id
        ORDER BY (e.name = 'production') DESC, e.created_at, e.id LIMIT 1;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER api_keys_default_environment BEFORE INSERT ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_key_default_environment();

UPDATE api_keys k SET environment_id = e.id
FROM environments e WHERE e.tenant_id = k.tenant_id AND e.name = 'production';

ALTER TABLE api_keys ALTER COLUMN environment_id SET NOT NULL,
    ADD CONSTRAINT api_keys_environment_fk FOREIGN KEY (tenant_id, environment_id)
        REFERENCES environments (tenant_id, id) ON DELETE CASCADE;
CREATE INDEX api_keys_environment ON api_keys (environment_id);
