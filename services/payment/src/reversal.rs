//! Reversing a completed payment takes two operators: one asks, another makes it.
//!
//! A reversal moves the money back with a compensating transfer, and reversing a
//! withdrawal credits the wallet with money that has already left FinFlow: on one
//! operator's word, an insider and a customer could have the same money paid out twice.
//! Neither operator may be a party to the payment or have exchanged money with one
//! ([`api::for_another`]). A request
//! waits a day ([`REQUEST_TTL`]) for the second operator; any operator who may decide
//! on it may withdraw it meanwhile (the one who asked, or one who declines it).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use finflow_platform::error::{self, ErrorEnvelope};
use finflow_platform::page;
use finflow_platform::{ApiError, ApiResult, ErrorCode, Identity, Path, Query};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::{self, AppState};
use crate::model::{Payment, PaymentRow, Status, payment_columns_of};
use crate::settle;
use crate::wallets::Wallets;
use crate::worker;

/// How long a request waits for a second operator. After it, the request no longer
/// reverses anything: an approval a day late would act on what the first operator saw
/// a day before. The next operator to ask asks anew.
pub const REQUEST_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How a request was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// By a second operator: the payment is `REVERSED` once B applied the transfer.
    Approved,
    /// B refused the transfer (the payee spent the money): asking again starts over.
    Refused,
    /// By an operator: the one who asked, or one who declined it.
    Withdrawn,
    /// Nobody approved it within a day.
    Expired,
}

/// A request to reverse a completed payment.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReversalRequest {
    pub id: Uuid,
    /// The payment as it is (`COMPLETED` while the request waits).
    pub payment: Payment,
    /// The operator who asked; any other operator who is not a party to the payment
    /// makes the reversal with the same `POST .../reverse`.
    pub requested_by: Uuid,
    /// When it was asked for; it waits a day.
    pub requested_at: DateTime<Utc>,
    /// How it was closed; absent while it waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Who closed it (none for an expired one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<DateTime<Utc>>,
}

/// A request's columns: `request_id` is its id, apart from the payment's in a join.
const REQUEST_COLUMNS: &str =
    "id AS request_id, requested_by, requested_at, outcome, closed_by, closed_at";

#[derive(sqlx::FromRow)]
struct RequestRow {
    #[sqlx(rename = "request_id")]
    id: Uuid,
    requested_by: Uuid,
    requested_at: DateTime<Utc>,
    outcome: Option<String>,
    closed_by: Option<Uuid>,
    closed_at: Option<DateTime<Utc>>,
}

impl RequestRow {
    fn of(self, payment: &PaymentRow) -> Result<ReversalRequest, ApiError> {
        let outcome = match self.outcome.as_deref() {
            None => None,
            Some("approved") => Some(Outcome::Approved),
            Some("refused") => Some(Outcome::Refused),
            Some("withdrawn") => Some(Outcome::Withdrawn),
            Some("expired") => Some(Outcome::Expired),
            Some(other) => {
                return Err(ApiError::internal(&format!(
                    "unknown reversal outcome {other}"
                )));
            }
        };
        Ok(ReversalRequest {
            id: self.id,
            payment: payment.view()?,
            requested_by: self.requested_by,
            requested_at: self.requested_at,
            outcome,
            closed_by: self.closed_by,
            closed_at: self.closed_at,
        })
    }
}

/// [`REQUEST_TTL`] in seconds, for SQL (`$n * interval '1 second'`).
fn ttl_secs() -> f64 {
    REQUEST_TTL.as_secs_f64()
}

/// A decision on the reversal of a payment: who decides, in the transaction that
/// holds the payment's row (which orders everything done to its requests).
struct Deciding {
    me: Uuid,
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    /// The payment, `COMPLETED`.
    row: PaymentRow,
    /// The request whose reversal was approved and B has not answered yet.
    in_flight: Option<Uuid>,
}

impl Deciding {
    /// The completed payment `id`, locked, that `who` (an operator) may decide on.
    async fn begin(s: &AppState, who: &Identity, id: Uuid) -> Result<Self, ApiError> {
        who.require_role("ops")?;
        let me = who.user_id()?;
        let mut tx = s.pool.begin().await?;
        let row = settle::lock(&mut tx, id)
            .await?
            .ok_or_else(|| ApiError::not_found("payment not found"))?;
        api::for_another(&s.wallets, &mut *tx, who, &row).await?;
        if row.status()? != Status::Completed {
            return Err(ApiError::conflict(format!(
                "only a COMPLETED payment can be reversed; this one is {}",
                row.status
            )));
        }
        let in_flight = in_flight(&mut tx, id).await?;
        Ok(Self {
            me,
            tx,
            row,
            in_flight,
        })
    }
}

