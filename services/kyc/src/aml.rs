//! AML monitoring of payments: rules over what E observes of C's events.
//!
//! - `amount_threshold`: every payment C put `ON_HOLD` gets an open alert; a
//!   `compliance` decision on it emits `aml.cleared` (C releases the payment) or
//!   `aml.flagged` (C fails it, no money moves).
//! - `velocity`: more than `max_count` payments, or more than `max_amount` in total, by one
//!   user within `window`.
//! - `structuring`: `structuring_count` or more payments within a day, each just under
//!   the hold threshold (at least 90 % of it), the classic way around a threshold.
//!
//! Velocity and structuring alerts do not hold anything; they raise the user's risk score
//! and wait for review. Every sum is what payments are worth in the reference currency
//! ([`finflow_platform::fx`]), as C's hold threshold is: 9,500 of a currency worth 40
//! times the reference is not "just under" a 10,000 threshold.

use std::time::Duration;

use finflow_contracts::money::MoneyError;
use finflow_contracts::payment::{PaymentEvent, Status};
use finflow_platform::events::consumer::{Handler, HandlerError};
use finflow_platform::events::{Event, QueueSpec, types};
use finflow_platform::fx::Rates;
use finflow_platform::{Amount, ApiError, Currency, Money};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The rule settings; amounts are in the reference currency of `rates`.
#[derive(Debug, Clone)]
pub struct Rules {
    pub rates: Rates,
    pub hold_threshold: Amount,
    pub window: Duration,
    pub max_count: i64,
    pub max_amount: Amount,
    pub structuring_count: i64,
}

/// How long payments just under the hold threshold count toward structuring: a day.
pub const STRUCTURING_WINDOW_SECS: u64 = 24 * 3600;

pub fn payments_queue() -> QueueSpec {
    QueueSpec::new(
        "kyc.payment-monitoring",
        &[types::PAYMENT_REQUESTED, types::PAYMENT_ON_HOLD],
    )
}

/// What E reads of a `payment.*` event ([`PaymentEvent`]).
struct PaymentSeen {
    payment_id: Uuid,
    user_id: Uuid,
    payee_user_id: Option<Uuid>,
    amount: Amount,
    currency: String,
    held: bool,
}

impl PaymentSeen {
    /// Refuses an amount that is not positive: C accepts none, and one forged on the
    /// bus would take the user's totals down and let large sums pass the rules.
    fn of(event: PaymentEvent) -> Result<Self, MoneyError> {
        let amount = Amount::parse(&event.payment.amount)?;
        if !amount.is_positive() {
            return Err(MoneyError::NotPositive);
        }
        Ok(Self {
            payment_id: event.payment_id,
            user_id: event.payment.user_id,
            payee_user_id: event.payee_user_id,
            amount,
            held: event.payment.status == Status::OnHold,
            currency: event.payment.currency,
        })
    }
}

pub struct Monitor {
    pub rules: Rules,
}

