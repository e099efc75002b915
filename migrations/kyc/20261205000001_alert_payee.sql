-- Who the alerted payment pays (C's `payee_user_id`: the owner of a transfer's
-- destination wallet, the payer of a deposit, nobody for a withdrawal). Four eyes
-- covers both ends of the money: an officer paid by a held transfer must not clear it.
-- Nullable (expand only): alerts raised before C named payees, and withdrawals, have none.
ALTER TABLE aml_alerts ADD COLUMN payee_user_id UUID;
