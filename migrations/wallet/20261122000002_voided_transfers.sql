-- A transfer id its caller gave up on (C's sweeper, for payments stuck too long). Once
-- voided, the id can never be applied, so the caller may safely report it failed.
CREATE TABLE voided_transfers (
    transfer_id UUID        PRIMARY KEY,
    reason      TEXT        NOT NULL,
    voided_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
