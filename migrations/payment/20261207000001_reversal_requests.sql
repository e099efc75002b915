-- A reversal takes two operators: one asks (a row here), another makes it (approved_by).
-- The payment's row lock orders them: of two operators asking at once, the second
-- approves. The CHECK keeps one operator from being both, whatever the code says.
CREATE TABLE reversal_requests (
    payment_id UUID PRIMARY KEY REFERENCES payments (id),
    requested_by UUID NOT NULL,
    requested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    approved_by UUID,
    approved_at TIMESTAMPTZ,
    CHECK (approved_by IS DISTINCT FROM requested_by),
    CHECK ((approved_by IS NULL) = (approved_at IS NULL))
);

-- What waits for a second operator, oldest first.
CREATE INDEX reversal_requests_waiting ON reversal_requests (requested_at, payment_id)
    WHERE approved_at IS NULL;