/// Asks for the reversal of a completed payment, or makes the one another operator asked
/// for within the day (role `ops`; never a payment of the caller's,
/// [`api::for_another`]). Made, it is a compensating transfer whose id derives from
/// the payment: a retry cannot reverse twice.
#[utoipa::path(post, path = "/api/v1/payments/{id}/reverse", tag = "payments", params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Payment, description = "another operator had asked for it: reversed"),
        (status = 202, body = ReversalRequest,
            description = "asked for (the same request, if the caller's is waiting already; a new one, if the one waiting was asked for by an operator who has since exchanged money with a party): another operator must make it"),
        (status = 400, body = ErrorEnvelope, description = "the id is not a UUID"),
        (status = 403, body = ErrorEnvelope, description = "not `ops`, a party to the payment (`details.reason` `own_payment`), or one who exchanged money with a party (`party`)"),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope, description = "the payment is not COMPLETED"),
        (status = 503, body = ErrorEnvelope,
            description = "approved, and B did not answer: the approval stands, and the next POST or C's sweeper applies it")))]
pub(crate) async fn reverse(
    State(s): State<AppState>,
    who: Identity,
    Path(id): Path<Uuid>,
) -> ApiResult {
    let Deciding {
        me,
        mut tx,
        row,
        in_flight,
    } = Deciding::begin(&s, &who, id).await?;
    if let Some(request) = in_flight {
        // Approved before, and B's answer never came: drive it again.
        tx.commit().await?;
        let reversed = drive(&s.pool, &s.wallets, &row, request).await?;
        return Ok(error::ok(reversed.view()?));
    }
    withdraw_if_asker_has_an_interest(&s, &mut tx, &row, me).await?;
    let approved: Option<(Uuid, Uuid)> = sqlx::query_as(
        "UPDATE reversal_requests SET outcome = 'approved', closed_by = $2, closed_at = now() \
         WHERE payment_id = $1 AND outcome IS NULL AND requested_by <> $2 \
           AND requested_at > now() - $3 * interval '1 second' \
         RETURNING id, requested_by",
    )
    .bind(id)
    .bind(me)
    .bind(ttl_secs())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((request, requested_by)) = approved else {
        let asked = ask(&mut tx, id, me).await?;
        tx.commit().await?;
        tracing::info!(payment_id = %id, requested_by = %me, "reversal asked for");
        return Ok(error::with_status(StatusCode::ACCEPTED, asked.of(&row)?));
    };
    // The approval commits before B is asked: should B apply the transfer and its answer
    // be lost, the approval stands and the reversal is driven again until B answers.
    tx.commit().await?;
    let reversed = drive(&s.pool, &s.wallets, &row, request).await?;
    tracing::info!(payment_id = %id, %requested_by, approved_by = %me, "payment reversed");
    Ok(error::ok(reversed.view()?))
}

/// Withdraws, in `me`'s name, the request another operator made for `row` if its asker
/// would now be refused it ([`api::staff_for_another`]): one who has exchanged money with
/// a party since asking. The two who make a reversal are two with no interest in it
/// when it is made; `me` then asks anew, and a third operator makes it.
async fn withdraw_if_asker_has_an_interest(
    s: &AppState,
    tx: &mut PgConnection,
    row: &PaymentRow,
    me: Uuid,
) -> Result<(), ApiError> {
    let asker: Option<Uuid> = sqlx::query_scalar(
        "SELECT requested_by FROM reversal_requests \
         WHERE payment_id = $1 AND outcome IS NULL AND requested_by <> $2 \
           AND requested_at > now() - $3 * interval '1 second'",
    )
    .bind(row.id)
    .bind(me)
    .bind(ttl_secs())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(asker) = asker else {
        return Ok(());
    };
    match api::staff_for_another(&s.wallets, &mut *tx, asker, row).await {
        Err(e) if e.code == ErrorCode::Forbidden => {
            sqlx::query(
                "UPDATE reversal_requests SET outcome = 'withdrawn', closed_by = $2, closed_at = now() \
                 WHERE payment_id = $1 AND outcome IS NULL",
            )
            .bind(row.id)
            .bind(me)
            .execute(&mut *tx)
            .await?;
            tracing::warn!(payment_id = %row.id, requested_by = %asker, withdrawn_by = %me,
                "a reversal's asker has an interest in the payment now; withdrawn, asked anew");
            Ok(())
        }
        other => other,
    }
}

