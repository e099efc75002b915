//! The worker: applies `payment.requested` at B exactly once; and how E's decision on a
//! held payment settles it ([`decide_hold`], taken from E's call, never from the bus).
//!
//! Exactly once, end to end: the consumer runner dedupes event ids and ACKs after
//! commit; the handler locks the payment and acts only while it is `PENDING`; B applies
//! the payment id as a transfer id at most once and returns the original result when
//! asked again. So a worker killed after B applied but before C committed simply asks
//! again on redelivery and records the same outcome.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use finflow_contracts::kyc::HoldOutcome;
use finflow_platform::events::consumer::{Handler, HandlerError};
use finflow_platform::events::{Event, QueueSpec, types};
use finflow_platform::{ApiError, ErrorCode};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::model::{Failure, Kind, PaymentRow, Requested, Status};
use crate::settle;
use crate::wallets::Wallets;

/// The work queue.
pub fn requests_queue() -> QueueSpec {
    QueueSpec::new("payment.requests", &[types::PAYMENT_REQUESTED])
}

/// AML decisions from E, drained ([`AmlDecisions`]).
pub fn aml_queue() -> QueueSpec {
    QueueSpec::new(
        "payment.aml-decisions",
        &[types::AML_CLEARED, types::AML_FLAGGED],
    )
}

/// Whether B's refusal is final for this payment (a business answer) or worth retrying.
pub(crate) fn is_final(err: &ApiError) -> bool {
    matches!(
        err.code,
        ErrorCode::ValidationError
            | ErrorCode::InsufficientFunds
            | ErrorCode::WalletNotActive
            | ErrorCode::KycRequired
            | ErrorCode::Forbidden
            | ErrorCode::NotFound
            | ErrorCode::Conflict
    )
}

fn internal(e: &ApiError) -> HandlerError {
    HandlerError::Transient(e.to_string())
}

pub struct PaymentWorker {
    pub wallets: Wallets,
}

impl Handler for PaymentWorker {
    async fn handle(&self, tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        let Requested { payment_id } = event
            .data_as()
            .map_err(|e| HandlerError::Permanent(format!("malformed payment.requested: {e}")))?;
        let Some(row) = settle::lock(tx, payment_id).await? else {
            return Err(HandlerError::Permanent(format!("no payment {payment_id}")));
        };
        if row.status().map_err(|e| internal(&e))? != Status::Pending {
            // Settled already, or held: a duplicate or stale request changes nothing.
            return Ok(());
        }
        let transfer = settle::transfer_for(&row).map_err(|e| internal(&e))?;
        settle_with(tx, &row, self.wallets.transfer(&transfer).await).await
    }

    /// The payments of a batch locked together, their transfers sent to B in one call
    /// (one commit at B, one read of the senders at A), each settled by its own answer.
    fn handle_batch<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [&'a Event],
    ) -> impl Future<Output = Result<Vec<Result<(), HandlerError>>, HandlerError>> + Send + 'a {
        self.apply_all(tx, events)
    }
}

