//! Telling A and C each decision until they have heard it.
//!
//! A holds the KYC standing B checks before money moves; C holds the payments an AML
//! alert keeps on hold. Both take E's decisions from its authenticated calls alone (A's
//! `PUT /internal/users/{id}/kyc`, C's `PUT /internal/payments/{id}/aml`, service `kyc`
//! only): the bus cannot say who published an event (every service connects to it as
//! one broker user), so a `user.kyc_updated` or an `aml.cleared` could be any service's.
//! Each decision is written as a notice in the transaction that makes it; the request
//! tells its service at once, and whatever was not heard (the service down or slow, an
//! answer lost) the [`Notifier`] tells again, backing off, until it is answered. One
//! notice per subject (a user at A, a payment at C), the newest decision: A keeps only
//! the newest, and a held payment is decided once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use finflow_platform::ApiError;
use finflow_platform::client::ServiceClient;
use finflow_platform::service::tick;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long after a decision the notifier first looks at it: the request that made it
/// tells the service itself, at once.
const FIRST_RETRY_SECS: i64 = 5;
/// The longest wait between two attempts for one notice.
const MAX_BACKOFF_SECS: i64 = 300;
/// Notices claimed per round.
const BATCH: i64 = 50;
/// Calls a round makes at once: one slow service holds up that many, not every notice
/// behind it (a revocation for A behind a hanging C).
const AT_ONCE: usize = 8;

/// Whom a notice is for, and what about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A: a user's KYC decision (`KycDecision`).
    Auth,
    /// C: the decision on the alert that holds a payment (`HoldDecision`).
    Payment,
}

impl Target {
    fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Payment => "payment",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "auth" => Some(Self::Auth),
            "payment" => Some(Self::Payment),
            _ => None,
        }
    }

    /// The call that tells it about `subject`.
    fn path(self, subject: Uuid) -> String {
        match self {
            Self::Auth => format!("/internal/users/{subject}/kyc"),
            Self::Payment => format!("/internal/payments/{subject}/aml"),
        }
    }
}

/// E's clients of the services it tells.
#[derive(Clone)]
pub struct Recipients {
    pub auth: ServiceClient,
    pub payment: ServiceClient,
}

impl Recipients {
    fn client(&self, target: Target) -> &ServiceClient {
        match target {
            Target::Auth => &self.auth,
            Target::Payment => &self.payment,
        }
    }

    /// Tells `target` `body` about `subject`; `Ok` once it has taken it (or holds a
    /// newer decision).
    pub async fn tell(
        &self,
        target: Target,
        subject: Uuid,
        body: &(impl Serialize + Sync),
    ) -> Result<(), ApiError> {
        #[derive(Deserialize)]
        struct Taken {}
        self.client(target)
            .put::<_, Taken>(&target.path(subject), body)
            .await
            .map(drop)
    }
}

