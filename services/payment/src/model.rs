//! Payments, their status machine and their events.

use chrono::{DateTime, Utc};
pub use finflow_contracts::payment::{Failure, Kind, Payment, Status};
use finflow_platform::{Amount, ApiError, Currency, Money, openapi};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa::openapi::schema::RefBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{Object, RefOr};
use uuid::Uuid;

/// The body of `POST /api/v1/payments/{transfer,deposit,withdrawal}`. The document
/// shows one shape per operation ([`DepositRequest`], [`TransferRequest`],
/// [`WithdrawalRequest`]); [`PaymentRequest::validate`] enforces which wallets each
/// takes ([`wallets_named`]).
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

/// Which wallets a kind of payment names, `from_wallet_id` then `to_wallet_id`, and
/// whether it needs or refuses each: [`PaymentRequest::validate`] enforces it, and the
/// document's request bodies ([`DepositRequest`], [`TransferRequest`],
/// [`WithdrawalRequest`]) state it.
pub fn wallets_named(kind: Kind) -> [(&'static str, bool); 2] {
    let (from, to) = match kind {
        Kind::Transfer => (true, true),
        Kind::Deposit => (false, true),
        Kind::Withdrawal => (true, false),
    };
    [("from_wallet_id", from), ("to_wallet_id", to)]
}

/// The body of `POST /api/v1/payments/<kind>` as documented (the handler reads a
/// [`PaymentRequest`]): the wallets [`wallets_named`] says, a wallet it refuses only as
/// `null` (read as absent), the amount and currency [`Money::positive`] takes.
fn request_schema(kind: Kind) -> Object {
    let (about, amount, example) = match kind {
        Kind::Deposit => (
            "Money enters `to_wallet_id`, a wallet of the caller's.",
            "1500.00",
            json!({"to_wallet_id": "0190f0c2-7a4e-7d3c-9b1a-2f6d8e4c5a10", "amount": "1500.00", "currency": "USD"}),
        ),
        Kind::Transfer => (
            "Money leaves `from_wallet_id`, a wallet of the caller's, for `to_wallet_id`, \
             which must be a different wallet.",
            "25.00",
            json!({"from_wallet_id": "0190f0c2-7a4e-7d3c-9b1a-2f6d8e4c5a10", "to_wallet_id": "0190f0c2-9d31-7f02-8c55-61b7a9e0d4f3", "amount": "25.00", "currency": "USD", "description": "rent share"}),
        ),
        Kind::Withdrawal => (
            "Money leaves `from_wallet_id`, a wallet of the caller's.",
            "100.00",
            json!({"from_wallet_id": "0190f0c2-7a4e-7d3c-9b1a-2f6d8e4c5a10", "amount": "100.00", "currency": "USD"}),
        ),
    };
    let mut body = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(format!(
            "The body of `POST /api/v1/payments/{}`. {about}",
            kind.as_str()
        )))
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    for (field, needed) in wallets_named(kind) {
        body = if needed {
            let other = (kind == Kind::Transfer && field == "to_wallet_id")
                .then_some("Must differ from `from_wallet_id`.");
            body.property(
                field,
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                    .description(other),
            )
            .required(field)
        } else {
            body.property(
                field,
                ObjectBuilder::new()
                    .schema_type(Type::Null)
                    .description(Some(format!(
                        "A {} takes none: null is read as absent.",
                        kind.as_str()
                    ))),
            )
        };
    }
    body.property(
        "amount",
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "Greater than zero, with at most the currency's minor units of decimals\n\
                 (2 for USD, 0 for JPY, 3 for BHD) and never more than 4.",
            ))
            .pattern(Some(openapi::amount_pattern(4)))
            .examples([amount]),
    )
    .required("amount")
    .property(
        "currency",
        RefBuilder::new()
            .ref_location_from_schema_name(<Currency as ToSchema>::name())
            .description(Some(if kind == Kind::Transfer {
                "The currency of both wallets."
            } else {
                "The wallet's currency."
            })),
    )
    .required("currency")
    .property(
        "description",
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .max_length(Some(MAX_DESCRIPTION_CHARS)),
    )
    .examples([example])
    .build()
}

/// A request body of the document, named as the document names it.
macro_rules! documented_request {
    ($name:ident, $kind:expr, $path:literal) => {
        #[doc = concat!("The body of `POST /api/v1/payments/", $path, "` as documented.")]
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                request_schema($kind).into()
            }
        }

        impl ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                schemas.push((
                    <Currency as ToSchema>::name().into_owned(),
                    <Currency as utoipa::PartialSchema>::schema(),
                ));
            }
        }
    };
}

documented_request!(DepositRequest, Kind::Deposit, "deposit");
documented_request!(TransferRequest, Kind::Transfer, "transfer");
documented_request!(WithdrawalRequest, Kind::Withdrawal, "withdrawal");

/// The longest payment description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 500;

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
        let given = [self.from_wallet_id.is_some(), self.to_wallet_id.is_some()];
        let named = wallets_named(kind).into_iter().zip(given);
        for ((field, needed), given) in named.clone() {
            if needed && !given {
                return Err(ApiError::invalid_field(
                    field,
                    format!("a {} needs {field}", kind.as_str()),
                ));
            }
        }
        for ((field, needed), given) in named {
            if given && !needed {
                return Err(ApiError::invalid_field(
                    field,
                    format!("a {} takes no {field}", kind.as_str()),
                ));
            }
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_CHARS)
        {
            return Err(ApiError::invalid_field(
                "description",
                "description is limited to 500 characters",
            ));
        }
        Ok(money)
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

/// [`PAYMENT_COLUMNS`] of the table named `alias` in a query that reads several.
pub fn payment_columns_of(alias: &str) -> String {
    PAYMENT_COLUMNS
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

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

    #[test]
    fn each_documented_body_takes_the_wallets_validate_takes() {
        for kind in [Kind::Transfer, Kind::Deposit, Kind::Withdrawal] {
            let doc = request_schema(kind);
            for (from, to) in [(false, false), (true, false), (false, true), (true, true)] {
                let request = PaymentRequest {
                    from_wallet_id: from.then(|| Uuid::from_u128(1)),
                    to_wallet_id: to.then(|| Uuid::from_u128(2)),
                    ..req("10.00")
                };
                let documented = [("from_wallet_id", from), ("to_wallet_id", to)]
                    .into_iter()
                    .all(|(field, given)| {
                        let RefOr::T(Schema::Object(wallet)) = &doc.properties[field] else {
                            panic!("{field} inline");
                        };
                        let takes_id = wallet.schema_type == SchemaType::new(Type::String);
                        let required = doc.required.iter().any(|r| r == field);
                        if given { takes_id } else { !required }
                    });
                let taken = request.validate(kind).is_ok();
                assert_eq!(taken, documented, "{kind:?} from {from} to {to}");
                let only = match kind {
                    Kind::Transfer => (true, true),
                    Kind::Deposit => (false, true),
                    Kind::Withdrawal => (true, false),
                };
                assert_eq!(taken, (from, to) == only, "{kind:?} from {from} to {to}");
            }
        }
    }

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
