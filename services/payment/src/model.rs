//! Payments, their status machine and their events.

use chrono::{DateTime, Utc};
pub use finflow_contracts::payment::{Failure, Kind, Payment, Status};
use finflow_platform::{Amount, ApiError, Currency, Money};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

/// The body of `POST /api/v1/payments/{transfer,deposit,withdrawal}`. The document
/// shows one shape per operation ([`DepositRequest`], [`TransferRequest`],
/// [`WithdrawalRequest`]); [`PaymentRequest::validate`] enforces which fields each takes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    pub from_wallet_id: Option<Uuid>,
    pub to_wallet_id: Option<Uuid>,
    #[schema(value_type = String, example = "1500.00")]
    pub amount: Amount,
    #[schema(value_type = String, example = "USD")]
    pub currency: Currency,
    pub description: Option<String>,
}

/// The body of `POST /api/v1/payments/deposit` (documentation only: the handler reads a
/// [`PaymentRequest`]). Money enters `to_wallet_id`, a wallet of the caller's; a deposit
/// takes no `from_wallet_id` (`null` is accepted as absent).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"to_wallet_id": "0190f0c2-7a4e-7d3c-9b1a-2f6d8e4c5a10", "amount": "1500.00", "currency": "USD"}))]
pub struct DepositRequest {
    pub to_wallet_id: Uuid,
    /// Greater than zero, with at most the currency's minor units of decimals
    /// (2 for USD, 0 for JPY, 3 for BHD) and never more than 4.
    #[schema(value_type = String, example = "1500.00",
        pattern = r"^(0*[1-9][0-9]{0,15}(\.[0-9]{1,4}0*)?|0+\.[0-9]{0,3}[1-9]0*)$")]
    pub amount: String,
    /// The wallet's currency.
    #[schema(value_type = finflow_platform::Currency, example = "USD")]
    pub currency: String,
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

/// The body of `POST /api/v1/payments/transfer` (documentation only: the handler reads
/// a [`PaymentRequest`]). Money leaves `from_wallet_id`, a wallet of the caller's, for
/// `to_wallet_id`, which must be a different wallet.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"from_wallet_id": "0190f0c2-7a4e-7d3c-9b1a-2f6d8e4c5a10", "to_wallet_id": "0190f0c2-9d31-7f02-8c55-61b7a9e0d4f3", "amount": "25.00", "currency": "USD", "description": "rent share"}))]
pub struct TransferRequest {
    pub from_wallet_id: Uuid,
    /// Must differ from `from_wallet_id`.
    pub to_wallet_id: Uuid,
    /// Greater than zero, with at most the currency's minor units of decimals
    /// (2 for USD, 0 for JPY, 3 for BHD) and never more than 4.
    #[schema(value_type = String, example = "25.00",
        pattern = r"^(0*[1-9][0-9]{0,15}(\.[0-9]{1,4}0*)?|0+\.[0-9]{0,3}[1-9]0*)$")]
    pub amount: String,
    /// The currency of both wallets.
    #[schema(value_type = finflow_platform::Currency, example = "USD")]
    pub currency: String,
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

/// The body of `POST /api/v1/payments/withdrawal` (documentation only: the handler
/// reads a [`PaymentRequest`]). Money leaves `from_wallet_id`, a wallet of the caller's;
/// a withdrawal takes no `to_wallet_id` (`null` is accepted as absent).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"from_wallet_id": "0190f0c2-7a4e-7d3c-9b1a-2f6d8e4c5a10", "amount": "100.00", "currency": "USD"}))]
pub struct WithdrawalRequest {
    pub from_wallet_id: Uuid,
    /// Greater than zero, with at most the currency's minor units of decimals
    /// (2 for USD, 0 for JPY, 3 for BHD) and never more than 4.
    #[schema(value_type = String, example = "100.00",
        pattern = r"^(0*[1-9][0-9]{0,15}(\.[0-9]{1,4}0*)?|0+\.[0-9]{0,3}[1-9]0*)$")]
    pub amount: String,
    /// The wallet's currency.
    #[schema(value_type = finflow_platform::Currency, example = "USD")]
    pub currency: String,
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

