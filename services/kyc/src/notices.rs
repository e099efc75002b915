//! Telling A each KYC decision until A has heard it.
//!
//! A holds the standing B checks before money moves, and takes it from E's
//! authenticated call alone (`PUT /internal/users/{id}/kyc`, service `kyc` only): the
//! bus cannot say who published an event (every service connects to it as one broker
//! user), so a `user.kyc_updated` could be any service's. Each decision is written as
//! its user's notice in the transaction that makes it; the request tells A at once
//! (`api::tell_auth`), and whatever A did not hear (A down or slow, an answer lost) the
//! [`Notifier`] tells again, backing off, until A answers. One notice per user, the
//! newest decision: A keeps only the newest.

use std::time::Duration;

use chrono::{DateTime, Utc};
use finflow_contracts::identity::KycStatus;
use finflow_contracts::kyc::KycDecision;
use finflow_platform::ApiError;
use finflow_platform::client::ServiceClient;
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long after a decision the notifier first looks at it: the request that made it
/// tells A itself, at once.
const FIRST_RETRY_SECS: i64 = 5;
/// The longest wait between two attempts for one user.
const MAX_BACKOFF_SECS: i64 = 300;
/// Notices told per round.
const BATCH: i64 = 50;

/// Records `decision` as `user`'s notice in the caller's transaction, unless a newer
/// one waits already.
pub async fn record(
    tx: &mut PgConnection,
    user: Uuid,
    decision: &KycDecision,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO auth_notices (user_id, kyc_status, decided_at, next_attempt_at) \
         VALUES ($1, $2, $3, now() + $4::bigint * interval '1 second') \
         ON CONFLICT (user_id) DO UPDATE SET kyc_status = EXCLUDED.kyc_status, \
           decided_at = EXCLUDED.decided_at, attempts = 0, \
           next_attempt_at = EXCLUDED.next_attempt_at \
         WHERE auth_notices.decided_at < EXCLUDED.decided_at",
    )
    .bind(user)
    .bind(decision.kyc_status.as_str())
    // E dates every decision it makes; an undated one is told as of now.
    .bind(decision.decided_at.unwrap_or_else(Utc::now))
    .bind(FIRST_RETRY_SECS)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Ends `user`'s notice: A answered for the decision of `decided_at` (a newer notice
/// stays).
pub async fn heard(
    pool: &PgPool,
    user: Uuid,
    decided_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM auth_notices WHERE user_id = $1 AND decided_at = $2")
        .bind(user)
        .bind(decided_at)
        .execute(pool)
        .await?;
    Ok(())
}

/// Tells A `decision` about `user`; `Ok` once A has applied it or holds a newer one.
pub async fn tell(
    auth: &ServiceClient,
    user: Uuid,
    decision: &KycDecision,
) -> Result<(), ApiError> {
    #[derive(Deserialize)]
    struct Applied {}
    auth.put::<_, Applied>(&format!("/internal/users/{user}/kyc"), decision)
        .await
        .map(drop)
}

/// A notice as [`Notifier::round`] claims it.
#[derive(sqlx::FromRow)]
struct Due {
    user_id: Uuid,
    kyc_status: String,
    decided_at: DateTime<Utc>,
}

/// Tells A, again and again with backoff, the decisions it has not answered for.
pub struct Notifier {
    pub pool: PgPool,
    pub auth: ServiceClient,
    /// Between rounds.
    pub interval: Duration,
    /// How long one call to A may take.
    pub timeout: Duration,
}

impl Notifier {
    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "telling A its KYC decisions failed; next round retries");
            }
        }
    }

    /// One round: claims the due notices (each claim also schedules its next attempt,
    /// so a notifier that dies midway leaves nothing claimed for long, and two never
    /// tell one notice at once), tells A each; how many A heard.
    pub async fn round(&self) -> Result<usize, sqlx::Error> {
        let due: Vec<Due> = sqlx::query_as(
            "UPDATE auth_notices SET attempts = attempts + 1, \
               next_attempt_at = now() + least(power(2, attempts + 1)::bigint, $2) * interval '1 second' \
             WHERE user_id IN ( \
               SELECT user_id FROM auth_notices WHERE next_attempt_at <= now() \
               ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING user_id, kyc_status, decided_at",
        )
        .bind(BATCH)
        .bind(MAX_BACKOFF_SECS)
        .fetch_all(&self.pool)
        .await?;
        let mut told = 0;
        for notice in due {
            let Some(kyc_status) = KycStatus::parse(&notice.kyc_status) else {
                continue;
            };
            let decision = KycDecision {
                kyc_status,
                decided_at: Some(notice.decided_at),
            };
            match tokio::time::timeout(self.timeout, tell(&self.auth, notice.user_id, &decision))
                .await
            {
                Ok(Ok(())) => {
                    heard(&self.pool, notice.user_id, notice.decided_at).await?;
                    told += 1;
                }
                Ok(Err(e)) => {
                    tracing::warn!(user_id = %notice.user_id, error = %e.message, "A did not take a KYC decision; told again later");
                }
                Err(_) => {
                    tracing::warn!(user_id = %notice.user_id, "A did not answer about a KYC decision in time; told again later");
                }
            }
        }
        Ok(told)
    }
}
