-- Refresh-token families that were revoked: by a logout, or by a rotated token coming
-- back. Revoking also marks the family's tokens, but that UPDATE sees only the tokens
-- committed when it began, so the token a rotation was writing at that moment stayed
-- live: a thief rotating in a loop kept the session through the owner's logout. A
-- refresh refuses every token of a family recorded here, whenever it was written.
--
-- Expand only: a new table, which the release before this one neither reads nor writes
-- (it goes on revoking the tokens it sees, as before).
CREATE TABLE revoked_refresh_families (
    family_id  UUID        PRIMARY KEY,
    revoked_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
