-- The newest KYC decision of each user that A has not yet answered for. A takes a
-- user's standing from E's authenticated call alone; a decision A did not hear (A down,
-- slow, an answer lost) is told again from here until A answers.
CREATE TABLE auth_notices (
    user_id         UUID        PRIMARY KEY,
    kyc_status      TEXT        NOT NULL CHECK (kyc_status IN ('pending', 'verified', 'rejected')),
    decided_at      TIMESTAMPTZ NOT NULL,
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX auth_notices_due ON auth_notices (next_attempt_at);
