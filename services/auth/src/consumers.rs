//! Events service A consumes: none it takes a decision from.

use finflow_platform::events::consumer::{Handler, HandlerError};
use finflow_platform::events::{Event, QueueSpec, types};
use sqlx::PgConnection;

/// The queue of KYC decisions, drained: releases of E from before the notices still
/// publish to it, and an undrained queue grows without end.
pub fn kyc_queue() -> QueueSpec {
    QueueSpec::new("auth.kyc-updates", &[types::USER_KYC_UPDATED])
}

/// Takes `user.kyc_updated` off its queue and applies nothing. The bus cannot say who
/// published an event (every service connects to it as one broker user), so a decision
/// taken from it could be any service's: one holding D's or F's credentials could
/// declare itself verified and move money. A takes KYC decisions from E's authenticated
/// call alone (`PUT /internal/users/{id}/kyc`, service `kyc` only), which E repeats
/// until A answers (`finflow_kyc::notices`).
pub struct KycUpdates;

impl Handler for KycUpdates {
    async fn handle(&self, _tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        tracing::debug!(event_id = %event.id, "user.kyc_updated ignored: decisions come from E's call");
        Ok(())
    }
}
