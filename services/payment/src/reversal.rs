//! Reversing a completed payment takes two operators: one asks, another makes it.
//!
//! A reversal moves the money back with a compensating transfer, and reversing a
//! withdrawal credits the wallet with money that has already left FinFlow: on one
//! operator's word, an insider and a customer could have the same money paid out twice.
//! Neither operator may be a party to the payment ([`api::not_their_own`]).

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use finflow_platform::error::{self, ErrorEnvelope};
use finflow_platform::{ApiError, ApiResult, Identity, Path};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::{self, AppState};
use crate::model::{Payment, PaymentRow, Status, payment_columns_of};
use crate::settle;

/// A reversal one operator asked for, waiting for another's approval.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReversalRequest {
    /// The payment as it is: still `COMPLETED`.
    pub payment: Payment,
    /// The operator who asked; any other operator who is not a party to the payment
    /// approves it with the same `POST .../reverse`.
    pub requested_by: Uuid,
    pub requested_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Asked {
    requested_by: Uuid,
    requested_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Waiting {
    #[sqlx(flatten)]
    payment: PaymentRow,
    #[sqlx(flatten)]
    asked: Asked,
}

impl Asked {
    fn of(self, payment: &PaymentRow) -> Result<ReversalRequest, ApiError> {
        Ok(ReversalRequest {
            payment: payment.view()?,
            requested_by: self.requested_by,
            requested_at: self.requested_at,
        })
    }
}

/// Asks for the reversal of a completed payment, or makes the one another operator asked
/// for (role `ops`; never a payment of the caller's, [`api::not_their_own`]). Made, it
/// is a compensating transfer whose id derives from the payment: a retry cannot reverse
/// twice.
#[utoipa::path(post, path = "/api/v1/payments/{id}/reverse", tag = "payments", params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Payment, description = "another operator had asked for it: reversed"),
        (status = 202, body = ReversalRequest,
            description = "asked for (again, if the caller had already): another operator must make it"),
        (status = 400, body = ErrorEnvelope, description = "the id is not a UUID"),
        (status = 403, body = ErrorEnvelope, description = "not `ops`, or a party to the payment (`details.reason` `own_payment`)"),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope, description = "the payment is not COMPLETED")))]
pub(crate) async fn reverse(
    State(s): State<AppState>,
    who: Identity,
    Path(id): Path<Uuid>,
) -> ApiResult {
    who.require_role("ops")?;
    let me = who.user_id()?;
    let mut tx = s.pool.begin().await?;
    let row = settle::lock(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment not found"))?;
    api::not_their_own(&s.wallets, &who, &row).await?;
    if row.status()? != Status::Completed {
        return Err(ApiError::conflict(format!(
            "only a COMPLETED payment can be reversed; this one is {}",
            row.status
        )));
    }
    // Under the payment's row lock: of two operators asking at once, the second finds
    // the first's request and makes the reversal.
    let approved: Option<Uuid> = sqlx::query_scalar(
        "UPDATE reversal_requests SET approved_by = $2, approved_at = now() \
         WHERE payment_id = $1 AND approved_at IS NULL AND requested_by <> $2 \
         RETURNING requested_by",
    )
    .bind(id)
    .bind(me)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(requested_by) = approved else {
        let asked = ask(&mut tx, id, me).await?;
        tx.commit().await?;
        tracing::info!(payment_id = %id, requested_by = %me, "reversal asked for");
        return Ok(error::with_status(StatusCode::ACCEPTED, asked.of(&row)?));
    };
    s.wallets.transfer(&settle::reversal_for(&row)?).await?;
    let reversed = settle::transition(&mut tx, &row, Status::Reversed, None).await?;
    tx.commit().await?;
    tracing::info!(payment_id = %id, %requested_by, approved_by = %me, "payment reversed");
    Ok(error::ok(reversed.view()?))
}

/// The caller's request to reverse `payment`, recorded now or as they made it before
/// (no one else's is waiting: [`reverse`] would have approved it).
async fn ask(tx: &mut PgConnection, payment: Uuid, me: Uuid) -> Result<Asked, sqlx::Error> {
    // The update on conflict changes nothing; it makes the row come back either way.
    sqlx::query_as(
        "INSERT INTO reversal_requests (payment_id, requested_by) VALUES ($1, $2) \
         ON CONFLICT (payment_id) DO UPDATE SET requested_by = reversal_requests.requested_by \
         RETURNING requested_by, requested_at",
    )
    .bind(payment)
    .bind(me)
    .fetch_one(&mut *tx)
    .await
}

/// The most reversals listed at once; the oldest come first.
const WAITING_LIMIT: i64 = 200;

/// The reversals waiting for a second operator, oldest first, at most 200 (role `ops`).
#[utoipa::path(get, path = "/api/v1/payments/reversals", tag = "payments",
    responses((status = 200, body = Vec<ReversalRequest>),
        (status = 403, body = ErrorEnvelope, description = "requires the role ops")))]
pub(crate) async fn reversals(State(s): State<AppState>, who: Identity) -> ApiResult {
    who.require_role("ops")?;
    let columns = payment_columns_of("p");
    let waiting: Vec<Waiting> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {columns}, r.requested_by, r.requested_at \
         FROM reversal_requests r JOIN payments p ON p.id = r.payment_id \
         WHERE r.approved_at IS NULL AND p.status = 'COMPLETED' \
         ORDER BY r.requested_at, r.payment_id LIMIT $1"
    )))
    .bind(WAITING_LIMIT)
    .fetch_all(&s.pool)
    .await?;
    let requests = waiting
        .into_iter()
        .map(|w| w.asked.of(&w.payment))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(error::ok(requests))
}
