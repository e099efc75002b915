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
use finflow_contracts::catalog;
use finflow_platform::error::ErrorCode;
use finflow_platform::events::{Event, outbox};
use finflow_platform::{Amount, ApiError, Currency, Money};
use sqlx::{PgConnection, PgPool};
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

/// What a transfer counts against its sender's limits (`None` for a deposit or a
/// reversal), or why its sender may not move money now. Found before the transfer's
/// lock (no remote call is made while rows are locked), so a refusal is answered only
/// when the transfer was not applied meanwhile: a transfer sent again while its first
/// attempt waited on a wallet, and refused because A's answer changed in between, was
/// recorded failed by C once the first committed and its money had moved.
#[derive(Debug, Clone)]
pub struct Allowance(pub Result<Option<Spend>, ApiError>);

impl From<Option<Spend>> for Allowance {
    fn from(spend: Option<Spend>) -> Self {
        Self(Ok(spend))
    }
}

pub use finflow_contracts::wallet::{TransferKind, TransferRequest, TransferResult, VoidOutcome};

/// Whether tier limits apply to a transfer of `kind`: money leaving a user's control.
fn is_limited(kind: TransferKind) -> bool {
    matches!(kind, TransferKind::Transfer | TransferKind::Withdrawal)
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
///
/// A user wallet must be active, but for a reversal (which two operators approved at
/// C) a frozen one will do: a freeze stops the owner, and clawing money back is what a
/// staff freeze holds it for. Refused, the wallet would have to be unfrozen first, and
/// its owner could move the money before the reversal was asked again.
pub fn check(
    from: &LockedWallet,
    to: &LockedWallet,
    money: Money,
    kind: TransferKind,
) -> Result<(), ApiError> {
    let open = |w: &LockedWallet| {
        w.status == "active" || (kind == TransferKind::Reversal && w.status == "frozen")
    };
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
        if w.is_user() && !open(w) {
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
    // A system account pays every deposit: its balance may not reach past storage either.
    for (w, by) in [(from, money.amount().negate()), (to, money.amount())] {
        if w.balance.checked_add(by).is_err() {
            return Err(out_of_range());
        }
    }
    Ok(())
}

/// A balance past `NUMERIC(20,4)` is the transfer's fault, not the ledger's: refused for
/// good (a 4xx C does not retry), where the database's overflow would have been a 500,
/// retried until the payment was voided.
fn out_of_range() -> ApiError {
    ApiError::validation("the transfer would take a balance past what the ledger holds")
        .with_details(serde_json::json!({ "reason": "balance_out_of_range" }))
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

/// Which of `transfer_ids` have been applied. Read without a lock: an entry, once
/// written, stays. What [`apply`] answers for these does not depend on the sender's
/// standing now, so callers ask A nothing about them: a transfer applied before its
/// payer was revoked, sent again because its answer was lost, is answered as applied,
/// not refused (C would record failed a payment whose money moved).
pub async fn applied(
    pool: &PgPool,
    transfer_ids: &[Uuid],
) -> Result<std::collections::HashSet<Uuid>, sqlx::Error> {
    if transfer_ids.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT transfer_id FROM journal_entries WHERE transfer_id = ANY($1)")
            // Planned for these ids each time, as the batch's other reads.
            .persistent(false)
            .bind(transfer_ids)
            .fetch_all(pool)
            .await?;
    Ok(ids.into_iter().collect())
}

/// Applies `req` once. `spend` is what it counts against the sender's tier limits, or
/// the sender's refusal, answered unless the transfer was applied ([`Allowance`]).
pub async fn apply(
    pool: &PgPool,
    req: &TransferRequest,
    spend: impl Into<Allowance>,
) -> Result<(TransferResult, Applied), ApiError> {
    let mut tx = pool.begin().await?;
    let applied = apply_in(&mut tx, req, spend.into()).await?;
    tx.commit().await?;
    Ok(applied)
}

/// Applies each of `transfers` once, in one transaction and one commit, answering per
/// transfer, in the given order, what [`apply`] would have; an error means nothing was
/// applied.
///
/// Every transfer id's advisory lock is taken first, then every wallet, each in one
/// order ([`apply`] takes its id's lock, then its two wallets; [`void`] only the id's):
/// no two of them wait on each other in a circle. With the wallets locked, their rows
/// decide status, currency and funds exactly, so the batch is worked out in memory, in
/// order, and written in a fixed number of statements whatever its size: the entries in
/// one, their lines in one (in order, so each balance moves as it would one transfer at
/// a time), the events in one. Only a day's spend can move under the batch (a transfer
/// from another wallet of the same sender); it is read once the lines' trigger holds
/// those rows, and a batch that a daily limit would have cut short is done again one
/// transfer at a time, with a savepoint each, as [`apply`] would do it.
///
/// The lines' trigger locks each sender's day of spending as it counts it, in the order
/// of `transfers`: callers give them in order of sender (as `POST
/// /internal/transfers/batch` does), so two batches never take two senders' days in
/// opposite orders.
pub async fn apply_all<A: Clone + Into<Allowance>>(
    pool: &PgPool,
    transfers: &[(TransferRequest, A)],
) -> Result<Vec<Result<(TransferResult, Applied), ApiError>>, ApiError> {
    let mut tx = pool.begin().await?;
    let accounts = lock_all(&mut tx, transfers).await?;
    match apply_together(&mut tx, transfers, accounts).await {
        Ok(Some(results)) => {
            tx.commit().await?;
            return Ok(results);
        }
        // A daily limit, or the database refusing what the plan wrote: one at a time
        // finds out which transfer it was.
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e.message, "a batch of transfers is done again one at a time")
        }
    }
    tx.rollback().await?;

    let mut tx = pool.begin().await?;
    lock_all(&mut tx, transfers).await?;
    let mut results = Vec::with_capacity(transfers.len());
    for (req, spend) in transfers {
        sqlx::query("SAVEPOINT finflow_transfer")
            .execute(&mut *tx)
            .await?;
        let result = apply_in(&mut tx, req, spend.clone().into()).await;
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

/// Takes the advisory lock of every transfer id of `transfers`, then locks every account
/// those not refused touch (system accounts created first if need be), each kind in one
/// order.
/// Answers the locked accounts.
async fn lock_all<A: Clone + Into<Allowance>>(
    tx: &mut PgConnection,
    transfers: &[(TransferRequest, A)],
) -> Result<Vec<LockedWallet>, sqlx::Error> {
    let ids: Vec<Uuid> = transfers.iter().map(|(req, _)| req.transfer_id).collect();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k) FROM \
           (SELECT DISTINCT hashtextextended(t::text, 7) AS k FROM UNNEST($1::uuid[]) AS t ORDER BY k) AS keys",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    let mut systems: Vec<(Currency, Uuid)> = Vec::new();
    let mut wallets = Vec::with_capacity(transfers.len() * 2);
    for (req, spend) in transfers {
        // A refused transfer is answered before its wallets are looked at (applied
        // before, or refused): only its id's lock is needed.
        if spend.clone().into().0.is_err() {
            continue;
        }
        // A request that names impossible sides is refused when it is applied.
        if let Ok((from, to)) = sides(req.kind, req.from_wallet_id, req.to_wallet_id) {
            for side in [from, to] {
                wallets.push(match side {
                    Side::Wallet(id) => id,
                    Side::System => match systems.iter().find(|(c, _)| *c == req.currency) {
                        Some((_, id)) => *id,
                        None => {
                            let id = resolve(tx, side, req.currency).await?;
                            systems.push((req.currency, id));
                            id
                        }
                    },
                });
            }
        }
    }
    wallets.sort_unstable();
    wallets.dedup();
    sqlx::query_as(
        "SELECT id, user_id, kind, currency, status, balance FROM wallets \
         WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    // Planned for these ids each time: a plan cached while the table was small
    // would go on scanning all of it once it has grown (until an analyze replans it).
    .persistent(false)
    .bind(&wallets)
    .fetch_all(&mut *tx)
    .await
}

/// A transfer of a batch that will be written, as worked out in memory.
struct Planned {
    entry_id: Uuid,
    req: TransferRequest,
    money: Money,
    from: Uuid,
    to: Uuid,
    spend: Option<Spend>,
    sender: Option<Uuid>,
}

/// What [`apply_all`] answers for each transfer, before the entries are written: known
/// already, or the `k`th entry written (applied now, or repeated later in the batch).
enum Slot {
    Done(Result<(TransferResult, Applied), ApiError>),
    Written(usize, Applied),
}

/// The batch worked out on the locked rows and written together (see [`apply_all`]).
/// `None` when a daily limit refuses one of them: the caller rolls back and goes one by
/// one.
async fn apply_together<A: Clone + Into<Allowance>>(
    tx: &mut PgConnection,
    transfers: &[(TransferRequest, A)],
    mut accounts: Vec<LockedWallet>,
) -> Result<Option<Vec<Result<(TransferResult, Applied), ApiError>>>, ApiError> {
    let ids: Vec<Uuid> = transfers.iter().map(|(req, _)| req.transfer_id).collect();
    let known: Vec<EntryRow> = sqlx::query_as(
        "SELECT id, transfer_id, kind, currency, amount, from_wallet_id, to_wallet_id, created_at \
         FROM journal_entries WHERE transfer_id = ANY($1)",
    )
    // Planned for these ids each time: a plan cached while the table was small
    // would go on scanning all of it once it has grown (until an analyze replans it).
    .persistent(false)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let voided: Vec<Uuid> =
        sqlx::query_scalar("SELECT transfer_id FROM voided_transfers WHERE transfer_id = ANY($1)")
            // Planned for these ids each time: a plan cached while the table was small
            // would go on scanning all of it once it has grown (until an analyze replans it).
            .persistent(false)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
    let known: Vec<TransferResult> = known
        .into_iter()
        .map(EntryRow::into_result)
        .collect::<Result<_, _>>()?;
    let systems: Vec<(Currency, Uuid)> = accounts
        .iter()
        .filter(|w| !w.is_user())
        .map(|w| (w.currency, w.id))
        .collect();

    let mut slots = Vec::with_capacity(transfers.len());
    let mut planned: Vec<Planned> = Vec::new();
    for (req, spend) in transfers {
        let outcome = plan(
            req,
            spend.clone().into(),
            &known,
            &planned,
            &voided,
            &systems,
            &mut accounts,
        );
        slots.push(match outcome {
            Ok(PlanStep::Before(result)) => Slot::Done(Ok((result, Applied::Before))),
            Ok(PlanStep::RepeatOf(k)) => Slot::Written(k, Applied::Before),
            Ok(PlanStep::Write(p)) => {
                planned.push(p);
                Slot::Written(planned.len() - 1, Applied::Now)
            }
            Err(e) => Slot::Done(Err(e)),
        });
    }
    let Some(results) = write_planned(tx, &planned).await? else {
        return Ok(None);
    };
    Ok(Some(
        slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Done(outcome) => outcome,
                Slot::Written(k, applied) => results
                    .get(k)
                    .map(|result| (result.clone(), applied))
                    .ok_or_else(|| ApiError::internal(&"a planned transfer without entry")),
            })
            .collect(),
    ))
}

/// Writes the planned transfers (entries, lines, events) and answers their results in
/// order; `None` when a daily limit refuses one of them.
async fn write_planned(
    tx: &mut PgConnection,
    planned: &[Planned],
) -> Result<Option<Vec<TransferResult>>, ApiError> {
    if planned.is_empty() {
        return Ok(Some(Vec::new()));
    }

    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO journal_entries (id, transfer_id, kind, currency, amount, from_wallet_id, to_wallet_id, \
           reference_value) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::numeric[], $6::uuid[], \
           $7::uuid[], $8::numeric[]) \
         RETURNING created_at",
    )
    .bind(planned.iter().map(|p| p.entry_id).collect::<Vec<_>>())
    .bind(planned.iter().map(|p| p.req.transfer_id).collect::<Vec<_>>())
    .bind(planned.iter().map(|p| p.req.kind.as_str()).collect::<Vec<_>>())
    .bind(planned.iter().map(|p| p.money.currency()).collect::<Vec<_>>())
    .bind(planned.iter().map(|p| p.money.amount()).collect::<Vec<_>>())
    .bind(planned.iter().map(|p| p.from).collect::<Vec<_>>())
    .bind(planned.iter().map(|p| p.to).collect::<Vec<_>>())
    .bind(
        planned
            .iter()
            .map(|p| p.spend.map(|s| s.value))
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .next()
    .ok_or_else(|| ApiError::internal(&"the entries were not written"))?;
    // Two lines an entry, debit first, in the batch's order: the trigger moves each
    // balance in the order the transfers were worked out in.
    let mut line_entries = Vec::with_capacity(planned.len() * 2);
    let mut line_wallets = Vec::with_capacity(planned.len() * 2);
    let mut line_amounts = Vec::with_capacity(planned.len() * 2);
    for p in planned {
        line_entries.extend([p.entry_id, p.entry_id]);
        line_wallets.extend([p.from, p.to]);
        line_amounts.extend([p.money.amount().negate(), p.money.amount()]);
    }
    sqlx::query(
        "INSERT INTO ledger_lines (entry_id, wallet_id, amount, balance_after) \
         SELECT e, w, a, 0 FROM UNNEST($1::uuid[], $2::uuid[], $3::numeric[]) WITH ORDINALITY AS l(e, w, a, n) \
         ORDER BY n",
    )
    .bind(&line_entries)
    .bind(&line_wallets)
    .bind(&line_amounts)
    .execute(&mut *tx)
    .await?;

    // The lines' trigger counted each limited transfer into its sender's day and holds
    // that row: what was spent before the batch is the total now less the batch's part.
    let mut senders: Vec<Uuid> = planned
        .iter()
        .filter(|p| p.spend.is_some())
        .filter_map(|p| p.sender)
        .collect();
    senders.sort_unstable();
    senders.dedup();
    if !senders.is_empty() {
        let spent: Vec<(Uuid, Amount)> = sqlx::query_as(
            "SELECT user_id, spent FROM user_daily_spend \
             WHERE user_id = ANY($1) AND day = (now() AT TIME ZONE 'UTC')::date",
        )
        // Planned for these ids each time: a plan cached while the table was small
        // would go on scanning all of it once it has grown (until an analyze replans it).
        .persistent(false)
        .bind(&senders)
        .fetch_all(&mut *tx)
        .await?;
        for sender in senders {
            let mut before = spent
                .iter()
                .find(|(user, _)| *user == sender)
                .map_or(Amount::ZERO, |(_, spent)| *spent);
            let theirs: Vec<(Amount, Limit)> = planned
                .iter()
                .filter(|p| p.sender == Some(sender))
                .filter_map(|p| p.spend.map(|s| (s.value, s.limit)))
                .collect();
            for (value, _) in &theirs {
                before = before
                    .checked_sub(*value)
                    .map_err(|e| ApiError::internal(&e))?;
            }
            for (value, limit) in theirs {
                if limit.check(value, before).is_err() {
                    return Ok(None);
                }
                before = before
                    .checked_add(value)
                    .map_err(|e| ApiError::internal(&e))?;
            }
        }
    }

    let results: Vec<TransferResult> = planned.iter().map(|p| p.result(created_at)).collect();
    let events = results
        .iter()
        .map(|r| Event::new(catalog::WALLET.name, LEDGER_ENTRY_POSTED, r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::internal(&e))?;
    outbox::enqueue_all(tx, &events).await?;
    Ok(Some(results))
}

/// What working out one transfer of a batch came to.
enum PlanStep {
    /// The id was applied before this batch.
    Before(TransferResult),
    /// The id is the `k`th transfer this batch writes.
    RepeatOf(usize),
    /// To be written; `accounts` already moved.
    Write(Planned),
}

impl Planned {
    fn result(&self, created_at: DateTime<Utc>) -> TransferResult {
        TransferResult {
            transfer_id: self.req.transfer_id,
            entry_id: self.entry_id,
            kind: self.req.kind,
            money: self.money,
            from_wallet_id: self.from,
            to_wallet_id: self.to,
            created_at,
        }
    }
}

/// One transfer of a batch worked out on the locked `accounts`, with the checks of
/// [`apply_in`] in its order; moves the balances in memory when it will be written.
fn plan(
    req: &TransferRequest,
    spend: Allowance,
    known: &[TransferResult],
    planned: &[Planned],
    voided: &[Uuid],
    systems: &[(Currency, Uuid)],
    accounts: &mut [LockedWallet],
) -> Result<PlanStep, ApiError> {
    let money = Money::positive(req.amount, req.currency)
        .map_err(|e| ApiError::invalid_field("amount", e.to_string()))?;
    let (from_side, to_side) = sides(req.kind, req.from_wallet_id, req.to_wallet_id)?;
    if let Some(result) = known.iter().find(|r| r.transfer_id == req.transfer_id) {
        return Ok(PlanStep::Before(repeated(result.clone(), req, money)?));
    }
    if let Some(k) = planned
        .iter()
        .position(|p| p.req.transfer_id == req.transfer_id)
    {
        // Its entry is not written yet: any date does for the comparison.
        repeated(planned[k].result(DateTime::<Utc>::MIN_UTC), req, money)?;
        return Ok(PlanStep::RepeatOf(k));
    }
    if voided.contains(&req.transfer_id) {
        return Err(voided_error(req.transfer_id));
    }
    let spend = spend.0?;
    let id_of = |side: Side| match side {
        Side::Wallet(id) => Ok(id),
        Side::System => systems
            .iter()
            .find(|(c, _)| *c == money.currency())
            .map(|(_, id)| *id)
            .ok_or_else(|| ApiError::internal(&"a system account that was not locked")),
    };
    let (from_id, to_id) = (id_of(from_side)?, id_of(to_side)?);
    let find = |id: Uuid| {
        accounts
            .iter()
            .position(|w| w.id == id)
            .ok_or_else(|| ApiError::not_found(format!("wallet {id} not found")))
    };
    let (from, to) = (find(from_id)?, find(to_id)?);
    check(&accounts[from], &accounts[to], money, req.kind)?;
    let spend = valued(req.kind, spend)?;
    let moved = |balance: Amount, by: Amount| balance.checked_add(by).map_err(|_| out_of_range());
    let debited = moved(accounts[from].balance, money.amount().negate())?;
    let credited = moved(accounts[to].balance, money.amount())?;
    accounts[from].balance = debited;
    accounts[to].balance = credited;
    Ok(PlanStep::Write(Planned {
        entry_id: Uuid::now_v7(),
        req: req.clone(),
        money,
        from: from_id,
        to: to_id,
        spend,
        sender: accounts[from].user_id,
    }))
}

/// [`apply`] inside the caller's transaction.
async fn apply_in(
    tx: &mut PgConnection,
    req: &TransferRequest,
    spend: Allowance,
) -> Result<(TransferResult, Applied), ApiError> {
    let money = Money::positive(req.amount, req.currency)
        .map_err(|e| ApiError::invalid_field("amount", e.to_string()))?;
    let (from_side, to_side) = sides(req.kind, req.from_wallet_id, req.to_wallet_id)?;

    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7))")
        .bind(req.transfer_id)
        .execute(&mut *tx)
        .await?;
    if let Some(existing) = entry_by_transfer(tx, req.transfer_id).await? {
        return Ok((
            repeated(existing.into_result()?, req, money)?,
            Applied::Before,
        ));
    }
    if is_voided(tx, req.transfer_id).await? {
        return Err(voided_error(req.transfer_id));
    }
    let spend = spend.0?;

    let from_id = resolve(tx, from_side, money.currency()).await?;
    let to_id = resolve(tx, to_side, money.currency()).await?;
    let locked: Vec<LockedWallet> = sqlx::query_as(
        "SELECT id, user_id, kind, currency, status, balance FROM wallets \
         WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    // Planned for these ids each time: a plan cached while the table was small
    // would go on scanning all of it once it has grown (until an analyze replans it).
    .persistent(false)
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
    check(from, to, money, req.kind)?;
    let spend = valued(req.kind, spend)?;

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
    let event = Event::new(catalog::WALLET.name, LEDGER_ENTRY_POSTED, &result)
        .map_err(|e| ApiError::internal(&e))?;
    outbox::enqueue(tx, &event).await?;
    Ok((result, Applied::Now))
}