impl PaymentWorker {
    async fn apply_all(
        &self,
        tx: &mut PgConnection,
        events: &[&Event],
    ) -> Result<Vec<Result<(), HandlerError>>, HandlerError> {
        let mut results: Vec<Result<(), HandlerError>> = Vec::with_capacity(events.len());
        let mut wanted = Vec::with_capacity(events.len());
        for event in events {
            match event.data_as::<Requested>() {
                Ok(Requested { payment_id }) => {
                    results.push(Ok(()));
                    wanted.push(Some(payment_id));
                }
                Err(e) => {
                    results.push(Err(HandlerError::Permanent(format!(
                        "malformed payment.requested: {e}"
                    ))));
                    wanted.push(None);
                }
            }
        }
        let mut ids: Vec<Uuid> = wanted.iter().flatten().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        let rows: HashMap<Uuid, PaymentRow> = settle::lock_all(tx, &ids)
            .await?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        // The first event naming a pending payment acts; a duplicate or stale request
        // (settled already, or held) changes nothing.
        let mut acting: Vec<(usize, &PaymentRow)> = Vec::new();
        let mut transfers = Vec::new();
        let mut taken = HashSet::new();
        for (i, id) in wanted.iter().enumerate() {
            let Some(id) = id else { continue };
            let Some(row) = rows.get(id) else {
                results[i] = Err(HandlerError::Permanent(format!("no payment {id}")));
                continue;
            };
            match row
                .status()
                .and_then(|s| Ok((s, settle::transfer_for(row)?)))
            {
                Ok((Status::Pending, transfer)) if taken.insert(*id) => {
                    acting.push((i, row));
                    transfers.push(transfer);
                }
                Ok(_) => {}
                Err(e) => results[i] = Err(internal(&e)),
            }
        }
        if transfers.is_empty() {
            return Ok(results);
        }
        match self.wallets.transfer_all(&transfers).await {
            Ok(outcomes) => {
                // Every settled payment in one update and one insert of events.
                let mut changes = Vec::with_capacity(acting.len());
                for ((i, row), outcome) in acting.into_iter().zip(outcomes) {
                    match settlement(row, outcome) {
                        Ok((to, failure)) => changes.push((row, to, failure)),
                        Err(e) => results[i] = Err(e),
                    }
                }
                settle::transition_all(tx, &changes)
                    .await
                    .map_err(|e| internal(&e))?;
            }
            // Nothing is known of any of them: each is retried alone.
            Err(e) => {
                for (i, _) in acting {
                    results[i] = Err(HandlerError::Transient(format!("wallet service: {e}")));
                }
            }
        }
        Ok(results)
    }
}

/// What B's answer to a payment's transfer makes of it: applied, or refused for good;
/// anything else is retried.
fn settlement(
    row: &PaymentRow,
    answer: Result<serde_json::Value, ApiError>,
) -> Result<(Status, Option<Failure>), HandlerError> {
    match answer {
        Ok(_) => Ok((Status::Completed, None)),
        Err(e) if is_final(&e) => {
            // The payer reads the reason: of the wallet a transfer pays, only that it
            // could not receive (B says whether it is frozen).
            let payee = row.to_wallet_id.filter(|_| {
                row.kind().ok() == Some(Kind::Transfer) && row.payee_user_id != Some(row.user_id)
            });
            let about_payee = e.code == ErrorCode::WalletNotActive
                && payee.is_some_and(|p| {
                    e.details
                        .as_ref()
                        .is_some_and(|d| d["wallet_id"] == p.to_string())
                });
            let e = match payee {
                Some(p) if about_payee => crate::api::cannot_receive(p),
                _ => e,
            };
            Ok((
                Status::Failed,
                Some(Failure {
                    code: e.code.as_str().to_owned(),
                    reason: e.message.clone(),
                }),
            ))
        }
        Err(e) => Err(HandlerError::Transient(format!("wallet service: {e}"))),
    }
}

/// Settles a locked pending payment by B's answer to its transfer ([`settlement`]).
async fn settle_with(
    tx: &mut PgConnection,
    row: &PaymentRow,
    answer: Result<serde_json::Value, ApiError>,
) -> Result<(), HandlerError> {
    let (to, failure) = settlement(row, answer)?;
    settle::transition(tx, row, to, failure)
        .await
        .map_err(|e| internal(&e))?;
    Ok(())
}

/// What the payer is told of a payment an AML review failed.
pub const AML_DECLINED: &str = "declined after a compliance review";

/// Takes `aml.cleared` and `aml.flagged` off their queue and applies nothing. The bus
/// cannot say who published an event (every service connects to it as one broker user):
/// taken at its word, an `aml.cleared` from whoever holds D's or F's credentials would
/// release a held payment before compliance decided. C takes E's decision on a hold
/// from E's authenticated call alone ([`decide_hold`], `PUT /internal/payments/{id}/aml`),
/// which E repeats until C answers; the queue is drained, as releases of E from before
/// still publish to it.
pub struct AmlDecisions;

