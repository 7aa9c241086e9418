-- API keys for /api/v1 on the API port (security.api_key_enabled).
-- Only a SHA-256 hash of each key is stored; the prefix (the random part
-- between `ak_` and the secret) is kept in clear so that keys can be
-- listed and told apart without revealing them.
CREATE TABLE api_keys (
    id         bigserial   PRIMARY KEY,
    name       text        NOT NULL,
    prefix     text        NOT NULL UNIQUE,
    key_hash   bytea       NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    scopes     text[]      NOT NULL
        CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['ingest', 'read', 'admin']),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- One active key per name (a name may be reused once its key is revoked).
CREATE UNIQUE INDEX api_keys_active_name_idx ON api_keys (name) WHERE revoked_at IS NULL;
