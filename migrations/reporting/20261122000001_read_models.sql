-- Read models of service F, built only from events: F never reads another service's
-- database. Every projection is an upsert that keeps the newest fact (by the event's
-- occurred_at), so duplicates and out-of-order deliveries leave the same result.

CREATE TABLE payments_rm (
    payment_id    UUID          PRIMARY KEY,
    user_id       UUID          NOT NULL,
    kind          TEXT          NOT NULL,
    status        TEXT          NOT NULL,
    amount        NUMERIC(20,4) NOT NULL,
    currency      TEXT          NOT NULL,
    failure_code  TEXT,
    created_at    TIMESTAMPTZ   NOT NULL,
    completed_at  TIMESTAMPTZ,
    last_event_at TIMESTAMPTZ   NOT NULL
);

CREATE INDEX payments_rm_created_idx ON payments_rm (created_at);
CREATE INDEX payments_rm_user_idx ON payments_rm (user_id, created_at DESC);

-- The ledger as B posted it (ledger.entry_posted): what money actually moved.
CREATE TABLE ledger_rm (
    entry_id       UUID          PRIMARY KEY,
    transfer_id    UUID          NOT NULL,
    kind           TEXT          NOT NULL,
    amount         NUMERIC(20,4) NOT NULL,
    currency       TEXT          NOT NULL,
    from_wallet_id UUID          NOT NULL,
    to_wallet_id   UUID          NOT NULL,
    posted_at      TIMESTAMPTZ   NOT NULL
);

CREATE INDEX ledger_rm_posted_idx ON ledger_rm (posted_at);

CREATE TABLE users_rm (
    user_id        UUID        PRIMARY KEY,
    created_at     TIMESTAMPTZ,
    kyc_status     TEXT        NOT NULL DEFAULT 'pending',
    account_tier   TEXT,
    kyc_updated_at TIMESTAMPTZ
);

CREATE TABLE aml_rm (
    event_id    UUID        PRIMARY KEY,
    decision    TEXT        NOT NULL CHECK (decision IN ('flagged', 'cleared')),
    payment_id  UUID,
    user_id     UUID,
    rule        TEXT,
    occurred_at TIMESTAMPTZ NOT NULL
);
