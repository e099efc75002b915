-- AML rules compare what payments are worth in the reference currency (FX_RATES), not
-- their raw amounts in whatever currency. Payments observed before were never valued:
-- their amounts stand in for their values (right for the reference currency).
ALTER TABLE payment_observations ADD COLUMN reference_value NUMERIC(20,4);
UPDATE payment_observations SET reference_value = amount;
ALTER TABLE payment_observations ALTER COLUMN reference_value SET NOT NULL;