impl PaymentRequest {
    /// The request's fingerprint for idempotency: the kind and the parsed body, so
    /// formatting differences (`"10.0"` vs `"10.00"`, key order) are the same request.
    pub fn fingerprint(&self, kind: Kind) -> Vec<u8> {
        let canonical = serde_json::json!({
            "kind": kind.as_str(),
            "from": self.from_wallet_id,
            "to": self.to_wallet_id,
            "amount": self.amount.decimal().normalize().to_string(),
            "currency": self.currency.code(),
            "description": self.description,
        });
        Sha256::digest(canonical.to_string().as_bytes()).to_vec()
    }

    /// Checks the shape: which wallets the kind needs, a positive amount in the
    /// currency's minor units, a bounded description.
    pub fn validate(&self, kind: Kind) -> Result<Money, ApiError> {
        let money = Money::positive(self.amount, self.currency)
            .map_err(|e| ApiError::invalid_field("amount", e.to_string()))?;
        let (from, to) = (self.from_wallet_id, self.to_wallet_id);
        match kind {
            Kind::Transfer if from.is_none() => Err(ApiError::invalid_field(
                "from_wallet_id",
                "a transfer needs from_wallet_id",
            )),
            Kind::Transfer if to.is_none() => Err(ApiError::invalid_field(
                "to_wallet_id",
                "a transfer needs to_wallet_id",
            )),
            Kind::Deposit if to.is_none() => Err(ApiError::invalid_field(
                "to_wallet_id",
                "a deposit needs to_wallet_id",
            )),
            Kind::Deposit if from.is_some() => Err(ApiError::invalid_field(
                "from_wallet_id",
                "a deposit takes no from_wallet_id",
            )),
            Kind::Withdrawal if from.is_none() => Err(ApiError::invalid_field(
                "from_wallet_id",
                "a withdrawal needs from_wallet_id",
            )),
            Kind::Withdrawal if to.is_some() => Err(ApiError::invalid_field(
                "to_wallet_id",
                "a withdrawal takes no to_wallet_id",
            )),
            _ if self
                .description
                .as_ref()
                .is_some_and(|d| d.chars().count() > 500) =>
            {
                Err(ApiError::invalid_field(
                    "description",
                    "description is limited to 500 characters",
                ))
            }
            _ => Ok(money),
        }
    }
}

/// A payment row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PaymentRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub request_hash: Vec<u8>,
    pub kind: String,
    pub from_wallet_id: Option<Uuid>,
    pub to_wallet_id: Option<Uuid>,
    pub amount: Amount,
    pub currency: Currency,
    pub description: Option<String>,
    pub status: String,
    pub failure_code: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Whom the payment pays, as B said at accept (none for withdrawals and for
    /// payments accepted before C recorded it).
    pub payee_user_id: Option<Uuid>,
}

pub const PAYMENT_COLUMNS: &str = "id, user_id, request_hash, kind, from_wallet_id, to_wallet_id, amount, currency, \
     description, status, failure_code, failure_reason, created_at, updated_at, completed_at, payee_user_id";

impl PaymentRow {
    pub fn status(&self) -> Result<Status, ApiError> {
        Status::parse(&self.status)
            .ok_or_else(|| ApiError::internal(&format!("unknown status {}", self.status)))
    }

    pub fn kind(&self) -> Result<Kind, ApiError> {
        Kind::parse(&self.kind)
            .ok_or_else(|| ApiError::internal(&format!("unknown kind {}", self.kind)))
    }

    pub fn money(&self) -> Result<Money, ApiError> {
        Money::new(self.amount, self.currency).map_err(|e| ApiError::internal(&e))
    }

