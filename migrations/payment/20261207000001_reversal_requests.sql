-- A reversal takes two operators: one asks (a request here), another approves it. A
-- request is closed once: approved (the payment is REVERSED once B applies the
-- transfer; until B answers the approval stands), refused (B refused the transfer: the
-- payee spent the money; asking again starts over), withdrawn (by the operator who
-- asked, or by one who declines it) or expired (a day without a second operator; the
-- next operator to ask asks anew). Ids are UUIDv7, so they order requests by age. The
-- CHECKs keep one operator from approving their own request, whatever the code says.
CREATE TABLE reversal_requests (
    id UUID PRIMARY KEY,
    payment_id UUID NOT NULL REFERENCES payments (id),
    requested_by UUID NOT NULL,
    requested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    outcome TEXT CHECK (outcome IN ('approved', 'refused', 'withdrawn', 'expired')),
    closed_by UUID,
    closed_at TIMESTAMPTZ,
    CHECK ((outcome IS NULL) = (closed_at IS NULL)),
    CHECK ((outcome IS NULL OR outcome = 'expired') = (closed_by IS NULL)),
    CHECK (outcome NOT IN ('approved', 'refused') OR closed_by <> requested_by)
);

-- At most one request waits per payment; what waits is listed oldest first; the
-- sweeper finds the approvals B has not answered.
CREATE UNIQUE INDEX reversal_requests_one_waiting ON reversal_requests (payment_id)
    WHERE outcome IS NULL;
CREATE INDEX reversal_requests_waiting ON reversal_requests (id) WHERE outcome IS NULL;
CREATE INDEX reversal_requests_approved ON reversal_requests (closed_at)
    WHERE outcome = 'approved';
