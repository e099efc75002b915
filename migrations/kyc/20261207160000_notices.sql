-- The newest decision E owes A (a user's KYC decision) or C (the decision on the alert
-- that holds a payment) and that it has not taken yet. A and C take E's decisions from
-- its authenticated calls alone; a decision not taken (the service down, slow, an
-- answer lost) is told again from here until it is.
CREATE TABLE notices (
    target          TEXT        NOT NULL CHECK (target IN ('auth', 'payment')),
    -- The user (auth) or the payment (payment).
    subject         UUID        NOT NULL,
    body            JSONB       NOT NULL,
    decided_at      TIMESTAMPTZ NOT NULL,
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (target, subject)
);

CREATE INDEX notices_due ON notices (next_attempt_at);
