-- Compliance can revoke a verification (documents found forged, a sanctions hit): the
-- verified submission becomes `revoked`, keeping who approved it and recording who
-- revoked it and why.
ALTER TABLE kyc_submissions DROP CONSTRAINT kyc_submissions_status_check;
ALTER TABLE kyc_submissions ADD CONSTRAINT kyc_submissions_status_check
    CHECK (status IN ('pending', 'verified', 'rejected', 'revoked'));
ALTER TABLE kyc_submissions
    ADD COLUMN revoked_by     TEXT,
    ADD COLUMN revoked_reason TEXT,
    ADD COLUMN revoked_at     TIMESTAMPTZ,
    ADD CONSTRAINT kyc_submissions_revocation_complete CHECK (
        (status = 'revoked') = (revoked_by IS NOT NULL AND revoked_reason IS NOT NULL AND revoked_at IS NOT NULL)
    );
