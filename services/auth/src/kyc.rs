//! KYC decisions from service E, applied to the user A owns.
//!
//! E decides; A holds the status B checks before it opens a wallet or moves money. A
//! decision arrives by E's call alone, `PUT /internal/users/{id}/kyc` (service `kyc`
//! only): before E answers its client (so a client told "verified" finds B agreeing at
//! once), and again from E's notifier until A has answered (so a decision made while A
//! was down still arrives). `user.kyc_updated` on the bus is not taken: anyone holding
//! the broker's credentials could publish one ([`crate::consumers`]). Each call carries
//! E's decision time, and only a newer decision replaces the stored one.

use axum::extract::State;
use finflow_platform::error::{self, ErrorEnvelope};
use finflow_platform::{ApiError, ApiResult, Identity, Json, Path};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::AppState;

/// The services that may set a user's KYC status: E alone.
const KYC_SERVICE: &[&str] = &["kyc"];

/// A KYC decision as E sends it (also the decision in `user.kyc_updated`).
pub use finflow_contracts::kyc::KycDecision as Decision;

/// What became of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The user now has this status.
    Applied,
    /// A newer decision (or this one) was applied before; nothing changed.
    Superseded,
}

/// How far ahead of A's clock a decision's time counts: one dated later counts as
/// dated this far ahead. Taken as it is, a decision dated years ahead (a broken clock,
/// or a forged event) would outrank every real one until then, a revocation included;
/// refused, a genuine decision from a clock further ahead would be lost.
pub const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// Applies `decision` to `user` unless a newer one is stored. `None`: no such user.
pub async fn apply(
    conn: &mut PgConnection,
    user: Uuid,
    decision: &Decision,
) -> Result<Option<Outcome>, sqlx::Error> {
    let latest = chrono::Utc::now() + CLOCK_SKEW;
    let decided_at = decision.decided_at.map(|at| at.min(latest));
    let updated = sqlx::query(
        "UPDATE users SET kyc_status = $2, kyc_decided_at = COALESCE($3, kyc_decided_at), \
           updated_at = now() \
         WHERE id = $1 AND (kyc_decided_at IS NULL OR kyc_decided_at < $3)",
    )
    .bind(user)
    .bind(decision.kyc_status)
    .bind(decided_at)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated > 0 {
        return Ok(Some(Outcome::Applied));
    }
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
        .bind(user)
        .fetch_one(&mut *conn)
        .await?;
    Ok(exists.then_some(Outcome::Superseded))
}

#[derive(Serialize, ToSchema)]
struct Applied {
    user_id: Uuid,
    outcome: Outcome,
}

/// Sets a user's KYC status as E decided it (service `kyc` only).
#[utoipa::path(put, path = "/internal/users/{id}/kyc", tag = "internal", params(("id" = Uuid, Path)),
    request_body = Decision,
    responses((status = 200, body = Applied),
        (status = 400, body = ErrorEnvelope, description = "no decided_at"),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn set_kyc(
    State(s): State<AppState>,
    who: Identity,
    Path(id): Path<Uuid>,
    Json(decision): Json<Decision>,
) -> ApiResult {
    who.require_service_of(KYC_SERVICE)?;
    if decision.decided_at.is_none() {
        return Err(ApiError::invalid_field(
            "decided_at",
            "a decision sent directly must say when it was made",
        ));
    }
    let mut conn = s.pool.acquire().await?;
    let outcome = apply(&mut conn, id, &decision)
        .await?
        .ok_or_else(|| ApiError::not_found("user not found"))?;
    Ok(error::ok(Applied {
        user_id: id,
        outcome,
    }))
}