/// What a transfer of `kind` counts against its sender's limits, checked against the
/// per-transaction one. Every movement out of a user's wallet is valued and counted (the
/// database refuses one without a value): a caller that forgot the limits must fail,
/// not pass.
fn valued(kind: TransferKind, spend: Option<Spend>) -> Result<Option<Spend>, ApiError> {
    match (is_limited(kind), spend) {
        (false, _) => Ok(None),
        (true, Some(spend)) => {
            spend.limit.check(spend.value, Amount::ZERO)?;
            Ok(Some(spend))
        }
        (true, None) => Err(ApiError::internal(
            &"a transfer out of a user's wallet without its value",
        )),
    }
}

fn voided_error(transfer_id: Uuid) -> ApiError {
    ApiError::conflict("this transfer id was voided and can no longer be applied")
        .with_details(serde_json::json!({ "transfer_id": transfer_id, "reason": "voided" }))
}

async fn is_voided(tx: &mut PgConnection, transfer_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM voided_transfers WHERE transfer_id = $1)")
        .bind(transfer_id)
        .fetch_one(&mut *tx)
        .await
}

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

/// The answer to `req` when its id was applied before as `result`: that result, or a
/// conflict when the id was used for another transfer.
fn repeated(
    result: TransferResult,
    req: &TransferRequest,
    money: Money,
) -> Result<TransferResult, ApiError> {
    if !same_request(&result, req, money) {
        return Err(
            ApiError::conflict("this transfer id was used for a different transfer")
                .with_details(serde_json::json!({ "transfer_id": req.transfer_id })),
        );
    }
    Ok(result)
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
    fn a_frozen_wallet_can_neither_send_nor_receive_but_by_reversal() {
        let active = wallet("user", "USD", "active", "100");
        let frozen = wallet("user", "USD", "frozen", "100");
        let pending = wallet("user", "USD", "pending", "100");
        for (from, to) in [(&frozen, &active), (&active, &frozen)] {
            for kind in [
                TransferKind::Transfer,
                TransferKind::Withdrawal,
                TransferKind::Deposit,
            ] {
                let err = check(from, to, usd("1"), kind).unwrap_err();
                assert_eq!(err.code, ErrorCode::WalletNotActive);
            }
            assert!(check(from, to, usd("1"), TransferKind::Reversal).is_ok());
        }
        for (from, to) in [(&pending, &active), (&active, &pending)] {
            let err = check(from, to, usd("1"), TransferKind::Reversal).unwrap_err();
            assert_eq!(
                err.code,
                ErrorCode::WalletNotActive,
                "pending is not frozen"
            );
        }
    }

    #[test]
    fn more_than_the_balance_is_insufficient_funds_but_the_system_account_may_go_negative() {
        let poor = wallet("user", "USD", "active", "10.00");
        let other = wallet("user", "USD", "active", "0");
        assert_eq!(
            check(&poor, &other, usd("10.01"), TransferKind::Transfer)
                .unwrap_err()
                .code,
            ErrorCode::InsufficientFunds
        );
        assert!(check(&poor, &other, usd("10.00"), TransferKind::Transfer).is_ok());
        let system = wallet("system", "USD", "active", "-500");
        assert!(check(&system, &other, usd("1000"), TransferKind::Reversal).is_ok());
    }

    #[test]
    fn currencies_must_match() {
        let eur = wallet("user", "EUR", "active", "100");
        let usd_wallet = wallet("user", "USD", "active", "100");
        assert_eq!(
            check(&eur, &usd_wallet, usd("1"), TransferKind::Transfer)
                .unwrap_err()
                .code,
            ErrorCode::ValidationError
        );
    }

    #[test]
    fn a_pending_wallet_is_not_active() {
        let pending = wallet("user", "USD", "pending", "100");
        let active = wallet("user", "USD", "active", "100");
        assert_eq!(
            check(&active, &pending, usd("1"), TransferKind::Transfer)
                .unwrap_err()
                .code,
            ErrorCode::WalletNotActive
        );
    }
}
