//! C's payments as its API shows them and as every `payment.*` event carries them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::{Currency, Money, MoneyError};

/// What a payment does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Transfer,
    Deposit,
    Withdrawal,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transfer => "transfer",
            Self::Deposit => "deposit",
            Self::Withdrawal => "withdrawal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "transfer" => Some(Self::Transfer),
            "deposit" => Some(Self::Deposit),
            "withdrawal" => Some(Self::Withdrawal),
            _ => None,
        }
    }
}

/// The status machine (`docs/architecture.md`, C, payment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pending,
    OnHold,
    Completed,
    Failed,
    Reversed,
}

impl Status {
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::OnHold,
        Self::Completed,
        Self::Failed,
        Self::Reversed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::OnHold => "ON_HOLD",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Reversed => "REVERSED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether `self -> to` is allowed (the database enforces the same table).
    pub fn can_become(self, to: Self) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Pending, Completed | Failed | OnHold)
                | (OnHold, Pending | Failed)
                | (Completed, Reversed)
        )
    }

    /// No worker will touch it again (reversal is an explicit ops action).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Reversed)
    }

    /// How far along its life a payment is: waiting (`PENDING`, `ON_HOLD`), settled
    /// (`COMPLETED`, `FAILED`), reversed. No transition goes back a stage
    /// ([`Status::can_become`]), so of two facts about one payment, one of a later stage
    /// is the newer, whatever the clocks of the replicas that stamped them say.
    pub fn stage(self) -> u8 {
        match self {
            Self::Pending | Self::OnHold => 0,
            Self::Completed | Self::Failed => 1,
            Self::Reversed => 2,
        }
    }
}

/// Why a payment failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Failure {
    /// An error code of the contract (`INSUFFICIENT_FUNDS`, `WALLET_NOT_ACTIVE`, ...).
    pub code: String,
    pub reason: String,
}

/// A payment as the API and the events show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Payment {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: Kind,
    pub status: Status,
    pub from_wallet_id: Option<Uuid>,
    pub to_wallet_id: Option<Uuid>,
    #[cfg_attr(feature = "openapi", schema(example = "1500.00"))]
    pub amount: String,
    pub currency: String,
    pub description: Option<String>,
    pub failure: Option<Failure>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// The transfer at B that applies a payment of this kind.
impl From<Kind> for crate::wallet::TransferKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Transfer => Self::Transfer,
            Kind::Deposit => Self::Deposit,
            Kind::Withdrawal => Self::Withdrawal,
        }
    }
}

/// The data of every `payment.*` event: the payment, its id again as `payment_id`, and
/// whom it pays.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PaymentEvent {
    pub payment_id: Uuid,
    /// Whom it pays, when known: E's four eyes keeps a payee from reviewing it (events
    /// from before C recorded it have none).
    #[serde(default)]
    pub payee_user_id: Option<Uuid>,
    #[serde(flatten)]
    pub payment: Payment,
}

impl PaymentEvent {
    /// The amount and currency, read from their text.
    pub fn money(&self) -> Result<Money, MoneyError> {
        let currency = Currency::parse(&self.payment.currency)?;
        Money::new(crate::money::Amount::parse(&self.payment.amount)?, currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_transition_goes_back_a_stage_and_only_waiting_ones_stay_in_theirs() {
        for from in Status::ALL {
            for to in Status::ALL.into_iter().filter(|to| from.can_become(*to)) {
                assert!(from.stage() <= to.stage(), "{from:?} -> {to:?}");
                assert!(
                    from.stage() < to.stage() || from.stage() == 0,
                    "{from:?} -> {to:?} stays in a stage past waiting"
                );
            }
        }
    }

    #[test]
    fn a_payment_event_carries_the_payment_flat_beside_its_id_and_payee() {
        let id = Uuid::now_v7();
        let event = PaymentEvent {
            payment_id: id,
            payee_user_id: None,
            payment: Payment {
                id,
                user_id: Uuid::nil(),
                kind: Kind::Deposit,
                status: Status::OnHold,
                from_wallet_id: None,
                to_wallet_id: Some(Uuid::nil()),
                amount: "1500.00".into(),
                currency: "USD".into(),
                description: None,
                failure: None,
                created_at: Utc::now(),
                updated_at: Utc::now(),
                completed_at: None,
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["payment_id"], json["id"]);
        assert_eq!(json["status"], "ON_HOLD");
        assert_eq!(json["kind"], "deposit");
        assert!(json["payee_user_id"].is_null());
        assert_eq!(serde_json::from_value::<PaymentEvent>(json).unwrap(), event);
        assert_eq!(event.money().unwrap().to_string(), "1500.00 USD");
    }

    #[test]
    fn only_the_status_machines_moves_are_allowed() {
        use Status::*;
        for from in Status::ALL {
            assert_eq!(Status::parse(from.as_str()), Some(from));
            for to in Status::ALL {
                let allowed = matches!(
                    (from, to),
                    (Pending, Completed | Failed | OnHold)
                        | (OnHold, Pending | Failed)
                        | (Completed, Reversed)
                );
                assert_eq!(from.can_become(to), allowed, "{from:?} -> {to:?}");
            }
        }
        assert!(!Pending.is_terminal() && !OnHold.is_terminal());
    }
}