/// Records `body`, decided at `decided_at`, as the notice to `target` about `subject`,
/// in the caller's transaction, unless a newer one waits already.
pub async fn record(
    tx: &mut PgConnection,
    target: Target,
    subject: Uuid,
    body: &impl Serialize,
    decided_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notices (target, subject, body, decided_at, next_attempt_at) \
         VALUES ($1, $2, $3, $4, now() + $5::bigint * interval '1 second') \
         ON CONFLICT (target, subject) DO UPDATE SET body = EXCLUDED.body, \
           decided_at = EXCLUDED.decided_at, attempts = 0, \
           next_attempt_at = EXCLUDED.next_attempt_at \
         WHERE notices.decided_at < EXCLUDED.decided_at",
    )
    .bind(target.as_str())
    .bind(subject)
    .bind(sqlx::types::Json(body))
    .bind(decided_at)
    .bind(FIRST_RETRY_SECS)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Ends the notice to `target` about `subject`: it took the decision of `decided_at` (a
/// newer notice stays).
pub async fn heard(
    pool: &PgPool,
    target: Target,
    subject: Uuid,
    decided_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM notices WHERE target = $1 AND subject = $2 AND decided_at = $3")
        .bind(target.as_str())
        .bind(subject)
        .bind(decided_at)
        .execute(pool)
        .await?;
    Ok(())
}

/// A notice as [`Notifier::round`] claims it.
#[derive(sqlx::FromRow)]
struct Due {
    target: String,
    subject: Uuid,
    body: Value,
    decided_at: DateTime<Utc>,
}

/// Tells A and C, again and again with backoff, the decisions they have not taken.
pub struct Notifier {
    pub pool: PgPool,
    pub recipients: Recipients,
    /// Between rounds.
    pub interval: Duration,
    /// How long one call may take.
    pub timeout: Duration,
}

impl Notifier {
    pub async fn run(self, stop: CancellationToken) {
        while tick(&stop, self.interval).await {
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "telling E's decisions failed; next round retries");
            }
        }
    }

    /// One round: claims the due notices (each claim also schedules its next attempt,
    /// no sooner than a call can take, so a notifier that dies midway leaves nothing
    /// claimed for long, and two never tell one notice at once) and tells them,
    /// [`AT_ONCE`] at a time; how many were taken.
    pub async fn round(&self) -> Result<usize, sqlx::Error> {
        use futures_util::StreamExt;
        let due: Vec<Due> = sqlx::query_as(
            // The exponent is bounded before the power is cast: 2^63 is out of bigint's
            // range, and one notice tried that often would fail every round's claim.
            "UPDATE notices SET attempts = attempts + 1, \
               next_attempt_at = now() + greatest($3, \
                 least(power(2, least(attempts + 1, 30))::bigint, $2)) * interval '1 second' \
             WHERE (target, subject) IN ( \
               SELECT target, subject FROM notices WHERE next_attempt_at <= now() \
               ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING target, subject, body, decided_at",
        )
        .bind(BATCH)
        .bind(MAX_BACKOFF_SECS)
        .bind(i64::try_from(self.timeout.as_secs()).unwrap_or(MAX_BACKOFF_SECS) + 1)
        .fetch_all(&self.pool)
        .await?;
        let outcomes: Vec<Result<bool, sqlx::Error>> = futures_util::stream::iter(due)
            .map(|notice| self.tell_one(notice))
            .buffer_unordered(AT_ONCE)
            .collect()
            .await;
        let mut taken = 0;
        for outcome in outcomes {
            taken += usize::from(outcome?);
        }
        Ok(taken)
    }

    /// Tells one claimed notice; whether it was taken.
    async fn tell_one(&self, notice: Due) -> Result<bool, sqlx::Error> {
        let Some(target) = Target::parse(&notice.target) else {
            return Ok(false);
        };
        tell_once(
            &self.pool,
            &self.recipients,
            target,
            notice.subject,
            &notice.body,
            notice.decided_at,
            self.timeout,
        )
        .await
    }
}

/// Tells `target` `body` about `subject` within `timeout`, and ends its notice when it
/// is taken; whether it was. A refusal or no answer leaves the notice for the
/// [`Notifier`]'s next attempt.
async fn tell_once(
    pool: &PgPool,
    recipients: &Recipients,
    target: Target,
    subject: Uuid,
    body: &(impl Serialize + Sync),
    decided_at: DateTime<Utc>,
    timeout: Duration,
) -> Result<bool, sqlx::Error> {
    match tokio::time::timeout(timeout, recipients.tell(target, subject, body)).await {
        Ok(Ok(())) => {
            heard(pool, target, subject, decided_at).await?;
            return Ok(true);
        }
        Ok(Err(e)) => {
            tracing::warn!(target = target.as_str(), %subject, error = %e.message, "a decision was not taken; told again later");
        }
        Err(_) => {
            tracing::warn!(target = target.as_str(), %subject, "no answer about a decision in time; told again later");
        }
    }
    Ok(false)
}

/// Tells `target` a committed decision before the client hears it ([`tell_once`]);
/// whatever comes of it, the [`Notifier`] tells it again until it is taken.
pub async fn tell_now(
    pool: &PgPool,
    recipients: &Recipients,
    target: Target,
    subject: Uuid,
    body: &(impl Serialize + Sync),
    decided_at: DateTime<Utc>,
    timeout: Duration,
) {
    let told = tell_once(pool, recipients, target, subject, body, decided_at, timeout).await;
    if let Err(e) = told {
        tracing::warn!(target = target.as_str(), %subject, error = %e, "a decision was taken; its notice stays and tells it again");
    }
}
