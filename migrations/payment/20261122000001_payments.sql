-- Payments (service C). One row per accepted request; the unique key on
-- (user_id, idempotency_key) is the ground truth of idempotency when Redis has
-- forgotten, and a trigger allows only the transitions of the status machine.
CREATE TABLE payments (
    id              UUID          PRIMARY KEY,
    user_id         UUID          NOT NULL,
    idempotency_key TEXT          NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash    BYTEA         NOT NULL,
    kind            TEXT          NOT NULL CHECK (kind IN ('transfer', 'deposit', 'withdrawal')),
    from_wallet_id  UUID,
    to_wallet_id    UUID,
    amount          NUMERIC(20,4) NOT NULL CHECK (amount > 0),
    currency        TEXT          NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    description     TEXT          CHECK (length(description) <= 500),
    status          TEXT          NOT NULL
                    CHECK (status IN ('PENDING', 'ON_HOLD', 'COMPLETED', 'FAILED', 'REVERSED')),
    failure_code    TEXT,
    failure_reason  TEXT,
    created_at      TIMESTAMPTZ   NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ   NOT NULL DEFAULT now(),
    completed_at    TIMESTAMPTZ,
    reversed_at     TIMESTAMPTZ,
    CHECK (from_wallet_id IS NOT NULL OR to_wallet_id IS NOT NULL)
);

CREATE UNIQUE INDEX payments_user_idempotency_key ON payments (user_id, idempotency_key);
CREATE INDEX payments_user_created_idx ON payments (user_id, created_at DESC, id DESC);
CREATE INDEX payments_pending_idx ON payments (updated_at) WHERE status = 'PENDING';

-- PENDING -> COMPLETED | FAILED | ON_HOLD; ON_HOLD -> PENDING | FAILED; COMPLETED -> REVERSED.
CREATE FUNCTION payment_transition_allowed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> OLD.status AND NOT (
           (OLD.status = 'PENDING'   AND NEW.status IN ('COMPLETED', 'FAILED', 'ON_HOLD'))
        OR (OLD.status = 'ON_HOLD'   AND NEW.status IN ('PENDING', 'FAILED'))
        OR (OLD.status = 'COMPLETED' AND NEW.status = 'REVERSED')
    ) THEN
        RAISE EXCEPTION 'payment % cannot go from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER payments_transition BEFORE UPDATE OF status ON payments
    FOR EACH ROW EXECUTE FUNCTION payment_transition_allowed();
