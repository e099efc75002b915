//! Events service A consumes: KYC decisions from service E.

use finflow_platform::events::consumer::{Handler, HandlerError};
use finflow_platform::events::{Event, QueueSpec, types};
use sqlx::PgConnection;

use finflow_contracts::kyc::KycUpdated;

use crate::kyc;

/// The queue of KYC decisions.
pub fn kyc_queue() -> QueueSpec {
    QueueSpec::new("auth.kyc-updates", &[types::USER_KYC_UPDATED])
}

/// Applies `user.kyc_updated` to the user (unless a newer decision is there: see
/// [`kyc`]), so the next token and B's checks carry it without a new login.
pub struct KycUpdates;

impl Handler for KycUpdates {
    async fn handle(&self, tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        let update: KycUpdated = event
            .data_as()
            .map_err(|e| HandlerError::Permanent(format!("malformed user.kyc_updated: {e}")))?;
        if kyc::apply(tx, update.user_id, &update.decision)
            .await?
            .is_none()
        {
            // The user may not be committed yet on a replica race; retries, then dead-letters.
            return Err(HandlerError::Transient(format!(
                "no user {}",
                update.user_id
            )));
        }
        Ok(())
    }
}
