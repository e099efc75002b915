-- Consumer-side dedupe (DESIGN section 5): a consumer inserts the event id in the same
-- transaction as its state change, so a redelivered message changes nothing.
CREATE TABLE processed_events (
    consumer     TEXT        NOT NULL,
    event_id     UUID        NOT NULL,
    event_type   TEXT        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
