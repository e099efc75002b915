//! The double-entry ledger: one transfer, one database transaction.
//!
//! A transfer moves an amount from one account to another. User wallets are accounts;
//! each currency also has one *system* account, the other side of deposits and
//! withdrawals, so every journal entry has a debit and an equal credit and the sum of
//! all balances of a currency is always zero (user money = minus the system balance).
//!
//! Applying a transfer: take a transaction-scoped advisory lock on the transfer id (two
//! deliveries of one id take turns), return the recorded result if the id was applied
//! already, lock both wallet rows in id order (two opposite transfers cannot deadlock),
//! check currency, status, funds and limits, then write the journal entry and its two
//! lines; a trigger moves the balances. The database re-checks what matters (see the
//! migration), so a bug here fails a transfer instead of breaking the books.

use chrono::{DateTime, Utc};
use finflow_platform::error::ErrorCode;
use finflow_platform::events::{Event, outbox};
use finflow_platform::{Amount, ApiError, Currency, Money};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::limits::Limit;

/// What a transfer out of a user's wallet counts against the user's tier limits: its
/// value in the reference currency (the limits' unit), worked out before the
/// transaction from the configured rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spend {
    pub value: Amount,
    pub limit: Limit,
}

/// Event emitted for every posted journal entry (an addition to the contract's list,
/// so that read models can follow the ledger without reading B's database).
pub const LEDGER_ENTRY_POSTED: &str = "ledger.entry_posted";

/// What a transfer is for; decides which sides are user wallets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
    fn as_str(self) -> &'static str {
        match self {
            Self::Transfer => "transfer",
            Self::Deposit => "deposit",
            Self::Withdrawal => "withdrawal",
            Self::Reversal => "reversal",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "transfer" => Some(Self::Transfer),
            "deposit" => Some(Self::Deposit),
            "withdrawal" => Some(Self::Withdrawal),
            "reversal" => Some(Self::Reversal),
            _ => None,
        }
    }

    /// Whether tier limits apply: money leaving a user's control.
    fn is_limited(self) -> bool {
        matches!(self, Self::Transfer | Self::Withdrawal)
    }
}

/// `POST /internal/transfers`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
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
    #[schema(value_type = String, example = "1500.00",
        pattern = r"^(0*[1-9][0-9]{0,15}(\.[0-9]{1,4}0*)?|0+\.[0-9]{0,3}[1-9]0*)$")]
    pub amount: Amount,
    #[schema(value_type = finflow_platform::Currency, example = "USD")]
    pub currency: Currency,
}

/// One side of a transfer before resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Wallet(Uuid),
    System,
}

/// Which sides a request names, given its kind; refuses shapes that make no sense.
pub fn sides(
    kind: TransferKind,
    from: Option<Uuid>,
    to: Option<Uuid>,
) -> Result<(Side, Side), ApiError> {
    let need = |id: Option<Uuid>, field: &str| {
        id.map(Side::Wallet).ok_or_else(|| {
            ApiError::invalid_field(field, format!("a {} needs {field}", kind.as_str()))
        })
    };
    let forbid = |id: Option<Uuid>, field: &str| match id {
        None => Ok(Side::System),
        Some(_) => Err(ApiError::invalid_field(
            field,
            format!("a {} takes no {field}", kind.as_str()),
        )),
    };
    let (from, to) = match kind {
        TransferKind::Transfer => (need(from, "from_wallet_id")?, need(to, "to_wallet_id")?),
        TransferKind::Deposit => (forbid(from, "from_wallet_id")?, need(to, "to_wallet_id")?),
        TransferKind::Withdrawal => (need(from, "from_wallet_id")?, forbid(to, "to_wallet_id")?),
        TransferKind::Reversal => {
            let side = |id: Option<Uuid>| id.map_or(Side::System, Side::Wallet);
            (side(from), side(to))
        }
    };
    if from == to {
        return Err(ApiError::validation(
            "a transfer needs two different accounts",
        ));
    }
    Ok((from, to))
}

