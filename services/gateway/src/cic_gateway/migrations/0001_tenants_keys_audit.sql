-- Tenants, their API keys (stored only as a SHA-256 hash and a display prefix), and the audit
-- log of every admin API call.

CREATE TABLE tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    rpm_limit   integer CHECK (rpm_limit IS NULL OR rpm_limit > 0),
    tpm_limit   integer CHECK (tpm_limit IS NULL OR tpm_limit > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX tenants_email_unique ON tenants (lower(email));
CREATE INDEX tenants_created_at ON tenants (created_at, id);

CREATE TABLE api_keys (
    id            text PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          text NOT NULL,
    prefix        text NOT NULL,
    key_hash      bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    rpm_limit     integer CHECK (rpm_limit IS NULL OR rpm_limit > 0),
    tpm_limit     integer CHECK (tpm_limit IS NULL OR tpm_limit > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);

CREATE TABLE audit_log (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    method  text NOT NULL,
    path    text NOT NULL,
    status  integer NOT NULL,
    source  text,
    detail  jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at ON audit_log (at DESC, id DESC);
