-- Wallets and the double-entry ledger (service B). The database itself keeps the money
-- invariants, so a bug in the code cannot break them:
--   * a user wallet's balance never goes negative (CHECK);
--   * a balance is only ever changed by a ledger line (trigger), so it always equals
--     the sum of the wallet's lines;
--   * every journal entry's lines sum to zero, checked at commit (deferred trigger);
--   * a transfer id is applied at most once (UNIQUE);
--   * ledger lines and journal entries are immutable (trigger).

CREATE TABLE wallets (
    id          UUID          PRIMARY KEY,
    -- NULL for the per-currency system account that deposits come from and withdrawals
    -- go to; its balance is minus the money held in user wallets of that currency.
    user_id     UUID,
    kind        TEXT          NOT NULL CHECK (kind IN ('user', 'system')),
    currency    TEXT          NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status      TEXT          NOT NULL CHECK (status IN ('pending', 'active', 'frozen')),
    balance     NUMERIC(20,4) NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ   NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ   NOT NULL DEFAULT now(),
    CONSTRAINT wallets_balance_non_negative CHECK (kind = 'system' OR balance >= 0),
    CONSTRAINT wallets_owner CHECK ((kind = 'user') = (user_id IS NOT NULL))
);

CREATE UNIQUE INDEX wallets_user_currency_key ON wallets (user_id, currency) WHERE kind = 'user';
CREATE UNIQUE INDEX wallets_system_currency_key ON wallets (currency) WHERE kind = 'system';

CREATE TABLE journal_entries (
    id             UUID          PRIMARY KEY,
    transfer_id    UUID          NOT NULL,
    kind           TEXT          NOT NULL CHECK (kind IN ('transfer', 'deposit', 'withdrawal', 'reversal')),
    currency       TEXT          NOT NULL,
    amount         NUMERIC(20,4) NOT NULL CHECK (amount > 0),
    from_wallet_id UUID          NOT NULL REFERENCES wallets (id),
    to_wallet_id   UUID          NOT NULL REFERENCES wallets (id),
    created_at     TIMESTAMPTZ   NOT NULL DEFAULT now(),
    CHECK (from_wallet_id <> to_wallet_id)
);

CREATE UNIQUE INDEX journal_entries_transfer_id_key ON journal_entries (transfer_id);

-- One line per wallet touched: negative debits, positive credits.
CREATE TABLE ledger_lines (
    id            BIGINT        GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id      UUID          NOT NULL REFERENCES journal_entries (id),
    wallet_id     UUID          NOT NULL REFERENCES wallets (id),
    amount        NUMERIC(20,4) NOT NULL CHECK (amount <> 0),
    balance_after NUMERIC(20,4) NOT NULL,
    created_at    TIMESTAMPTZ   NOT NULL DEFAULT now()
);

CREATE INDEX ledger_lines_wallet_idx ON ledger_lines (wallet_id, id DESC);
CREATE INDEX ledger_lines_entry_idx ON ledger_lines (entry_id);

-- A line moves its wallet's balance; nothing else may.
CREATE FUNCTION ledger_line_applies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE wallets SET balance = balance + NEW.amount, updated_at = now()
     WHERE id = NEW.wallet_id
     RETURNING balance INTO NEW.balance_after;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ledger line for unknown wallet %', NEW.wallet_id;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER ledger_lines_apply BEFORE INSERT ON ledger_lines
    FOR EACH ROW EXECUTE FUNCTION ledger_line_applies();

CREATE FUNCTION wallet_balance_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.balance IS DISTINCT FROM OLD.balance
       AND pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'wallet balances change only through ledger lines'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER wallets_balance_guard BEFORE UPDATE OF balance ON wallets
    FOR EACH ROW EXECUTE FUNCTION wallet_balance_guard();

-- Debits equal credits, per entry, at commit (lines are inserted one by one).
CREATE FUNCTION journal_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total NUMERIC;
    lines INT;
BEGIN
    SELECT coalesce(sum(amount), 0), count(*) INTO total, lines
      FROM ledger_lines WHERE entry_id = NEW.entry_id;
    IF total <> 0 OR lines < 2 THEN
        RAISE EXCEPTION 'journal entry % does not balance (sum %, % lines)', NEW.entry_id, total, lines
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER ledger_lines_balanced AFTER INSERT ON ledger_lines
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION journal_entry_balanced();

CREATE FUNCTION ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only' USING ERRCODE = 'check_violation';
END $$;

CREATE TRIGGER ledger_lines_immutable BEFORE UPDATE OR DELETE ON ledger_lines
    FOR EACH ROW EXECUTE FUNCTION ledger_immutable();
CREATE TRIGGER journal_entries_immutable BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_immutable();