/// Raises an open alert of `rule` on `payment`, once per payment and rule.
async fn alert(
    tx: &mut PgConnection,
    user: Uuid,
    payee: Option<Uuid>,
    payment: Uuid,
    rule: &str,
    details: serde_json::Value,
) -> Result<(), sqlx::Error> {
    let raised = sqlx::query(
        "INSERT INTO aml_alerts (id, user_id, payment_id, rule, details, status, payee_user_id) \
         VALUES ($1, $2, $3, $4, $5, 'open', $6) ON CONFLICT (payment_id, rule) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(payment)
    .bind(rule)
    .bind(details)
    .bind(payee)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if raised > 0 {
        metrics::counter!("finflow_aml_alerts_total", "rule" => rule.to_owned()).increment(raised);
    }
    Ok(())
}

/// Raises an alert of a pattern `rule` (velocity, structuring) unless the user already
/// has an open one: a burst is one pattern for a reviewer to decide, not an alert per
/// payment in it (which would also push the risk score to its cap by itself).
async fn pattern_alert(
    tx: &mut PgConnection,
    user: Uuid,
    payee: Option<Uuid>,
    payment: Uuid,
    rule: &str,
    details: serde_json::Value,
) -> Result<(), sqlx::Error> {
    // One transaction per user and rule at a time decides: without this lock, two
    // payments of one burst handled at once would each see no open alert.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("aml:{user}:{rule}"))
        .execute(&mut *tx)
        .await?;
    let open: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM aml_alerts WHERE user_id = $1 AND rule = $2 AND status = 'open')",
    )
    .bind(user)
    .bind(rule)
    .fetch_one(&mut *tx)
    .await?;
    if open {
        // Opened by a payment observed beside this one, which saw none open when it
        // was observed: added to it, as [`OBSERVE`] adds those after.
        sqlx::query(
            "INSERT INTO aml_alert_payments (alert_id, payment_id, reference_value) \
             SELECT a.id, o.payment_id, o.reference_value \
             FROM aml_alerts a, payment_observations o \
             WHERE a.user_id = $1 AND a.rule = $2 AND a.status = 'open' AND o.payment_id = $3 \
             FOR SHARE OF a \
             ON CONFLICT DO NOTHING",
        )
        .bind(user)
        .bind(rule)
        .bind(payment)
        .execute(&mut *tx)
        .await?;
    } else {
        alert(tx, user, payee, payment, rule, details).await?;
    }
    Ok(())
}

/// Observes a payment and reads what the rules need, in one statement (one round trip
/// per event): `$1`..`$5` and `$10` (the payee) the observation, `$6` the velocity
/// window in milliseconds, `$7`..`$8` the structuring band, `$9` whether this payment is
/// in it, `$11` the structuring window in seconds. The selects see the table as it was
/// before the insert, so the row `observed` returns is added to them
/// under the same conditions: the counts are the table's after the insert.
///
/// A rule's window is read only when that rule could raise an alert: not while the user
/// has an open alert of it (the rules raise none then), and the band's day only when
/// this payment is in it (`$9`). The open alerts are read first, once (`open`), and gate
/// the scans as one-time filters: a user paying all day under review costs an index
/// probe per payment, not a scan of their whole window.
///
/// While a pattern alert is open its rule raises no other, so a payment observed for
/// the first time is added to it (`aml_alert_payments`, shown as `since_raised`; for
/// structuring, one in the band): the reviewer decides on them all, not only on the
/// burst that opened it (a decoy of cents, then sums just under the limits). Added as
/// rows under a share lock on the alert: observers do not wait for each other, and a
/// decision committing meanwhile is waited for and its alert, no longer open, left
/// alone. Such a payment is then in no alert, and `open` (read as the statement began)
/// spared it the window's rules; the user's next payment counts it in its window.
const OBSERVE: &str = "\
WITH observed AS ( \
    INSERT INTO payment_observations (payment_id, user_id, amount, currency, reference_value, \
                                      payee_user_id) \
    VALUES ($1, $2, $3, $4, $5, $10) ON CONFLICT DO NOTHING \
    RETURNING reference_value, observed_at \
), since_raised AS ( \
    INSERT INTO aml_alert_payments (alert_id, payment_id, reference_value) \
    SELECT id, $1, $5 FROM aml_alerts \
    WHERE user_id = $2 AND status = 'open' AND EXISTS (SELECT 1 FROM observed) \
        AND (rule = 'velocity' OR (rule = 'structuring' AND $9::boolean)) \
    FOR SHARE \
    ON CONFLICT DO NOTHING \
), open AS MATERIALIZED ( \
    SELECT EXISTS (SELECT 1 FROM aml_alerts \
                   WHERE user_id = $2 AND rule = 'velocity' AND status = 'open') AS velocity, \
           EXISTS (SELECT 1 FROM aml_alerts \
                   WHERE user_id = $2 AND rule = 'structuring' AND status = 'open') AS structuring \
) \
SELECT EXISTS (SELECT 1 FROM observed) AS inserted, \
    velocity.window_count, velocity.window_total, structuring.just_under_count, \
    open.velocity AS velocity_open, open.structuring AS structuring_open \
FROM open, ( \
    SELECT count(*) AS window_count, coalesce(sum(reference_value), 0) AS window_total \
    FROM ( \
        SELECT reference_value FROM payment_observations \
        WHERE NOT (SELECT velocity FROM open) \
            AND user_id = $2 AND observed_at > now() - $6::bigint * interval '1 millisecond' \
        UNION ALL \
        SELECT reference_value FROM observed \
        WHERE observed_at > now() - $6::bigint * interval '1 millisecond' \
    ) AS in_window \
) AS velocity, ( \
    SELECT count(*) AS just_under_count \
    FROM ( \
        SELECT 1 FROM payment_observations \
        WHERE $9::boolean AND NOT (SELECT structuring FROM open) \
            AND user_id = $2 AND observed_at > now() - $11::bigint * interval '1 second' \
            AND reference_value >= $7 AND reference_value <= $8 \
        UNION ALL \
        SELECT 1 FROM observed \
        WHERE $9::boolean AND observed_at > now() - $11::bigint * interval '1 second' \
            AND reference_value >= $7 AND reference_value <= $8 \
    ) AS in_band \
) AS structuring";

