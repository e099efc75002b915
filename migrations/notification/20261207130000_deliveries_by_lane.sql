-- no-transaction
-- Mails and webhooks are claimed by senders of their own, each the due deliveries of its
-- channel oldest first: found by this index, not by a scan of every pending delivery.
-- Built concurrently, outside a transaction, so deliveries go on meanwhile; only an
-- index is added, so the release before it runs against it unchanged.
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_due_by_channel
    ON deliveries (channel, next_attempt_at) WHERE status = 'pending';