/// A wallet row as locked for a transfer.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LockedWallet {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub kind: String,
    pub currency: Currency,
    pub status: String,
    pub balance: Amount,
}

impl LockedWallet {
    fn is_user(&self) -> bool {
        self.kind == "user"
    }
}

/// The checks on locked rows: currency, status, funds. Pure, so it is tested directly.
pub fn check(from: &LockedWallet, to: &LockedWallet, money: Money) -> Result<(), ApiError> {
    for w in [from, to] {
        if w.currency != money.currency() {
            return Err(ApiError::validation(format!(
                "wallet {} holds {}, the transfer is in {}",
                w.id,
                w.currency,
                money.currency()
            ))
            .with_details(
                serde_json::json!({ "wallet_id": w.id, "reason": "currency_mismatch" }),
            ));
        }
        if w.is_user() && w.status != "active" {
            return Err(ApiError::new(
                ErrorCode::WalletNotActive,
                format!("wallet {} is {}", w.id, w.status),
            )
            .with_details(serde_json::json!({ "wallet_id": w.id, "status": w.status })));
        }
    }
    if from.is_user() && from.balance < money.amount() {
        return Err(
            ApiError::new(ErrorCode::InsufficientFunds, "insufficient funds")
                .with_details(serde_json::json!({ "wallet_id": from.id })),
        );
    }
    Ok(())
}

/// The recorded result of a transfer, returned again for a repeated transfer id.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TransferResult {
    pub transfer_id: Uuid,
    pub entry_id: Uuid,
    pub kind: TransferKind,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub money: Money,
    pub from_wallet_id: Uuid,
    pub to_wallet_id: Uuid,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    id: Uuid,
    transfer_id: Uuid,
    kind: String,
    currency: Currency,
    amount: Amount,
    from_wallet_id: Uuid,
    to_wallet_id: Uuid,
    created_at: DateTime<Utc>,
}

impl EntryRow {
    fn into_result(self) -> Result<TransferResult, ApiError> {
        Ok(TransferResult {
            transfer_id: self.transfer_id,
            entry_id: self.id,
            kind: TransferKind::parse(&self.kind)
                .ok_or_else(|| ApiError::internal(&"unknown entry kind"))?,
            money: Money::new(self.amount, self.currency).map_err(|e| ApiError::internal(&e))?,
            from_wallet_id: self.from_wallet_id,
            to_wallet_id: self.to_wallet_id,
            created_at: self.created_at,
        })
    }
}

/// Whether a transfer was applied now or had been already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Now,
    Before,
}

/// Applies `req` once. `spend` is what it counts against the sender's tier limits
/// (looked up before the transaction: no remote call is made while rows are locked).
pub async fn apply(
    pool: &PgPool,
    req: &TransferRequest,
    spend: Option<Spend>,
) -> Result<(TransferResult, Applied), ApiError> {
    let mut tx = pool.begin().await?;
    let applied = apply_in(&mut tx, req, spend).await?;
    tx.commit().await?;
    Ok(applied)
}

/// Applies each of `transfers` once, in one transaction and one commit. A refused
/// transfer (funds, limits, status) gives back only its own writes and the others
/// still apply: a first pass assumes none is refused, and only a batch with a refusal
/// is done again with a savepoint per transfer (two more statements each, paid only
/// then). Every wallet the batch touches is locked first, in id order, as [`apply`]
/// locks its two: two batches, or a batch and a single transfer, wait for each other
/// instead of deadlocking. Answers per transfer, in the given order, what [`apply`]
/// would have; an error means nothing was applied.
pub async fn apply_all(
    pool: &PgPool,
    transfers: &[(TransferRequest, Option<Spend>)],
) -> Result<Vec<Result<(TransferResult, Applied), ApiError>>, ApiError> {
    let mut tx = pool.begin().await?;
    lock_all(&mut tx, transfers).await?;
    let mut applied = Vec::with_capacity(transfers.len());
    for (req, spend) in transfers {
        match apply_in(&mut tx, req, *spend).await {
            Ok(result) => applied.push(Ok(result)),
            Err(_) => break,
        }
    }
    if applied.len() == transfers.len() {
        tx.commit().await?;
        return Ok(applied);
    }
    tx.rollback().await?;

    let mut tx = pool.begin().await?;
    lock_all(&mut tx, transfers).await?;
    let mut results = Vec::with_capacity(transfers.len());
    for (req, spend) in transfers {
        sqlx::query("SAVEPOINT finflow_transfer")
            .execute(&mut *tx)
            .await?;
        let result = apply_in(&mut tx, req, *spend).await;
        let end = if result.is_ok() {
            "RELEASE SAVEPOINT finflow_transfer"
        } else {
            "ROLLBACK TO SAVEPOINT finflow_transfer"
        };
        sqlx::query(end).execute(&mut *tx).await?;
        results.push(result);
    }
    tx.commit().await?;
    Ok(results)
}

