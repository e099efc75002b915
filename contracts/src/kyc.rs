//! What E decides and tells the others: a user's KYC status (to A by its call; D and F
//! read `user.kyc_updated`) and a compliance decision on an AML alert (to C by its call
//! when the alert holds a payment; F reads `aml.cleared`, `aml.flagged`). A and C take
//! decisions from E's calls alone: anyone on the bus could publish an event.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::identity::KycStatus;

/// A KYC decision: the body of A's `PUT /internal/users/{id}/kyc`, and the decision in
/// `user.kyc_updated`. A applies it only if it is newer than the one it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Decision))]
pub struct KycDecision {
    pub kyc_status: KycStatus,
    /// When E decided. Absent in events from before decisions were dated: those apply
    /// only to a user no dated decision has reached.
    pub decided_at: Option<DateTime<Utc>>,
}

/// The data of `user.kyc_updated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KycUpdated {
    pub user_id: Uuid,
    /// The submission decided on.
    pub submission_id: Uuid,
    #[serde(flatten)]
    pub decision: KycDecision,
}

/// The data of `aml.cleared` and `aml.flagged`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmlDecision {
    pub alert_id: Uuid,
    /// The payment the alert is about; only a decision on the alert that holds it
    /// ([`crate::events::AML_HOLD_RULE`]) releases or fails it.
    pub payment_id: Option<Uuid>,
    pub user_id: Uuid,
    /// The alert's rule: `amount_threshold` (the hold), `velocity`, `structuring`.
    pub rule: String,
    pub reason: String,
}

/// The body of C's `PUT /internal/payments/{id}/aml` (service `kyc` only): E's decision
/// on the alert that holds the payment. `cleared` releases it to the worker, `flagged`
/// fails it; a payment no longer on hold is left as it is (E may tell it again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HoldDecision {
    pub alert_id: Uuid,
    pub outcome: HoldOutcome,
    pub decided_at: DateTime<Utc>,
}

/// What compliance decided about a held payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HoldOutcome {
    Cleared,
    Flagged,
}

impl AmlDecision {
    /// The payment this decision releases or fails: the one its alert holds.
    pub fn held_payment(&self) -> Option<Uuid> {
        self.payment_id
            .filter(|_| self.rule == crate::events::AML_HOLD_RULE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kyc_update_carries_the_decision_flat_beside_the_user() {
        let update = KycUpdated {
            user_id: Uuid::nil(),
            submission_id: Uuid::nil(),
            decision: KycDecision {
                kyc_status: KycStatus::Verified,
                decided_at: None,
            },
        };
        let json = serde_json::to_value(&update).unwrap();
        assert_eq!(json["kyc_status"], "verified");
        assert_eq!(serde_json::from_value::<KycUpdated>(json).unwrap(), update);
    }

    #[test]
    fn only_a_decision_on_the_holding_alert_names_a_held_payment() {
        let decision = |rule: &str, payment_id| AmlDecision {
            alert_id: Uuid::nil(),
            payment_id,
            user_id: Uuid::nil(),
            rule: rule.to_owned(),
            reason: "reviewed".to_owned(),
        };
        let payment = Some(Uuid::now_v7());
        assert_eq!(
            decision("amount_threshold", payment).held_payment(),
            payment
        );
        assert_eq!(decision("velocity", payment).held_payment(), None);
        assert_eq!(decision("amount_threshold", None).held_payment(), None);
    }
}
