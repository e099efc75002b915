-- Notices for the decisions of the last day. Until this release A and C took E's
-- decisions from the bus; from it they take them from E's calls alone and drain what
-- is queued. A decision made by an E from before this release, or still queued when A
-- or C were upgraded, would otherwise never reach them: a verification A never applied,
-- a revocation lost (the user goes on paying), a held payment never released or failed.
-- Told again, they are harmless: A keeps the newest decision, and C answers a payment
-- no longer held as it is.
INSERT INTO notices (target, subject, body, decided_at, next_attempt_at)
SELECT DISTINCT ON (user_id) 'auth', user_id,
       jsonb_build_object('kyc_status', kyc_status, 'decided_at', decided_at),
       decided_at, now()
FROM (
    -- A revoked submission was verified first, then rejected to A when revoked.
    SELECT user_id, CASE status WHEN 'revoked' THEN 'verified' ELSE status END AS kyc_status,
           decided_at
    FROM kyc_submissions
    WHERE status IN ('verified', 'rejected', 'revoked') AND decided_at IS NOT NULL
    UNION ALL
    SELECT user_id, 'rejected', revoked_at
    FROM kyc_submissions
    WHERE status = 'revoked' AND revoked_at IS NOT NULL
) AS decisions
WHERE decided_at > now() - interval '1 day'
ORDER BY user_id, decided_at DESC
ON CONFLICT DO NOTHING;

INSERT INTO notices (target, subject, body, decided_at, next_attempt_at)
SELECT 'payment', payment_id,
       jsonb_build_object('alert_id', id, 'outcome', status, 'decided_at', decided_at),
       decided_at, now()
FROM aml_alerts
WHERE rule = 'amount_threshold' AND payment_id IS NOT NULL
  AND status IN ('cleared', 'flagged') AND decided_at > now() - interval '1 day'
ON CONFLICT DO NOTHING;
