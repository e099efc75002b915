-- Users of FinFlow (service A owns identity).
CREATE TABLE users (
    id            UUID        PRIMARY KEY,
    email         TEXT        NOT NULL CHECK (email = lower(email) AND length(email) <= 254),
    password_hash TEXT        NOT NULL,
    full_name     TEXT        NOT NULL CHECK (length(full_name) BETWEEN 1 AND 100),
    phone         TEXT        NOT NULL,
    kyc_status    TEXT        NOT NULL DEFAULT 'pending'
                  CHECK (kyc_status IN ('pending', 'verified', 'rejected')),
    account_tier  TEXT        NOT NULL DEFAULT 'bronze'
                  CHECK (account_tier IN ('bronze', 'silver', 'gold')),
    roles         TEXT[]      NOT NULL DEFAULT ARRAY['user'],
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Emails are stored lower-cased; the constraint name is what a duplicate reports.
CREATE UNIQUE INDEX users_email_key ON users (email);

-- Refresh tokens: opaque to clients, stored as SHA-256 (they carry 256 bits of entropy,
-- so a slow hash buys nothing). Rotation marks a token used and issues the next one in
-- the same family; presenting a used token again revokes the whole family.
CREATE TABLE refresh_tokens (
    id          UUID        PRIMARY KEY,
    family_id   UUID        NOT NULL,
    user_id     UUID        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  BYTEA       NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    used_at     TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);

CREATE UNIQUE INDEX refresh_tokens_token_hash_key ON refresh_tokens (token_hash);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
