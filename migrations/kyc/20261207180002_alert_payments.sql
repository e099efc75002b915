-- The payments observed while a pattern alert (velocity, structuring) was open: its rule
-- raises no other meanwhile, so they are its reviewer's to see (`details.since_raised`).
-- Rows are only added, never updated: observing a payment takes no lock on the alert.
-- A new table (expand only): the release before it neither reads nor writes it.
CREATE TABLE aml_alert_payments (
    alert_id        UUID          NOT NULL REFERENCES aml_alerts (id),
    payment_id      UUID          NOT NULL,
    reference_value NUMERIC(20,4) NOT NULL,
    PRIMARY KEY (alert_id, payment_id)
);
