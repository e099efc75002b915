-- no-transaction
-- D forgets, at start and hourly, the text of the last two days' sent mails about
-- access that still hold one (`delivery::Sender::forget_sent_credentials`): this index
-- finds them by type and age instead of scanning every delivery ever made. Built
-- concurrently, outside a transaction, so deliveries go on meanwhile; only an index is
-- added, so the release before it runs against it unchanged.
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_type_created_idx
    ON deliveries (event_type, created_at);
