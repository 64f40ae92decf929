-- The tenant dashboard: one-time sign-in links and browser sessions (both stored only as a
-- SHA-256 hash of the secret the browser or the mail holds), and the invite codes spent on
-- new tenants.

CREATE TABLE dashboard_sign_in_links (
    token_hash   bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    email        text NOT NULL,
    invite_hash  bytea CHECK (invite_hash IS NULL OR octet_length(invite_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz
);
CREATE INDEX dashboard_sign_in_links_expires ON dashboard_sign_in_links (expires_at);

CREATE TABLE dashboard_sessions (
    id_hash     bytea PRIMARY KEY CHECK (octet_length(id_hash) = 32),
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email       text NOT NULL,
    csrf_token  text NOT NULL,
    method      text NOT NULL CHECK (method IN ('email', 'oidc')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX dashboard_sessions_tenant ON dashboard_sessions (tenant_id);
CREATE INDEX dashboard_sessions_expires ON dashboard_sessions (expires_at);

CREATE TABLE dashboard_invite_uses (
    code_hash  bytea PRIMARY KEY CHECK (octet_length(code_hash) = 32),
    tenant_id  text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    used_at    timestamptz NOT NULL DEFAULT now()
);
