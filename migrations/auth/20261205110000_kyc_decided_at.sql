-- When E decided the user's current KYC status. E's decision reaches A twice (E's call
-- as it answers its client, and the `user.kyc_updated` event); whichever comes second,
-- and any older decision arriving late, must not overwrite a newer one.
ALTER TABLE users ADD COLUMN kyc_decided_at TIMESTAMPTZ;
