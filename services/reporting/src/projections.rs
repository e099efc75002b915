//! Projections: each event type folded into the read models.
//!
//! Every projection is idempotent and order-tolerant on its own (not only thanks to the
//! consumer's dedupe): rows are upserted and a row only takes a fact newer than the one
//! it holds (`occurred_at`), so replaying every event, twice, in any order, converges to
//! the same tables.

use chrono::{DateTime, Utc};
use finflow_platform::Amount;
use finflow_platform::events::consumer::{Handler, HandlerError};
use finflow_platform::events::{Event, QueueSpec, types};
use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// `ledger.entry_posted`, emitted by B for every journal entry.
pub const LEDGER_ENTRY_POSTED: &str = "ledger.entry_posted";

/// One queue for everything F reads.
pub fn queue() -> QueueSpec {
    QueueSpec::new(
        "reporting.events",
        &[
            types::USER_CREATED,
            types::USER_KYC_UPDATED,
            types::WALLET_CREATED,
            types::WALLET_STATUS_CHANGED,
            types::PAYMENT_REQUESTED,
            types::PAYMENT_ON_HOLD,
            types::PAYMENT_COMPLETED,
            types::PAYMENT_FAILED,
            types::PAYMENT_REVERSED,
            types::AML_FLAGGED,
            types::AML_CLEARED,
            LEDGER_ENTRY_POSTED,
        ],
    )
}

fn malformed(event: &Event, e: &dyn std::fmt::Display) -> HandlerError {
    HandlerError::Permanent(format!("malformed {}: {e}", event.event_type))
}

#[derive(Deserialize)]
struct PaymentFact {
    payment_id: Uuid,
    user_id: Uuid,
    kind: String,
    status: String,
    amount: Amount,
    currency: String,
    created_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    failure: Option<Failure>,
    /// Absent for a deposit's source and a withdrawal's destination (B's system account).
    from_wallet_id: Option<Uuid>,
    to_wallet_id: Option<Uuid>,
}

/// A `payment.requested` that names only the payment: what C's sweeper published before
/// it re-published the whole payment. Such events may still sit in queues; they carry no
/// fact (the payment's own events do), so they change nothing here.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BarePaymentRequest {
    payment_id: Uuid,
}

/// `wallet.created` and `wallet.status_changed` (B): the wallet and its status now.
#[derive(Deserialize)]
struct WalletFact {
    wallet_id: Uuid,
    user_id: Uuid,
    currency: String,
    status: String,
}

#[derive(Deserialize)]
struct Failure {
    code: String,
}

