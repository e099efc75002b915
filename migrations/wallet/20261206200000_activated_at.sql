-- When a wallet first became active. Lifting a freeze returns a wallet to where its
-- owner left it: active if they had activated it, pending if not. Without this, staff
-- who froze and unfroze a pending wallet activated it, a step that is its owner's
-- alone (POST .../activate).
--
-- Expand only: the column is nullable and a trigger sets it on every write that makes
-- a wallet active, so the release before this one, which does not know the column,
-- keeps it true. Wallets active or frozen before it count as activated (a frozen one
-- may have been frozen while pending, which nothing recorded; its freeze lifts to
-- active, as it did before).
ALTER TABLE wallets ADD COLUMN activated_at TIMESTAMPTZ;

UPDATE wallets SET activated_at = updated_at WHERE status IN ('active', 'frozen');

CREATE FUNCTION wallets_mark_activated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'active' AND NEW.activated_at IS NULL THEN
        NEW.activated_at := now();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER wallets_mark_activated
    BEFORE INSERT OR UPDATE OF status ON wallets
    FOR EACH ROW EXECUTE FUNCTION wallets_mark_activated();