/// Locks every account `transfers` touch, in id order (system accounts created first
/// if need be).
async fn lock_all(
    tx: &mut PgConnection,
    transfers: &[(TransferRequest, Option<Spend>)],
) -> Result<(), sqlx::Error> {
    let mut wallets = Vec::with_capacity(transfers.len() * 2);
    for (req, _) in transfers {
        // A request that names impossible sides is refused by `apply_in`.
        if let Ok((from, to)) = sides(req.kind, req.from_wallet_id, req.to_wallet_id) {
            wallets.push(resolve(tx, from, req.currency).await?);
            wallets.push(resolve(tx, to, req.currency).await?);
        }
    }
    wallets.sort_unstable();
    wallets.dedup();
    sqlx::query("SELECT id FROM wallets WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(&wallets)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// [`apply`] inside the caller's transaction.
async fn apply_in(
    tx: &mut PgConnection,
    req: &TransferRequest,
    spend: Option<Spend>,
) -> Result<(TransferResult, Applied), ApiError> {
    let money = Money::positive(req.amount, req.currency)
        .map_err(|e| ApiError::invalid_field("amount", e.to_string()))?;
    let (from_side, to_side) = sides(req.kind, req.from_wallet_id, req.to_wallet_id)?;

    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7))")
        .bind(req.transfer_id)
        .execute(&mut *tx)
        .await?;
    if let Some(existing) = entry_by_transfer(tx, req.transfer_id).await? {
        let result = existing.into_result()?;
        if !same_request(&result, req, money) {
            return Err(
                ApiError::conflict("this transfer id was used for a different transfer")
                    .with_details(serde_json::json!({ "transfer_id": req.transfer_id })),
            );
        }
        return Ok((result, Applied::Before));
    }
    if is_voided(tx, req.transfer_id).await? {
        return Err(voided(req.transfer_id));
    }

    let from_id = resolve(tx, from_side, money.currency()).await?;
    let to_id = resolve(tx, to_side, money.currency()).await?;
    let locked: Vec<LockedWallet> = sqlx::query_as(
        "SELECT id, user_id, kind, currency, status, balance FROM wallets \
         WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind([from_id, to_id].as_slice())
    .fetch_all(&mut *tx)
    .await?;
    let find = |id: Uuid| {
        locked
            .iter()
            .find(|w| w.id == id)
            .ok_or_else(|| ApiError::not_found(format!("wallet {id} not found")))
    };
    let (from, to) = (find(from_id)?, find(to_id)?);
    check(from, to, money)?;
    // Every movement out of a user's wallet is valued and counted (the database refuses
    // one without a value): a caller that forgot the limits must fail, not pass.
    let spend = match (req.kind.is_limited(), spend) {
        (false, _) => None,
        (true, Some(spend)) => Some(spend),
        (true, None) => {
            return Err(ApiError::internal(
                &"a transfer out of a user's wallet without its value",
            ));
        }
    };
    if let Some(spend) = spend {
        spend.limit.check(spend.value, Amount::ZERO)?;
    }

    let entry: EntryRow = sqlx::query_as(
        "INSERT INTO journal_entries (id, transfer_id, kind, currency, amount, from_wallet_id, to_wallet_id, \
           reference_value) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         RETURNING id, transfer_id, kind, currency, amount, from_wallet_id, to_wallet_id, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(req.transfer_id)
    .bind(req.kind.as_str())
    .bind(money.currency())
    .bind(money.amount())
    .bind(from.id)
    .bind(to.id)
    .bind(spend.map(|s| s.value))
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO ledger_lines (entry_id, wallet_id, amount, balance_after) \
         VALUES ($1, $2, $3, 0), ($1, $4, $5, 0)",
    )
    .bind(entry.id)
    .bind(from.id)
    .bind(money.amount().negate())
    .bind(to.id)
    .bind(money.amount())
    .execute(&mut *tx)
    .await?;
    if let (Some(spend), Some(sender)) = (spend, from.user_id) {
        // The lines' trigger has counted this transfer into the sender's day, holding that
        // row's lock until commit: two transfers from two wallets of one user take turns
        // here, and a refusal rolls the count back with everything else.
        let spent = spent_today(tx, sender).await?;
        let before = spent
            .checked_sub(spend.value)
            .map_err(|e| ApiError::internal(&e))?;
        spend.limit.check(spend.value, before)?;
    }
    let result = entry.into_result()?;
    let event = Event::new(crate::SERVICE, LEDGER_ENTRY_POSTED, &result)
        .map_err(|e| ApiError::internal(&e))?;
    outbox::enqueue(tx, &event).await?;
    Ok((result, Applied::Now))
}

fn voided(transfer_id: Uuid) -> ApiError {
    ApiError::conflict("this transfer id was voided and can no longer be applied")
        .with_details(serde_json::json!({ "transfer_id": transfer_id, "reason": "voided" }))
}

async fn is_voided(tx: &mut PgConnection, transfer_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM voided_transfers WHERE transfer_id = $1)")
        .bind(transfer_id)
        .fetch_one(&mut *tx)
        .await
}

