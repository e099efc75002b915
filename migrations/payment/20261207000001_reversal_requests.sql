-- A reversal takes two operators: one asks (a request here), another approves it. A
-- request is closed once: approved (the payment is REVERSED in the same transaction),
-- withdrawn (by the operator who asked, or by one who declines it) or expired (a day
-- without a second operator; the next operator to ask asks anew). Ids are UUIDv7, so
-- they order requests by age. The CHECKs keep one operator from approving their own
-- request, whatever the code says.
CREATE TABLE reversal_requests (
    id UUID PRIMARY KEY,
    payment_id UUID NOT NULL REFERENCES payments (id),
    requested_by UUID NOT NULL,
    requested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    outcome TEXT CHECK (outcome IN ('approved', 'withdrawn', 'expired')),
    closed_by UUID,
    closed_at TIMESTAMPTZ,
    CHECK ((outcome IS NULL) = (closed_at IS NULL)),
    CHECK (outcome IS NOT NULL OR closed_by IS NULL),
    CHECK (outcome IS DISTINCT FROM 'approved' OR (closed_by IS NOT NULL AND closed_by <> requested_by)),
    CHECK (outcome IS DISTINCT FROM 'withdrawn' OR closed_by IS NOT NULL)
);

-- At most one request waits per payment; what waits is listed oldest first.
CREATE UNIQUE INDEX reversal_requests_one_waiting ON reversal_requests (payment_id)
    WHERE outcome IS NULL;
CREATE INDEX reversal_requests_waiting ON reversal_requests (id) WHERE outcome IS NULL;
