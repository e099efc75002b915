-- no-transaction
-- Ending every session of a user (a password change, signing out everywhere) finds the
-- user's live refresh tokens by this index instead of scanning every token ever issued.
-- Built concurrently, outside a transaction, so logins and refreshes go on meanwhile;
-- only an index is added, so the release before it runs against it unchanged.
CREATE INDEX CONCURRENTLY IF NOT EXISTS refresh_tokens_user_live_idx
    ON refresh_tokens (user_id) WHERE revoked_at IS NULL;