/// What became of a transfer id that was voided.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VoidOutcome {
    /// It had been applied before the void: here is the result; nothing was voided.
    Applied { transfer: TransferResultWire },
    /// It was not applied and now never will be.
    Voided,
}

/// [`TransferResult`] as it travels inside [`VoidOutcome`].
pub type TransferResultWire = serde_json::Value;

/// Makes sure `transfer_id` is never applied from now on, unless it already was.
/// Serialized with [`apply`] by the same advisory lock, so the answer is final.
pub async fn void(pool: &PgPool, transfer_id: Uuid, reason: &str) -> Result<VoidOutcome, ApiError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7))")
        .bind(transfer_id)
        .execute(&mut *tx)
        .await?;
    if let Some(existing) = entry_by_transfer(&mut tx, transfer_id).await? {
        let result = existing.into_result()?;
        let transfer = serde_json::to_value(&result).map_err(|e| ApiError::internal(&e))?;
        return Ok(VoidOutcome::Applied { transfer });
    }
    sqlx::query(
        "INSERT INTO voided_transfers (transfer_id, reason) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(transfer_id)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(VoidOutcome::Voided)
}

fn same_request(result: &TransferResult, req: &TransferRequest, money: Money) -> bool {
    result.kind == req.kind
        && result.money == money
        && req
            .from_wallet_id
            .is_none_or(|id| id == result.from_wallet_id)
        && req.to_wallet_id.is_none_or(|id| id == result.to_wallet_id)
}

async fn entry_by_transfer(
    tx: &mut PgConnection,
    transfer_id: Uuid,
) -> Result<Option<EntryRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, transfer_id, kind, currency, amount, from_wallet_id, to_wallet_id, created_at \
         FROM journal_entries WHERE transfer_id = $1",
    )
    .bind(transfer_id)
    .fetch_optional(&mut *tx)
    .await
}