impl Handler for AmlDecisions {
    async fn handle(&self, _tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        tracing::debug!(event_id = %event.id, event_type = %event.event_type, "ignored: hold decisions come from E's call");
        Ok(())
    }
}

/// E's decision on the alert that holds `row`: `cleared` releases it to the worker,
/// `flagged` fails it. A payment no longer on hold is left as it is (E may tell the
/// same decision again); the payment as it is now.
pub async fn decide_hold(
    tx: &mut PgConnection,
    row: &PaymentRow,
    outcome: HoldOutcome,
) -> Result<PaymentRow, ApiError> {
    let status = row.status()?;
    if status != Status::OnHold {
        if outcome == HoldOutcome::Flagged && status != Status::Failed {
            // Compliance released it at C (`POST .../release`) before E's review found
            // against it: the money may have moved, and someone must look.
            tracing::warn!(payment_id = %row.id, status = status.as_str(), "E flagged a payment already released from its hold");
        }
        return Ok(row.clone());
    }
    let (to, failure) = match outcome {
        HoldOutcome::Cleared => (Status::Pending, None),
        HoldOutcome::Flagged => (
            Status::Failed,
            Some(Failure {
                code: "AML_FLAGGED".to_owned(),
                // The officer's reason stays in E's case: the payer reads this (C's
                // API, D's mail and webhooks), and telling them why a review found
                // against them would tip them off.
                reason: AML_DECLINED.to_owned(),
            }),
        ),
    };
    settle::transition(tx, row, to, failure).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(from: Uuid, to: Uuid) -> PaymentRow {
        let now = chrono::Utc::now();
        PaymentRow {
            id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            request_hash: Vec::new(),
            kind: Kind::Transfer.as_str().to_owned(),
            from_wallet_id: Some(from),
            to_wallet_id: Some(to),
            amount: "10".parse().unwrap(),
            currency: "USD".parse().unwrap(),
            description: None,
            status: Status::Pending.as_str().to_owned(),
            failure_code: None,
            failure_reason: None,
            created_at: now,
            updated_at: now,
            completed_at: None,
            payee_user_id: None,
        }
    }

    fn not_active(wallet: Uuid, status: &str) -> ApiError {
        ApiError::new(
            ErrorCode::WalletNotActive,
            format!("wallet {wallet} is {status}"),
        )
        .with_details(serde_json::json!({ "wallet_id": wallet, "status": status }))
    }

    #[test]
    fn the_payer_reads_that_the_payee_could_not_receive_not_that_it_was_frozen() {
        let (from, to) = (Uuid::now_v7(), Uuid::now_v7());
        let row = transfer(from, to);
        for status in ["frozen", "pending"] {
            let (settled, failure) = settlement(&row, Err(not_active(to, status))).unwrap();
            assert_eq!(settled, Status::Failed);
            let failure = failure.unwrap();
            assert_eq!(failure.code, "WALLET_NOT_ACTIVE");
            assert!(!failure.reason.contains(status), "{}", failure.reason);
            assert_eq!(
                failure.reason,
                format!("wallet {to} cannot receive payments now")
            );
        }
        // Of their own wallets the payer is told all.
        let (_, failure) = settlement(&row, Err(not_active(from, "frozen"))).unwrap();
        assert_eq!(failure.unwrap().reason, format!("wallet {from} is frozen"));
        let own = PaymentRow {
            payee_user_id: Some(row.user_id),
            ..row.clone()
        };
        let (_, failure) = settlement(&own, Err(not_active(to, "frozen"))).unwrap();
        assert_eq!(failure.unwrap().reason, format!("wallet {to} is frozen"));
    }
}
