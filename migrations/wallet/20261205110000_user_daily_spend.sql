-- Tier limits are per user, not per wallet, and in the reference currency (FX_RATES):
-- a user with wallets in N currencies had N daily limits, each in its own unit.
--
-- A limited entry (transfer, withdrawal) records what it was worth in the reference
-- currency when it was made (the rates are configuration the database does not have),
-- and the trigger on ledger lines counts that value against the sending user's day, as
-- it counted amounts per wallet before: no code path can move money out of a user's
-- wallet without the counter moving. Spend before this migration is not carried over:
-- it was never valued.
ALTER TABLE journal_entries ADD COLUMN reference_value NUMERIC(20,4)
    CHECK (reference_value >= 0);
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_limited_are_valued
    CHECK (kind NOT IN ('transfer', 'withdrawal') OR reference_value IS NOT NULL) NOT VALID;

CREATE TABLE user_daily_spend (
    user_id UUID          NOT NULL,
    day     DATE          NOT NULL,
    spent   NUMERIC(20,4) NOT NULL CHECK (spent >= 0),
    PRIMARY KEY (user_id, day)
);

CREATE OR REPLACE FUNCTION ledger_line_counts_spend() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sender UUID;
    value  NUMERIC(20,4);
BEGIN
    SELECT e.reference_value INTO value FROM journal_entries e
     WHERE e.id = NEW.entry_id AND e.kind IN ('transfer', 'withdrawal');
    IF FOUND THEN
        SELECT w.user_id INTO sender FROM wallets w WHERE w.id = NEW.wallet_id AND w.kind = 'user';
        IF sender IS NOT NULL THEN
            INSERT INTO user_daily_spend AS s (user_id, day, spent)
            VALUES (sender, (NEW.created_at AT TIME ZONE 'UTC')::date, value)
            ON CONFLICT (user_id, day) DO UPDATE SET spent = s.spent + EXCLUDED.spent;
        END IF;
    END IF;
    RETURN NULL;
END $$;

DROP TABLE wallet_daily_spend;
