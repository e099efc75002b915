//! The sweeper: payments stuck in `PENDING` are asked for again, then given up on.
//!
//! After `republish_after` without change a payment gets a fresh `payment.requested`
//! (its message may have been dead-lettered or lost with a queue), with the same data
//! as the original: the whole payment, from [`settle::announce`] like every payment
//! event, because the worker is not its only consumer (E and F read the payment).
//! After `fail_after` (counted from acceptance, or from the release of a hold: a long
//! review is not the worker's delay) it is settled for good: B is asked to void the
//! transfer id, which B serializes with any apply of the same id. If B had applied it,
//! the payment is COMPLETED; if not, it can never be applied any more and is FAILED
//! with `TIMED_OUT`. Either way exactly one outcome, and money moved at most once.
//! An approved reversal B has not answered is asked for again the same way: its
//! transfer id derives from the payment, so B applies it at most once.

use std::time::Duration;

use finflow_platform::ApiError;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::model::{Failure, PAYMENT_COLUMNS, PaymentRow, Status};
use crate::settle;
use crate::wallets::{VoidOutcome, Wallets};

#[derive(Clone)]
pub struct Sweeper {
    pub pool: PgPool,
    pub wallets: Wallets,
    pub republish_after: Duration,
    pub fail_after: Duration,
    pub interval: Duration,
}

impl Sweeper {
    pub async fn run(self, stop: CancellationToken) {
        while finflow_platform::service::tick(&stop, self.interval).await {
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "sweep failed; next round retries");
            }
            if let Err(e) = self.resume_reversals().await {
                tracing::warn!(error = %e, "resuming reversals failed; next round retries");
            }
            self.record_status_counts().await;
        }
    }

    /// One round: republish the stale, settle the expired.
    pub async fn sweep(&self) -> Result<(usize, usize), ApiError> {
        let republished = self.republish().await?;
        let mut settled = 0;
        while let Some(id) = self.settle_one_expired().await? {
            tracing::info!(payment_id = %id, "expired payment settled by the sweeper");
            settled += 1;
        }
        Ok((republished, settled))
    }

    /// Approved reversals B has not answered for `republish_after`, driven again
    /// ([`crate::reversal::resume`]); how many were recorded reversed.
    pub async fn resume_reversals(&self) -> Result<usize, ApiError> {
        crate::reversal::resume(&self.pool, &self.wallets, self.republish_after).await
    }

    async fn republish(&self) -> Result<usize, ApiError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<PaymentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE payments SET updated_at = now() WHERE id IN ( \
               SELECT id FROM payments WHERE status = 'PENDING' \
                 AND updated_at < now() - $1::bigint * interval '1 millisecond' \
                 AND COALESCE(pending_since, created_at) >= now() - $2::bigint * interval '1 millisecond' \
               ORDER BY updated_at LIMIT 200 FOR UPDATE SKIP LOCKED) RETURNING {PAYMENT_COLUMNS}"
        )))
        .bind(millis(self.republish_after))
        .bind(millis(self.fail_after))
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            // Still PENDING (the rows are locked): `payment.requested`, as the API sent it.
            settle::announce(&mut tx, row).await?;
        }
        tx.commit().await?;
        if !rows.is_empty() {
            metrics::counter!("finflow_payment_republished_total").increment(rows.len() as u64);
            tracing::info!(count = rows.len(), "republished stale pending payments");
        }
        Ok(rows.len())
    }

    /// Settles one expired payment, holding its row lock across the call to B so no
    /// worker can act on it meanwhile (a worker holding it makes us skip it).
    async fn settle_one_expired(&self) -> Result<Option<Uuid>, ApiError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<PaymentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE status = 'PENDING' \
               AND COALESCE(pending_since, created_at) < now() - $1::bigint * interval '1 millisecond' \
             ORDER BY COALESCE(pending_since, created_at) LIMIT 1 FOR UPDATE SKIP LOCKED"
        )))
        .bind(millis(self.fail_after))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let outcome = self
            .wallets
            .void(row.id, "payment not processed in time")
            .await?;
        match outcome {
            VoidOutcome::Applied { .. } => {
                settle::transition(&mut tx, &row, Status::Completed, None).await?;
            }
            VoidOutcome::Voided => {
                let failure = Failure {
                    code: "TIMED_OUT".to_owned(),
                    reason: format!("not processed within {} s", self.fail_after.as_secs()),
                };
                settle::transition(&mut tx, &row, Status::Failed, Some(failure)).await?;
            }
        }
        tx.commit().await?;
        Ok(Some(row.id))
    }

    async fn record_status_counts(&self) {
        let counts: Result<Vec<(String, i64)>, _> =
            sqlx::query_as("SELECT status, count(*) FROM payments GROUP BY status")
                .fetch_all(&self.pool)
                .await;
        if let Ok(counts) = counts {
            for status in Status::ALL {
                let n = counts
                    .iter()
                    .find(|(s, _)| s == status.as_str())
                    .map_or(0, |(_, n)| *n);
                #[allow(clippy::cast_precision_loss)] // a count of payments, shown as a gauge
                metrics::gauge!("finflow_payments", "status" => status.as_str()).set(n as f64);
            }
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