    pub fn view(&self) -> Result<Payment, ApiError> {
        Ok(Payment {
            id: self.id,
            user_id: self.user_id,
            kind: self.kind()?,
            status: self.status()?,
            from_wallet_id: self.from_wallet_id,
            to_wallet_id: self.to_wallet_id,
            amount: self.money()?.amount_string(),
            currency: self.currency.code().to_owned(),
            description: self.description.clone(),
            failure: self.failure_code.clone().map(|code| Failure {
                code,
                reason: self.failure_reason.clone().unwrap_or_default(),
            }),
            created_at: self.created_at,
            updated_at: self.updated_at,
            completed_at: self.completed_at,
        })
    }
}

/// What the worker reads of `payment.requested`: only which payment to apply, the
/// `payment_id` of [`finflow_contracts::payment::PaymentEvent`]. The event carries the
/// whole payment (from [`crate::settle::announce`]) whoever publishes it, API or
/// sweeper, because other services (E, F) read the rest; the worker, which reads the
/// payment row itself, decodes no more of it than it uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Requested {
    pub payment_id: Uuid,
}

/// The id of the reversal transfer of a payment: derived, so a retried reversal is the
/// same transfer at B and applies once.
pub fn reversal_transfer_id(payment: Uuid) -> Uuid {
    Uuid::new_v5(&payment, b"finflow.reversal")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(amount: &str) -> PaymentRequest {
        PaymentRequest {
            from_wallet_id: Some(Uuid::nil()),
            to_wallet_id: Some(Uuid::from_u128(1)),
            amount: Amount::parse(amount).unwrap(),
            currency: Currency::parse("USD").unwrap(),
            description: None,
        }
    }

    #[test]
    fn the_status_machine_allows_only_the_contract_transitions() {
        use Status::*;
        let allowed: Vec<(Status, Status)> = Status::ALL
            .into_iter()
            .flat_map(|a| Status::ALL.into_iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.can_become(*b))
            .collect();
        assert_eq!(
            allowed,
            [
                (Pending, OnHold),
                (Pending, Completed),
                (Pending, Failed),
                (OnHold, Pending),
                (OnHold, Failed),
                (Completed, Reversed)
            ]
        );
    }

    #[test]
    fn the_same_payment_written_differently_has_the_same_fingerprint() {
        let a = req("10.0");
        let b = req("10.00");
        assert_eq!(a.fingerprint(Kind::Transfer), b.fingerprint(Kind::Transfer));
        assert_ne!(
            a.fingerprint(Kind::Transfer),
            req("10.01").fingerprint(Kind::Transfer)
        );
        assert_ne!(a.fingerprint(Kind::Transfer), a.fingerprint(Kind::Deposit));
    }

    #[test]
    fn each_kind_needs_its_wallets() {
        assert!(req("1").validate(Kind::Transfer).is_ok());
        assert!(
            req("1").validate(Kind::Deposit).is_err(),
            "a deposit has no source"
        );
        assert!(req("0").validate(Kind::Transfer).is_err());
        assert!(req("1.001").validate(Kind::Transfer).is_err());
        // A transfer to its own source is refused once the wallets are known
        // (`api::precheck`): a wallet that is not the caller's is 404 first.
        let mut same = req("1");
        same.to_wallet_id = same.from_wallet_id;
        assert!(same.validate(Kind::Transfer).is_ok());
    }

    #[test]
    fn a_reversal_id_is_stable_and_distinct_from_the_payment() {
        let p = Uuid::new_v4();
        assert_eq!(reversal_transfer_id(p), reversal_transfer_id(p));
        assert_ne!(reversal_transfer_id(p), p);
    }

    proptest! {
        #[test]
        fn fingerprints_differ_when_amounts_differ(a in 1_u64..1_000_000, b in 1_u64..1_000_000) {
            prop_assume!(a != b);
            let x = req(&format!("{}.{:02}", a / 100, a % 100));
            let y = req(&format!("{}.{:02}", b / 100, b % 100));
            prop_assert_ne!(x.fingerprint(Kind::Transfer), y.fingerprint(Kind::Transfer));
        }
    }
}
