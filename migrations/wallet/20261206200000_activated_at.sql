-- When a wallet first became active. Lifting a freeze returns a wallet to where its
-- owner left it: active if they had activated it, pending if not. Without this, staff
-- who froze and unfroze a pending wallet activated it, a step that is its owner's
-- alone (POST .../activate).
--
-- Expand only: the column is nullable and a trigger sets it on every write that makes
-- a wallet active, so the release before this one, which does not know the column,
-- keeps it true. The wallets from before are filled in by the next migration, apart
-- from this one: an UPDATE of every wallet here would hold this ALTER TABLE's lock, and
-- every read and transfer of the release before, for as long as it took.
ALTER TABLE wallets ADD COLUMN activated_at TIMESTAMPTZ;

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
