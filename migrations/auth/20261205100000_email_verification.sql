-- Email verification: a sign-up answers the same for every address, and an account can
-- be used (log in) only once the owner of its mailbox has confirmed it.

-- When the address was confirmed; NULL until then (login refuses the account).
ALTER TABLE users ADD COLUMN email_verified_at TIMESTAMPTZ;

-- Accounts from before verification existed were usable from their creation.
UPDATE users SET email_verified_at = created_at WHERE email_verified_at IS NULL;

-- Blue and green run side by side: the release before this one inserts users without
-- naming the column, answers them 201 and emits `user.created`, so its accounts are
-- verified as they were. This release always names the column (NULL at sign-up); the
-- default goes in the contract step, once no older release runs.
ALTER TABLE users ALTER COLUMN email_verified_at SET DEFAULT now();

-- Verification tokens: 32 random bytes sent in a mail, stored as their SHA-256 only
-- (256 bits of entropy: a slow hash buys nothing). Single use (`used_at`), valid until
-- `expires_at`, and superseded (`revoked_at`) when the address signs up again.
CREATE TABLE email_verifications (
    id          UUID        PRIMARY KEY,
    user_id     UUID        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  BYTEA       NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    used_at     TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);

CREATE UNIQUE INDEX email_verifications_token_hash_key ON email_verifications (token_hash);
CREATE INDEX email_verifications_user_idx ON email_verifications (user_id)
    WHERE used_at IS NULL AND revoked_at IS NULL;