/// The request of `payment` whose reversal was approved and B has not answered yet.
async fn in_flight(tx: &mut PgConnection, payment: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM reversal_requests WHERE payment_id = $1 AND outcome = 'approved'",
    )
    .bind(payment)
    .fetch_optional(&mut *tx)
    .await
}

/// Asks B to apply the approved reversal of `payment` (`request`) and records B's
/// answer, under the payment's row lock: applied (now or before: the transfer id derives
/// from the payment, so asking again moves nothing) makes the payment `REVERSED`; a
/// refusal (the payee spent the money) closes the request `refused`, and asking again
/// starts over; any other error leaves it approved, for the next `POST .../reverse` or
/// the sweeper ([`resume`]) to drive again.
async fn drive(
    pool: &PgPool,
    wallets: &Wallets,
    payment: &PaymentRow,
    request: Uuid,
) -> Result<PaymentRow, ApiError> {
    let answer = match wallets.transfer(&settle::reversal_for(payment)?).await {
        Err(unanswered) if !worker::is_final(&unanswered) => return Err(unanswered),
        answer => answer,
    };
    let mut tx = pool.begin().await?;
    let row = settle::lock(&mut tx, payment.id)
        .await?
        .ok_or_else(|| ApiError::internal(&"a payment being reversed vanished"))?;
    // Of two drivers, whichever records first decides the payment; the request says
    // what became of it (a late refusal does not undo a reversal another recorded).
    let (outcome, result) = match answer {
        Ok(_) if row.status()? == Status::Reversed => ("approved", Ok(row)),
        Ok(_) => (
            "approved",
            Ok(settle::transition(&mut tx, &row, Status::Reversed, None).await?),
        ),
        Err(_) if row.status()? == Status::Reversed => ("approved", Ok(row)),
        Err(refused) => ("refused", Err(refused)),
    };
    sqlx::query(
        "UPDATE reversal_requests SET outcome = $2 \
         WHERE id = $1 AND outcome IN ('approved', 'refused')",
    )
    .bind(request)
    .bind(outcome)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    result
}

#[derive(sqlx::FromRow)]
struct Stuck {
    #[sqlx(flatten)]
    payment: PaymentRow,
    request_id: Uuid,
}

/// Drives again the approved reversals B has not answered for `after` (the sweeper's
/// round), oldest first, until B does not answer one; how many it recorded reversed.
pub async fn resume(pool: &PgPool, wallets: &Wallets, after: Duration) -> Result<usize, ApiError> {
    let stuck: Vec<Stuck> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {}, r.id AS request_id FROM reversal_requests r \
         JOIN payments p ON p.id = r.payment_id \
         WHERE r.outcome = 'approved' AND p.status = 'COMPLETED' \
           AND r.closed_at < now() - $1 * interval '1 second' \
         ORDER BY r.closed_at LIMIT 50",
        payment_columns_of("p")
    )))
    .bind(after.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let mut reversed = 0;
    for Stuck {
        payment,
        request_id,
    } in &stuck
    {
        match drive(pool, wallets, payment, *request_id).await {
            Ok(_) => reversed += 1,
            Err(refused) if worker::is_final(&refused) => {
                tracing::info!(payment_id = %payment.id, error = %refused, "reversal refused by B");
            }
            Err(unanswered) => {
                // B is not answering: the next round tries again, from the oldest.
                tracing::warn!(payment_id = %payment.id, error = %unanswered, "reversal still unanswered");
                break;
            }
        }
    }
    Ok(reversed)
}

/// The caller's waiting request to reverse `payment`: the one they made within the day,
/// or a new one. A request no one approved within the day expires here. Another
/// operator's fresh request cannot be waiting: [`reverse`] would have approved it.
async fn ask(tx: &mut PgConnection, payment: Uuid, me: Uuid) -> Result<RequestRow, ApiError> {
    sqlx::query(
        "UPDATE reversal_requests SET outcome = 'expired', closed_at = now() \
         WHERE payment_id = $1 AND outcome IS NULL \
           AND requested_at <= now() - $2 * interval '1 second'",
    )
    .bind(payment)
    .bind(ttl_secs())
    .execute(&mut *tx)
    .await?;
    let waiting: Option<RequestRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {REQUEST_COLUMNS} FROM reversal_requests WHERE payment_id = $1 AND outcome IS NULL"
    )))
    .bind(payment)
    .fetch_optional(&mut *tx)
    .await?;
    match waiting {
        Some(mine) if mine.requested_by == me => Ok(mine),
        Some(_) => Err(ApiError::internal(
            &"another operator's waiting reversal request was not approved",
        )),
        None => Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO reversal_requests (id, payment_id, requested_by) VALUES ($1, $2, $3) \
             RETURNING {REQUEST_COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(payment)
        .bind(me)
        .fetch_one(&mut *tx)
        .await?),
    }
}

