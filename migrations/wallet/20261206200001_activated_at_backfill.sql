-- The wallets active or frozen before `activated_at` count as activated. A frozen one
-- may have been frozen while pending, which nothing recorded; its freeze lifts to
-- active, as it did before. Row locks only: the release before this one goes on
-- reading wallets meanwhile.
UPDATE wallets SET activated_at = updated_at
WHERE activated_at IS NULL AND status IN ('active', 'frozen');
