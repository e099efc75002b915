//! Status changes: one place that moves a payment and emits its event, in the
//! caller's transaction, so every path (API, worker, sweeper, AML decisions) obeys the
//! same machine and never forgets the event.

use chrono::Utc;
use finflow_contracts::catalog;
use finflow_platform::ApiError;
use finflow_platform::events::{Event, outbox, types};

use sqlx::PgConnection;
use uuid::Uuid;

use crate::model::{Failure, Kind, PAYMENT_COLUMNS, PaymentRow, Status, payment_columns_of};
use finflow_contracts::payment::PaymentEvent;
use finflow_contracts::wallet::{TransferKind, TransferRequest};

/// The event that announces a payment entering `status`.
pub fn event_type(status: Status) -> &'static str {
    match status {
        Status::Pending => types::PAYMENT_REQUESTED,
        Status::OnHold => types::PAYMENT_ON_HOLD,
        Status::Completed => types::PAYMENT_COMPLETED,
        Status::Failed => types::PAYMENT_FAILED,
        Status::Reversed => types::PAYMENT_REVERSED,
    }
}

/// Records `row`'s event for its current status.
pub async fn announce(tx: &mut PgConnection, row: &PaymentRow) -> Result<(), ApiError> {
    outbox::enqueue(tx, &event_of(row)?).await?;
    Ok(())
}

/// The event that announces `row` in its current status.
pub fn event_of(row: &PaymentRow) -> Result<Event, ApiError> {
    let payment = row.view()?;
    Event::new(
        catalog::PAYMENT.name,
        event_type(payment.status),
        &PaymentEvent {
            payment_id: row.id,
            payee_user_id: row.payee_user_id,
            payment,
        },
    )
    .map_err(|e| ApiError::internal(&e))
}

/// Locks a payment row for a status change.
pub async fn lock(tx: &mut PgConnection, id: Uuid) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
}

/// Locks several payment rows for status changes, in id order (two workers never wait
/// on each other's rows in opposite orders).
pub async fn lock_all(tx: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<PaymentRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    )))
    // Planned for these ids each time: a plan cached while the table was small
    // would go on scanning all of it once it has grown (until an analyze replans it).
    .persistent(false)
    .bind(ids)
    .fetch_all(&mut *tx)
    .await
}

/// Moves a locked payment to `to` and records the event; refuses transitions the
/// machine does not have (the database would too).
pub async fn transition(
    tx: &mut PgConnection,
    row: &PaymentRow,
    to: Status,
    failure: Option<Failure>,
) -> Result<PaymentRow, ApiError> {
    let mut moved = transition_all(tx, &[(row, to, failure)]).await?;
    moved
        .pop()
        .ok_or_else(|| ApiError::internal(&"a locked payment vanished"))
}

/// [`transition`] for several locked payments at once: one update and one insert of
/// their events, whatever their number (a worker's batch).
pub async fn transition_all(
    tx: &mut PgConnection,
    changes: &[(&PaymentRow, Status, Option<Failure>)],
) -> Result<Vec<PaymentRow>, ApiError> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let (mut ids, mut statuses, mut codes, mut reasons) = (vec![], vec![], vec![], vec![]);
    for (row, to, failure) in changes {
        let from = row.status()?;
        if !from.can_become(*to) {
            return Err(ApiError::conflict(format!(
                "the payment is {}, it cannot become {}",
                from.as_str(),
                to.as_str()
            )));
        }
        ids.push(row.id);
        statuses.push(to.as_str());
        codes.push(failure.as_ref().map(|f| f.code.clone()));
        reasons.push(failure.as_ref().map(|f| f.reason.clone()));
    }
    let columns = payment_columns_of("p");
    let mut updated: Vec<PaymentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE payments p SET status = c.status, failure_code = c.code, failure_reason = c.reason, \
           updated_at = now(), \
           pending_since = CASE WHEN c.status = 'PENDING' THEN now() ELSE p.pending_since END, \
           completed_at = CASE WHEN c.status IN ('COMPLETED', 'FAILED') THEN now() ELSE p.completed_at END, \
           reversed_at = CASE WHEN c.status = 'REVERSED' THEN now() ELSE p.reversed_at END \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[]) AS c(id, status, code, reason) \
         WHERE p.id = c.id RETURNING {columns}"
    )))
    // Planned for these ids each time: a plan cached while the table was small
    // would go on scanning all of it once it has grown (until an analyze replans it).
    .persistent(false)
    .bind(&ids)
    .bind(&statuses)
    .bind(&codes)
    .bind(&reasons)
    .fetch_all(&mut *tx)
    .await?;
    // In the order asked for, which is the order of their events.
    updated.sort_by_key(|r| ids.iter().position(|id| *id == r.id));
    let events = updated
        .iter()
        .map(event_of)
        .collect::<Result<Vec<_>, _>>()?;
    outbox::enqueue_all(tx, &events).await?;
    for row in &updated {
        let to = row.status()?;
        if matches!(to, Status::Completed | Status::Failed) {
            let latency = (Utc::now() - row.created_at).to_std().unwrap_or_default();
            metrics::histogram!("finflow_payment_accept_to_terminal_seconds", "status" => to.as_str())
                .record(latency.as_secs_f64());
        }
        metrics::counter!("finflow_payment_transitions_total", "to" => to.as_str()).increment(1);
    }
    Ok(updated)
}

/// The transfer at B that applies a payment: the payment id is the transfer id, so B
/// applies it at most once however often the worker asks.
pub fn transfer_for(row: &PaymentRow) -> Result<TransferRequest, ApiError> {
    Ok(TransferRequest {
        transfer_id: row.id,
        kind: row.kind()?.into(),
        from_wallet_id: row.from_wallet_id,
        to_wallet_id: row.to_wallet_id,
        amount: row.amount,
        currency: row.currency,
    })
}

/// The compensating transfer of a completed payment: the sides swapped, a derived id.
pub fn reversal_for(row: &PaymentRow) -> Result<TransferRequest, ApiError> {
    let _kind: Kind = row.kind()?;
    Ok(TransferRequest {
        transfer_id: crate::model::reversal_transfer_id(row.id),
        kind: TransferKind::Reversal,
        from_wallet_id: row.to_wallet_id,
        to_wallet_id: row.from_wallet_id,
        amount: row.amount,
        currency: row.currency,
    })
}