/// Withdraws the reversal waiting for a payment (role `ops`, not a party to it): the
/// operator who asked changed their mind, or another declines it. The payment stays
/// `COMPLETED`; any operator may ask again.
#[utoipa::path(delete, path = "/api/v1/payments/{id}/reverse", tag = "payments", params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = ReversalRequest, description = "withdrawn"),
        (status = 400, body = ErrorEnvelope, description = "the id is not a UUID"),
        (status = 403, body = ErrorEnvelope, description = "not `ops`, a party to the payment (`details.reason` `own_payment`), or one who exchanged money with a party (`party`)"),
        (status = 404, body = ErrorEnvelope, description = "no such payment, or no reversal of it is waiting"),
        (status = 409, body = ErrorEnvelope, description = "the payment is not COMPLETED, or its reversal was approved and is being applied")))]
pub(crate) async fn withdraw(
    State(s): State<AppState>,
    who: Identity,
    Path(id): Path<Uuid>,
) -> ApiResult {
    let Deciding {
        me,
        mut tx,
        row,
        in_flight,
    } = Deciding::begin(&s, &who, id).await?;
    if in_flight.is_some() {
        return Err(ApiError::conflict(
            "the reversal was approved and is being applied; it cannot be withdrawn",
        ));
    }
    let withdrawn: Option<RequestRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE reversal_requests SET outcome = 'withdrawn', closed_by = $2, closed_at = now() \
         WHERE payment_id = $1 AND outcome IS NULL RETURNING {REQUEST_COLUMNS}"
    )))
    .bind(id)
    .bind(me)
    .fetch_optional(&mut *tx)
    .await?;
    let withdrawn =
        withdrawn.ok_or_else(|| ApiError::not_found("no reversal of this payment is waiting"))?;
    tx.commit().await?;
    tracing::info!(payment_id = %id, requested_by = %withdrawn.requested_by, withdrawn_by = %me, "reversal withdrawn");
    Ok(error::ok(withdrawn.of(&row)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaitingQuery {
    cursor: Option<Uuid>,
    limit: Option<u16>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ReversalPage {
    items: Vec<ReversalRequest>,
    /// Pass as `cursor` for the next (newer) page; absent on the last page.
    next_cursor: Option<Uuid>,
}

#[derive(sqlx::FromRow)]
struct Waiting {
    #[sqlx(flatten)]
    payment: PaymentRow,
    #[sqlx(flatten)]
    request: RequestRow,
}

/// The reversals waiting for a second operator, oldest first (role `ops`).
#[utoipa::path(get, path = "/api/v1/payments/reversals", tag = "payments",
    params(("cursor" = Option<Uuid>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u16>, Query, minimum = 0, maximum = 65535,
            description = "page size, default 50; any value is clamped to 1..=200")),
    responses((status = 200, body = ReversalPage),
        (status = 400, body = ErrorEnvelope, description = "a bad or unknown query parameter"),
        (status = 403, body = ErrorEnvelope, description = "requires the role ops")))]
pub(crate) async fn reversals(
    State(s): State<AppState>,
    who: Identity,
    Query(q): Query<WaitingQuery>,
) -> ApiResult {
    who.require_role("ops")?;
    let size = page::size(q.limit, 50, 200);
    let waiting: Vec<Waiting> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {}, r.id AS request_id, r.requested_by, r.requested_at, r.outcome, r.closed_by, \
           r.closed_at \
         FROM reversal_requests r JOIN payments p ON p.id = r.payment_id \
         WHERE r.outcome IS NULL AND r.requested_at > now() - $1 * interval '1 second' \
           AND p.status = 'COMPLETED' AND ($2::uuid IS NULL OR r.id > $2) \
         ORDER BY r.id LIMIT $3",
        payment_columns_of("p")
    )))
    .bind(ttl_secs())
    .bind(q.cursor)
    .bind(page::fetch(size))
    .fetch_all(&s.pool)
    .await?;
    let (waiting, next_cursor) = page::split(waiting, size, |w| w.request.id);
    let items = waiting
        .into_iter()
        .map(|w| w.request.of(&w.payment))
        .collect::<Result<_, _>>()?;
    Ok(error::ok(ReversalPage { items, next_cursor }))
}
