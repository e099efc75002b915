-- A sender claims a delivery for a lease instead of holding its row locked while it
-- talks to an SMTP server or a webhook: the claim says whose outcome counts, so a
-- sender whose lease ran out (it hung, or died) cannot overwrite a newer attempt.
ALTER TABLE deliveries ADD COLUMN claim UUID;
