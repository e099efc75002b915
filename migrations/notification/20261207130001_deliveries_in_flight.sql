-- no-transaction
-- A webhook is skipped while an attempt at it is in flight (a claimed delivery whose
-- lease runs): this index answers that for each candidate. Built concurrently, as the
-- migration before it, and for the same reasons.
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_in_flight_by_webhook
    ON deliveries (webhook_id) WHERE status = 'pending' AND claim IS NOT NULL;
