-- A sign-up mail's text holds its verification token, which with the sign-up's
-- password verifies the address. D used to keep that text in `deliveries.body` after
-- the mail was sent, so whoever could read D's database (or a backup of it) could
-- verify a sign-up they made of someone else's address. D now replaces the text once
-- the mail is sent or given up; this does the same for the mails sent before.
--
-- No schema change: the release before this one runs beside it unchanged, and keeps
-- the texts of the mails it sends until it is gone.
UPDATE deliveries
SET body = '(a sign-up mail: its text held a token and is not kept)'
WHERE event_type IN ('user.verification_requested', 'user.registration_repeated')
  AND status IN ('delivered', 'failed');
