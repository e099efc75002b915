-- Password resets: a token mailed to a verified account's address sets a new password.
-- 32 random bytes, stored as their SHA-256 only (256 bits of entropy: a slow hash buys
-- nothing). Single use (`used_at`), valid until `expires_at`, and revoked (`revoked_at`)
-- when another is used or the password is changed. A new table only: the release before
-- this one runs against it unchanged.
CREATE TABLE password_resets (
    id          UUID        PRIMARY KEY,
    user_id     UUID        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  BYTEA       NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    used_at     TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);

CREATE UNIQUE INDEX password_resets_token_hash_key ON password_resets (token_hash);
-- The requests of one account: how many were mailed in the last hour, which are live.
CREATE INDEX password_resets_user_idx ON password_resets (user_id, created_at);