/// The wallet id of a side; the system account of a currency is created on first use.
async fn resolve(
    tx: &mut PgConnection,
    side: Side,
    currency: Currency,
) -> Result<Uuid, sqlx::Error> {
    match side {
        Side::Wallet(id) => Ok(id),
        Side::System => {
            sqlx::query(
                "INSERT INTO wallets (id, user_id, kind, currency, status) \
                 VALUES ($1, NULL, 'system', $2, 'active') ON CONFLICT DO NOTHING",
            )
            .bind(Uuid::now_v7())
            .bind(currency)
            .execute(&mut *tx)
            .await?;
            sqlx::query_scalar("SELECT id FROM wallets WHERE kind = 'system' AND currency = $1")
                .bind(currency)
                .fetch_one(&mut *tx)
                .await
        }
    }
}

/// What `user` sent today (UTC) through limited kinds, in the reference currency: the
/// counter the ledger's trigger keeps, one row however busy the user.
pub async fn spent_today(conn: &mut PgConnection, user: Uuid) -> Result<Amount, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce((SELECT spent FROM user_daily_spend \
                           WHERE user_id = $1 AND day = (now() AT TIME ZONE 'UTC')::date), 0)",
    )
    .bind(user)
    .fetch_one(&mut *conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wallet(kind: &str, currency: &str, status: &str, balance: &str) -> LockedWallet {
        LockedWallet {
            id: Uuid::new_v4(),
            user_id: (kind == "user").then(Uuid::new_v4),
            kind: kind.into(),
            currency: Currency::parse(currency).unwrap(),
            status: status.into(),
            balance: Amount::parse(balance).unwrap(),
        }
    }

    fn usd(s: &str) -> Money {
        Money::parse(s, "USD").unwrap()
    }

    #[test]
    fn each_kind_names_the_sides_it_needs() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(
            sides(TransferKind::Deposit, None, Some(b)).unwrap(),
            (Side::System, Side::Wallet(b))
        );
        assert_eq!(
            sides(TransferKind::Withdrawal, Some(a), None).unwrap(),
            (Side::Wallet(a), Side::System)
        );
        assert!(sides(TransferKind::Transfer, Some(a), None).is_err());
        assert!(sides(TransferKind::Deposit, Some(a), Some(b)).is_err());
        assert!(sides(TransferKind::Transfer, Some(a), Some(a)).is_err());
        assert!(sides(TransferKind::Reversal, None, None).is_err());
    }

    #[test]
    fn a_frozen_wallet_can_neither_send_nor_receive() {
        let active = wallet("user", "USD", "active", "100");
        let frozen = wallet("user", "USD", "frozen", "100");
        for (from, to) in [(&frozen, &active), (&active, &frozen)] {
            let err = check(from, to, usd("1")).unwrap_err();
            assert_eq!(err.code, ErrorCode::WalletNotActive);
        }
    }

    #[test]
    fn more_than_the_balance_is_insufficient_funds_but_the_system_account_may_go_negative() {
        let poor = wallet("user", "USD", "active", "10.00");
        let other = wallet("user", "USD", "active", "0");
        assert_eq!(
            check(&poor, &other, usd("10.01")).unwrap_err().code,
            ErrorCode::InsufficientFunds
        );
        assert!(check(&poor, &other, usd("10.00")).is_ok());
        let system = wallet("system", "USD", "active", "-500");
        assert!(check(&system, &other, usd("1000")).is_ok());
    }

    #[test]
    fn currencies_must_match() {
        let eur = wallet("user", "EUR", "active", "100");
        let usd_wallet = wallet("user", "USD", "active", "100");
        assert_eq!(
            check(&eur, &usd_wallet, usd("1")).unwrap_err().code,
            ErrorCode::ValidationError
        );
    }

    #[test]
    fn a_pending_wallet_is_not_active() {
        let pending = wallet("user", "USD", "pending", "100");
        let active = wallet("user", "USD", "active", "100");
        assert_eq!(
            check(&active, &pending, usd("1")).unwrap_err().code,
            ErrorCode::WalletNotActive
        );
    }
}
