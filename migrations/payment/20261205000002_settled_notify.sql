-- `Prefer: wait`: the API sleeps until a payment it waits for settles, woken by this
-- notification, instead of reading the payment every 50 ms (services/payment/src/waiters.rs).
-- The payload is the payment's id; it is delivered when the settling transaction commits.
CREATE FUNCTION notify_payment_settled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('payment_settled', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER payments_settled AFTER UPDATE OF status ON payments
    FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM OLD.status
          AND NEW.status IN ('COMPLETED', 'FAILED', 'REVERSED'))
    EXECUTE FUNCTION notify_payment_settled();
