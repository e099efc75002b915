//! The worker: applies `payment.requested` at B exactly once, and applies AML decisions.
//!
//! Exactly once, end to end: the consumer runner dedupes event ids and ACKs after
//! commit; the handler locks the payment and acts only while it is `PENDING`; B applies
//! the payment id as a transfer id at most once and returns the original result when
//! asked again. So a worker killed after B applied but before C committed simply asks
//! again on redelivery and records the same outcome.

use finflow_platform::events::consumer::{Handler, HandlerError};
use finflow_platform::events::{Event, QueueSpec, types};
use finflow_platform::{ApiError, ErrorCode};
use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::model::{Failure, Requested, Status};
use crate::settle;
use crate::wallets::Wallets;

/// The work queue.
pub fn requests_queue() -> QueueSpec {
    QueueSpec::new("payment.requests", &[types::PAYMENT_REQUESTED])
}

/// AML decisions from E.
pub fn aml_queue() -> QueueSpec {
    QueueSpec::new(
        "payment.aml-decisions",
        &[types::AML_CLEARED, types::AML_FLAGGED],
    )
}

/// Whether B's refusal is final for this payment (a business answer) or worth retrying.
fn is_final(err: &ApiError) -> bool {
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
        match self.wallets.transfer(&transfer).await {
            Ok(_) => {
                settle::transition(tx, &row, Status::Completed, None)
                    .await
                    .map_err(|e| internal(&e))?;
            }
            Err(e) if is_final(&e) => {
                let failure = Failure {
                    code: e.code.as_str().to_owned(),
                    reason: e.message.clone(),
                };
                settle::transition(tx, &row, Status::Failed, Some(failure))
                    .await
                    .map_err(|e| internal(&e))?;
            }
            Err(e) => return Err(HandlerError::Transient(format!("wallet service: {e}"))),
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct AmlDecision {
    payment_id: Uuid,
    /// The alert's rule; absent means the holding rule.
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// `aml.cleared` releases a held payment to the worker; `aml.flagged` fails it. Only a
/// decision on the alert that holds the payment ([`types::AML_HOLD_RULE`]) does: a
/// velocity or structuring alert on the same payment is about the user's pattern, and
/// clearing it must not release a payment whose hold is still undecided.
pub struct AmlDecisions;

impl Handler for AmlDecisions {
    async fn handle(&self, tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        let decision: AmlDecision = event
            .data_as()
            .map_err(|e| HandlerError::Permanent(format!("malformed {}: {e}", event.event_type)))?;
        if decision
            .rule
            .as_deref()
            .is_some_and(|rule| rule != types::AML_HOLD_RULE)
        {
            return Ok(());
        }
        let Some(row) = settle::lock(tx, decision.payment_id).await? else {
            return Err(HandlerError::Transient(format!(
                "no payment {} yet",
                decision.payment_id
            )));
        };
        if row.status().map_err(|e| internal(&e))? != Status::OnHold {
            return Ok(());
        }
        let (to, failure) = if event.event_type == types::AML_CLEARED {
            (Status::Pending, None)
        } else {
            let reason = decision
                .reason
                .unwrap_or_else(|| "flagged by AML monitoring".to_owned());
            (
                Status::Failed,
                Some(Failure {
                    code: "AML_FLAGGED".to_owned(),
                    reason,
                }),
            )
        };
        settle::transition(tx, &row, to, failure)
            .await
            .map_err(|e| internal(&e))?;
        Ok(())
    }
}
