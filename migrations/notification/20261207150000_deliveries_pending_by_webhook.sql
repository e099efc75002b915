-- no-transaction
-- A webhook with MAX_PENDING_PER_WEBHOOK deliveries pending is sent no more until they
-- drain (`consumer::NOTIFY`): this index counts them for each event instead of a scan.
-- Built concurrently, outside a transaction, so deliveries go on meanwhile; only an
-- index is added, so the release before it runs against it unchanged.
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_pending_by_webhook
    ON deliveries (webhook_id) WHERE status = 'pending';