/// What [`OBSERVE`] reads.
#[derive(sqlx::FromRow)]
struct Observed {
    /// False for a payment observed before (a redelivery, a released hold).
    inserted: bool,
    /// The user's payments within the velocity window, this one included; this one
    /// alone while a velocity alert is open.
    window_count: i64,
    /// A sum, not an amount: two payments near the largest amount are past it.
    window_total: Decimal,
    /// The user's payments just under the threshold within a day, this one included;
    /// 0 unless this one is just under, this one alone while a structuring alert is
    /// open.
    just_under_count: i64,
    velocity_open: bool,
    structuring_open: bool,
}

impl Monitor {
    /// What a payment is worth in the reference currency. A payment E cannot value (a
    /// currency C accepted under other rates) counts as the largest sum there is: the
    /// rules alert a reviewer rather than let it pass unseen.
    fn value_of(&self, seen: &PaymentSeen) -> Amount {
        let money =
            Currency::parse(&seen.currency).and_then(|currency| Money::new(seen.amount, currency));
        match money.map(|m| self.rules.rates.value(m)) {
            Ok(Ok(value)) => value,
            _ => {
                tracing::warn!(payment_id = %seen.payment_id, currency = %seen.currency,
                    "a payment in a currency without a reference rate counts as the largest sum");
                Amount::MAX
            }
        }
    }
}

/// Takes, until the transaction ends, the lock over observing the payments of `users`,
/// each once, in one order (so two batches never wait on each other in a circle). A
/// statement reads the rows committed as it begins: without the lock, a user's burst
/// split between two of E's replicas was observed by two transactions at once, each
/// counting only its own payments, and neither reached a rule's limit. With it, a
/// payment is observed after its user's payments that others were observing.
async fn hold_observations_of(tx: &mut PgConnection, users: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k) FROM ( \
           SELECT DISTINCT hashtextextended('aml-observe:' || u::text, 0) AS k \
           FROM UNNEST($1::uuid[]) AS u ORDER BY k \
         ) AS keys",
    )
    .bind(users)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What a payment event tells E, or why it is refused for good.
fn seen_in(event: &Event) -> Result<PaymentSeen, HandlerError> {
    let malformed = |e: &dyn std::fmt::Display| {
        HandlerError::Permanent(format!("malformed {}: {e}", event.event_type))
    };
    PaymentSeen::of(event.data_as().map_err(|e| malformed(&e))?).map_err(|e| malformed(&e))
}

