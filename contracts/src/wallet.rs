//! What B shows of a wallet (to its owner, and to C with its owner's standing), what C
//! asks of B's internal API to move money (a transfer applied at most once per id, a
//! batch of them, the void that makes an unapplied id unusable), and what B tells
//! everyone (`ledger.entry_posted`, `wallet.*`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::identity::KycStatus;
use crate::money::{Amount, Currency, Money};

/// A wallet as the API shows it; the balance has the currency's decimals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Wallet {
    pub id: Uuid,
    pub user_id: Uuid,
    pub currency: String,
    #[cfg_attr(feature = "openapi", schema(example = "1500.00"))]
    pub balance: String,
    /// `pending`, `active` or `frozen`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Wallet {
    /// The balance as an amount.
    pub fn balance(&self) -> Result<Amount, crate::money::MoneyError> {
        Amount::parse(&self.balance)
    }
}

/// A wallet as C sees it before accepting a payment: the wallet and, unless asked
/// without (`?standing=false`: the payee's wallet), its owner's KYC status as A holds it
/// now and what the owner may still send today under their tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InternalWallet {
    #[serde(flatten)]
    pub wallet: Wallet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_kyc_status: Option<KycStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RemainingLimits>,
    /// The wallet asked for as `?counterpart=` (alone, without its owner's standing),
    /// read with this one: absent when not asked, `null` when there is no such user
    /// wallet.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Wallet>, nullable))]
    pub counterpart: Option<Option<Wallet>>,
}

/// A field that is present, even as `null`, is `Some`: `null` says "asked, not found".
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The owner's tier limits as they stand now, across all their wallets, in the
/// reference currency (a payment's value in it is what they are compared with).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RemainingLimits {
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "USD"))]
    pub currency: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub per_transaction: Amount,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub remaining_today: Amount,
}

/// What a transfer is for; decides which sides are user wallets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// User wallet to user wallet.
    Transfer,
    /// System account to a user wallet (money coming in).
    Deposit,
    /// User wallet to the system account (money going out).
    Withdrawal,
    /// Compensates an earlier transfer; either side may be the system account.
    Reversal,
}

impl TransferKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transfer => "transfer",
            Self::Deposit => "deposit",
            Self::Withdrawal => "withdrawal",
            Self::Reversal => "reversal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "transfer" => Some(Self::Transfer),
            "deposit" => Some(Self::Deposit),
            "withdrawal" => Some(Self::Withdrawal),
            "reversal" => Some(Self::Reversal),
            _ => None,
        }
    }
}

/// `POST /internal/transfers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The caller's id for this movement (C uses the payment id): applied at most once.
    pub transfer_id: Uuid,
    pub kind: TransferKind,
    /// Absent for a deposit (the system account pays).
    pub from_wallet_id: Option<Uuid>,
    /// Absent for a withdrawal (the system account receives).
    pub to_wallet_id: Option<Uuid>,
    /// Greater than zero, within the currency's minor units (at most 4 decimals).
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "1500.00",
        pattern = r"^(0*[1-9][0-9]{0,15}(\.[0-9]{1,4}0*)?|0+\.[0-9]{0,3}[1-9]0*)$"))]
    pub amount: Amount,
    #[cfg_attr(feature = "openapi", schema(value_type = Currency, example = "USD"))]
    pub currency: Currency,
}

/// The recorded result of a transfer: B's answer to `POST /internal/transfers`
/// (again for a repeated transfer id), and the data of `ledger.entry_posted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TransferResult {
    pub transfer_id: Uuid,
    pub entry_id: Uuid,
    pub kind: TransferKind,
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub money: Money,
    pub from_wallet_id: Uuid,
    pub to_wallet_id: Uuid,
    pub created_at: DateTime<Utc>,
}

/// The data of `wallet.created` (no `previous_status`) and `wallet.status_changed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletEvent {
    pub wallet_id: Uuid,
    pub user_id: Uuid,
    pub currency: String,
    /// `pending`, `active`, `frozen` or `closed`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<String>,
}

/// Most transfers one `POST /internal/transfers/batch` applies.
pub const BATCH_MAX: usize = 100;

/// `POST /internal/transfers/batch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TransferBatch {
    /// 1 to 100 transfers.
    pub transfers: Vec<TransferRequest>,
}

/// `POST /internal/transfers/{id}/void`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {
    pub reason: String,
}

/// What became of a transfer id that was voided.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VoidOutcome {
    /// It had been applied before the void: here is the result (what `POST
    /// /internal/transfers` answers); nothing was voided.
    Applied { transfer: serde_json::Value },
    /// It was not applied and now never will be.
    Voided,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_request_travels_with_its_amount_as_a_string_and_refuses_unknown_fields() {
        let request = TransferRequest {
            transfer_id: Uuid::nil(),
            kind: TransferKind::Deposit,
            from_wallet_id: None,
            to_wallet_id: Some(Uuid::nil()),
            amount: Amount::parse("12.50").unwrap(),
            currency: Currency::parse("EUR").unwrap(),
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(json["kind"], "deposit");
        assert_eq!(json["amount"], "12.5", "an Amount travels normalized");
        assert_eq!(json["currency"], "EUR");
        assert_eq!(
            serde_json::from_value::<TransferRequest>(json.clone()).unwrap(),
            request
        );
        let mut extra = json;
        extra["memo"] = "x".into();
        assert!(serde_json::from_value::<TransferRequest>(extra).is_err());
    }

    #[test]
    fn a_posted_entry_carries_its_money_flat_with_the_currencys_decimals() {
        let result = TransferResult {
            transfer_id: Uuid::nil(),
            entry_id: Uuid::nil(),
            kind: TransferKind::Transfer,
            money: Money::new(
                Amount::parse("12.5").unwrap(),
                Currency::parse("USD").unwrap(),
            )
            .unwrap(),
            from_wallet_id: Uuid::nil(),
            to_wallet_id: Uuid::nil(),
            created_at: DateTime::UNIX_EPOCH,
        };
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["amount"], "12.50");
        assert_eq!(json["currency"], "USD");
        assert_eq!(
            serde_json::from_value::<TransferResult>(json).unwrap(),
            result
        );
    }

    #[test]
    fn every_kind_reads_back_from_its_text() {
        for k in [
            TransferKind::Transfer,
            TransferKind::Deposit,
            TransferKind::Withdrawal,
            TransferKind::Reversal,
        ] {
            assert_eq!(TransferKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }

    #[test]
    fn a_void_says_whether_it_came_too_late() {
        let voided: VoidOutcome = serde_json::from_str(r#"{"state":"voided"}"#).unwrap();
        assert!(matches!(voided, VoidOutcome::Voided));
        let applied: VoidOutcome =
            serde_json::from_str(r#"{"state":"applied","transfer":{"entry_id":"e"}}"#).unwrap();
        assert!(
            matches!(applied, VoidOutcome::Applied { transfer } if transfer["entry_id"] == "e")
        );
    }
}
