-- API keys for the "keys" access profile (docs/architecture.md, "Access").
-- Only the SHA-256 of a key is stored; `prefix` (its first 12 characters, "shk_" and 8 random
-- ones) is what listings and logs show. An admin key belongs to no user; a user's key goes
-- with its user.

CREATE TABLE api_keys (
    id            BIGSERIAL PRIMARY KEY,
    user_id       BIGINT REFERENCES users (id) ON DELETE CASCADE,
    is_admin      BOOLEAN NOT NULL DEFAULT FALSE,
    name          TEXT NOT NULL DEFAULT '',
    prefix        TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    created_at    TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    last_used_at  TIMESTAMP,
    revoked_at    TIMESTAMP,
    CONSTRAINT api_keys_owner CHECK (is_admin = (user_id IS NULL))
);
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id);
