-- no-transaction
-- Whether a staff member and a party to a payment ever exchanged money is asked of the
-- payments between them, either way: found by index, not by reading every payment a
-- party made. Built concurrently, outside a transaction, so payments go on meanwhile;
-- only an index is added, so the release before it runs against it unchanged.
CREATE INDEX CONCURRENTLY IF NOT EXISTS payments_between_idx
    ON payments (user_id, payee_user_id) WHERE payee_user_id IS NOT NULL;
