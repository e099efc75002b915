-- Each sign-up's own password hash, name and phone, kept with the token mailed for it
-- until the token is used or revoked: the account takes those of the sign-up whose
-- token is redeemed, and redeeming needs that sign-up's password. A sign-up of an
-- unverified address no longer rewrites the account nor revokes earlier tokens, so
-- somebody else's sign-up of the address can neither take the account nor stop its
-- owner's sign-up from completing. Nullable (expand only): a token issued before these
-- columns is redeemed with the account's own password, as the account stands.
ALTER TABLE email_verifications
    ADD COLUMN password_hash TEXT,
    ADD COLUMN full_name     TEXT,
    ADD COLUMN phone         TEXT;

-- Each sign-up clears what expired ones chose, a few at a time.
CREATE INDEX email_verifications_kept_idx ON email_verifications (expires_at)
    WHERE password_hash IS NOT NULL;
