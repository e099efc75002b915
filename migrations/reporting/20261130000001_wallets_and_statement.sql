-- Wallets as B announces them (wallet.created, wallet.status_changed), and the wallets
-- a payment names, so a user's statement shows money received as well as money sent.
-- Expand only: a new table, nullable columns, a backfill from what F already holds.

-- One row per wallet. updated_at is the occurred_at of the newest fact the row holds:
-- a fact only replaces the status when it is newer, so duplicates and out-of-order
-- deliveries converge. created_at stays NULL until wallet.created arrives.
CREATE TABLE wallets_rm (
    wallet_id  UUID        PRIMARY KEY,
    user_id    UUID        NOT NULL,
    currency   TEXT        NOT NULL,
    status     TEXT        NOT NULL,
    created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX wallets_rm_user_idx ON wallets_rm (user_id);

-- The sides of a payment, from its events (absent for a deposit's source and a
-- withdrawal's destination: the system account).
ALTER TABLE payments_rm ADD COLUMN from_wallet_id UUID;
ALTER TABLE payments_rm ADD COLUMN to_wallet_id UUID;

-- Payments projected before these columns existed: B's ledger entry of a payment has the
-- payment id as its transfer id and names the same wallets. Only user-to-user transfers
-- are backfilled (the other kinds have a system account on one side).
UPDATE payments_rm p
   SET from_wallet_id = l.from_wallet_id, to_wallet_id = l.to_wallet_id
  FROM ledger_rm l
 WHERE l.transfer_id = p.payment_id
   AND l.kind = 'transfer'
   AND p.kind = 'transfer'
   AND p.to_wallet_id IS NULL;

CREATE INDEX payments_rm_to_wallet_idx ON payments_rm (to_wallet_id) WHERE to_wallet_id IS NOT NULL;
