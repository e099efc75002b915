-- no-transaction
-- Whether an officer and a party to an alert ever exchanged money is asked of the
-- payments between them, either way: found by index, not by reading every payment a
-- party made. Built concurrently, outside a transaction; only an index is added.
CREATE INDEX CONCURRENTLY IF NOT EXISTS payment_observations_between_idx
    ON payment_observations (user_id, payee_user_id) WHERE payee_user_id IS NOT NULL;
