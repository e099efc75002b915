-- The transactional outbox (DESIGN section 5). A producer inserts its event here in the
-- same transaction as the state change; the relay publishes rows in `seq` order with
-- publisher confirms and stamps `published_at`. Rows are never updated otherwise, so
-- blue and green can run side by side against this table.
CREATE TABLE outbox (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     UUID        NOT NULL UNIQUE,
    event_type   TEXT        NOT NULL CHECK (event_type <> ''),
    payload      JSONB       NOT NULL,
    headers      JSONB       NOT NULL DEFAULT '{}'::jsonb,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ,
    attempts     INTEGER     NOT NULL DEFAULT 0,
    last_error   TEXT
);

-- The relay only ever scans what is left to publish.
CREATE INDEX outbox_unpublished_idx ON outbox (seq) WHERE published_at IS NULL;
