//! Events service A consumes: KYC decisions from service E.

use finflow_platform::events::consumer::{Handler, HandlerError};
use finflow_platform::events::{Event, QueueSpec, types};
use finflow_platform::identity::KycStatus;
use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// The queue of KYC decisions.
pub fn kyc_queue() -> QueueSpec {
    QueueSpec::new("auth.kyc-updates", &[types::USER_KYC_UPDATED])
}

#[derive(Deserialize)]
struct KycUpdated {
    user_id: Uuid,
    kyc_status: KycStatus,
}

/// Applies `user.kyc_updated` to the user, so the next token (and B's check against A)
/// carries the new status without a new login.
pub struct KycUpdates;

impl Handler for KycUpdates {
    async fn handle(&self, tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        let update: KycUpdated = event
            .data_as()
            .map_err(|e| HandlerError::Permanent(format!("malformed user.kyc_updated: {e}")))?;
        let updated =
            sqlx::query("UPDATE users SET kyc_status = $2, updated_at = now() WHERE id = $1")
                .bind(update.user_id)
                .bind(update.kyc_status)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if updated == 0 {
            // The user may not be committed yet on a replica race; retries, then dead-letters.
            return Err(HandlerError::Transient(format!(
                "no user {}",
                update.user_id
            )));
        }
        Ok(())
    }
}
