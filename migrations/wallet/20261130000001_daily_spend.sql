-- What each wallet sent per UTC day through the kinds tier limits count (transfer,
-- withdrawal). A limit check reads one row instead of summing the day's ledger lines,
-- which grows with every payment of a busy wallet. Kept by a trigger on ledger lines,
-- so no code path can move money without moving the counter.
CREATE TABLE wallet_daily_spend (
    wallet_id UUID          NOT NULL REFERENCES wallets (id),
    day       DATE          NOT NULL,
    spent     NUMERIC(20,4) NOT NULL CHECK (spent >= 0),
    PRIMARY KEY (wallet_id, day)
);

CREATE FUNCTION ledger_line_counts_spend() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM journal_entries
                WHERE id = NEW.entry_id AND kind IN ('transfer', 'withdrawal')) THEN
        INSERT INTO wallet_daily_spend AS s (wallet_id, day, spent)
        VALUES (NEW.wallet_id, (NEW.created_at AT TIME ZONE 'UTC')::date, -NEW.amount)
        ON CONFLICT (wallet_id, day) DO UPDATE SET spent = s.spent + EXCLUDED.spent;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_lines_count_spend AFTER INSERT ON ledger_lines
    FOR EACH ROW WHEN (NEW.amount < 0) EXECUTE FUNCTION ledger_line_counts_spend();

-- What was already spent before this migration.
INSERT INTO wallet_daily_spend (wallet_id, day, spent)
SELECT l.wallet_id, (l.created_at AT TIME ZONE 'UTC')::date, sum(-l.amount)
  FROM ledger_lines l
  JOIN journal_entries e ON e.id = l.entry_id
 WHERE l.amount < 0 AND e.kind IN ('transfer', 'withdrawal')
 GROUP BY 1, 2;