#[derive(Deserialize)]
struct LedgerFact {
    transfer_id: Uuid,
    entry_id: Uuid,
    kind: String,
    amount: Amount,
    currency: String,
    from_wallet_id: Uuid,
    to_wallet_id: Uuid,
    created_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct UserFact {
    user_id: Uuid,
    kyc_status: Option<String>,
    account_tier: Option<String>,
}

#[derive(Deserialize)]
struct AmlFact {
    payment_id: Option<Uuid>,
    user_id: Option<Uuid>,
    rule: Option<String>,
}

/// Folds one event into the read models (in the caller's transaction).
pub async fn project(tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
    match event.event_type.as_str() {
        t if t.starts_with("payment.") => {
            let p: PaymentFact = match event.data_as() {
                Ok(p) => p,
                Err(e) => {
                    if t == types::PAYMENT_REQUESTED
                        && let Ok(bare) = event.data_as::<BarePaymentRequest>()
                    {
                        tracing::debug!(payment_id = %bare.payment_id, event_id = %event.id,
                            "a payment.requested without the payment carries no fact; skipped");
                        return Ok(());
                    }
                    return Err(malformed(event, &e));
                }
            };
            // A fact no newer than the one held (a duplicate, a late or re-published
            // event) changes nothing.
            sqlx::query(
                "INSERT INTO payments_rm (payment_id, user_id, kind, status, amount, currency, failure_code, \
                   created_at, completed_at, last_event_at, from_wallet_id, to_wallet_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (payment_id) DO UPDATE SET status = EXCLUDED.status, \
                   failure_code = EXCLUDED.failure_code, completed_at = EXCLUDED.completed_at, \
                   last_event_at = EXCLUDED.last_event_at, \
                   from_wallet_id = coalesce(payments_rm.from_wallet_id, EXCLUDED.from_wallet_id), \
                   to_wallet_id = coalesce(payments_rm.to_wallet_id, EXCLUDED.to_wallet_id) \
                 WHERE payments_rm.last_event_at < EXCLUDED.last_event_at",
            )
            .bind(p.payment_id)
            .bind(p.user_id)
            .bind(&p.kind)
            .bind(&p.status)
            .bind(p.amount)
            .bind(&p.currency)
            .bind(p.failure.map(|f| f.code))
            .bind(p.created_at)
            .bind(p.completed_at)
            .bind(event.occurred_at)
            .bind(p.from_wallet_id)
            .bind(p.to_wallet_id)
            .execute(&mut *tx)
            .await?;
        }
        types::WALLET_CREATED | types::WALLET_STATUS_CHANGED => {
            let w: WalletFact = event.data_as().map_err(|e| malformed(event, &e))?;
            // Only creation knows when the wallet was created; a status change may have
            // arrived first. The status is the newest fact's (updated_at is its time).
            let created_at =
                (event.event_type == types::WALLET_CREATED).then_some(event.occurred_at);
            sqlx::query(
                "INSERT INTO wallets_rm (wallet_id, user_id, currency, status, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (wallet_id) DO UPDATE SET \
                   created_at = coalesce(EXCLUDED.created_at, wallets_rm.created_at), \
                   status = CASE WHEN wallets_rm.updated_at < EXCLUDED.updated_at \
                     THEN EXCLUDED.status ELSE wallets_rm.status END, \
                   updated_at = greatest(wallets_rm.updated_at, EXCLUDED.updated_at) \
                 WHERE wallets_rm.updated_at < EXCLUDED.updated_at \
                   OR (wallets_rm.created_at IS NULL AND EXCLUDED.created_at IS NOT NULL)",
            )
            .bind(w.wallet_id)
            .bind(w.user_id)
            .bind(&w.currency)
            .bind(&w.status)
            .bind(created_at)
            .bind(event.occurred_at)
            .execute(&mut *tx)
            .await?;
        }
        LEDGER_ENTRY_POSTED => {
            let l: LedgerFact = event.data_as().map_err(|e| malformed(event, &e))?;
            sqlx::query(
                "INSERT INTO ledger_rm (entry_id, transfer_id, kind, amount, currency, from_wallet_id, to_wallet_id, posted_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (entry_id) DO NOTHING",
            )
            .bind(l.entry_id)
            .bind(l.transfer_id)
            .bind(&l.kind)
            .bind(l.amount)
            .bind(&l.currency)
            .bind(l.from_wallet_id)
            .bind(l.to_wallet_id)
            .bind(l.created_at)
            .execute(&mut *tx)
            .await?;
        }
        types::USER_CREATED => {
            let u: UserFact = event.data_as().map_err(|e| malformed(event, &e))?;
            // A KYC decision may have arrived first: keep it, fill in what creation knows.
            sqlx::query(
                "INSERT INTO users_rm (user_id, created_at, account_tier) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO UPDATE SET created_at = EXCLUDED.created_at, \
                   account_tier = coalesce(users_rm.account_tier, EXCLUDED.account_tier)",
            )
            .bind(u.user_id)
            .bind(event.occurred_at)
            .bind(u.account_tier)
            .execute(&mut *tx)
            .await?;
        }
        types::USER_KYC_UPDATED => {
            let u: UserFact = event.data_as().map_err(|e| malformed(event, &e))?;
            let status = u
                .kyc_status
                .ok_or_else(|| malformed(event, &"no kyc_status"))?;
            sqlx::query(
                "INSERT INTO users_rm (user_id, kyc_status, kyc_updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO UPDATE SET kyc_status = EXCLUDED.kyc_status, \
                   kyc_updated_at = EXCLUDED.kyc_updated_at \
                 WHERE users_rm.kyc_updated_at IS NULL OR users_rm.kyc_updated_at < EXCLUDED.kyc_updated_at",
            )
            .bind(u.user_id)
            .bind(status)
            .bind(event.occurred_at)
            .execute(&mut *tx)
            .await?;
        }
        types::AML_FLAGGED | types::AML_CLEARED => {
            let a: AmlFact = event.data_as().map_err(|e| malformed(event, &e))?;
            let decision = if event.event_type == types::AML_FLAGGED {
                "flagged"
            } else {
                "cleared"
            };
            sqlx::query(
                "INSERT INTO aml_rm (event_id, decision, payment_id, user_id, rule, occurred_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(event.id)
            .bind(decision)
            .bind(a.payment_id)
            .bind(a.user_id)
            .bind(a.rule)
            .bind(event.occurred_at)
            .execute(&mut *tx)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

pub struct Projector;

impl Handler for Projector {
    async fn handle(&self, tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        project(tx, event).await
    }
}