impl Handler for Monitor {
    async fn handle(&self, tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        // payment.requested for a released hold carries status PENDING too: observation
        // is keyed by payment id, so it is counted once.
        let seen = seen_in(event)?;
        // Held already when this event is one of a batch ([`Handler::handle_batch`]):
        // a transaction takes a lock it holds again at once.
        hold_observations_of(tx, &[seen.user_id]).await?;
        let value = self.value_of(&seen);
        let window_ms = i64::try_from(self.rules.window.as_millis()).unwrap_or(i64::MAX);
        let floor = percent_of(self.rules.hold_threshold, 90);
        let just_under = value >= floor && value <= self.rules.hold_threshold;
        let observed: Observed = sqlx::query_as(OBSERVE)
            .bind(seen.payment_id)
            .bind(seen.user_id)
            .bind(seen.amount)
            .bind(&seen.currency)
            .bind(value)
            .bind(window_ms)
            .bind(floor)
            .bind(self.rules.hold_threshold)
            .bind(just_under)
            .bind(seen.payee_user_id)
            .bind(STRUCTURING_WINDOW_SECS as i64)
            .fetch_one(&mut *tx)
            .await?;
        if seen.held {
            alert(
                tx,
                seen.user_id,
                seen.payee_user_id,
                seen.payment_id,
                types::AML_HOLD_RULE,
                serde_json::json!({ "amount": seen.amount, "currency": seen.currency, "threshold": self.rules.hold_threshold }),
            )
            .await?;
        }
        if !observed.inserted {
            return Ok(());
        }
        // An open alert seen here, without the lock, is what `pattern_alert`'s locked
        // check would see too, unless a reviewer decides it meanwhile: a race that check
        // has as well (a decision committing just after it). So it only spares the lock;
        // when none is open, `pattern_alert` checks again under it and has the last word.
        let (count, total) = (observed.window_count, observed.window_total);
        if (count > self.rules.max_count || total > self.rules.max_amount.decimal())
            && !observed.velocity_open
        {
            pattern_alert(
                tx,
                seen.user_id,
                seen.payee_user_id,
                seen.payment_id,
                "velocity",
                serde_json::json!({ "count": count, "total": total.normalize().to_string(), "window_seconds": self.rules.window.as_secs() }),
            )
            .await?;
        }
        let near = observed.just_under_count;
        if just_under && near >= self.rules.structuring_count && !observed.structuring_open {
            pattern_alert(
                tx,
                seen.user_id,
                seen.payee_user_id,
                seen.payment_id,
                "structuring",
                serde_json::json!({ "payments_just_under_threshold": near }),
            )
            .await?;
        }
        Ok(())
    }

    /// Each in turn, as [`each_in_turn`] does, once the batch holds the observation
    /// locks of all its users, taken together in one order: each event taking its
    /// user's in turn, two batches with two users in opposite orders would deadlock.
    ///
    /// [`each_in_turn`]: finflow_platform::events::consumer::each_in_turn
    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        events: &[&Event],
    ) -> Result<Vec<Result<(), HandlerError>>, HandlerError> {
        // A malformed event is refused by `handle`, in its turn.
        let users: Vec<Uuid> = events
            .iter()
            .filter_map(|e| seen_in(e).ok())
            .map(|seen| seen.user_id)
            .collect();
        hold_observations_of(tx, &users).await?;
        finflow_platform::events::consumer::each_in_turn(self, tx, events).await
    }
}

/// `percent` % of `amount`, rounded down to storage precision.
fn percent_of(amount: Amount, percent: u32) -> Amount {
    let scaled =
        (amount.decimal() * Decimal::from(percent) / Decimal::from(100)).trunc_with_scale(4);
    Amount::from_decimal(scaled).unwrap_or(amount)
}

/// 0 to 100: ten points per open alert, forty per flagged one.
pub async fn risk_score(pool: &PgPool, user: Uuid) -> Result<i64, ApiError> {
    let (open, flagged): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'open'), count(*) FILTER (WHERE status = 'flagged') \
         FROM aml_alerts WHERE user_id = $1",
    )
    .bind(user)
    .fetch_one(pool)
    .await?;
    Ok((open * 10 + flagged * 40).min(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ninety_percent_of_the_threshold_is_exact() {
        assert_eq!(
            percent_of(Amount::parse("10000").unwrap(), 90),
            Amount::parse("9000").unwrap()
        );
        assert_eq!(
            percent_of(Amount::parse("0.0003").unwrap(), 90),
            Amount::parse("0.0002").unwrap()
        );
    }
}
