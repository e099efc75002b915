//! Projections: each event type folded into the read models.
//!
//! Every projection is idempotent and order-tolerant on its own (not only thanks to the
//! consumer's dedupe): rows are upserted and a row only takes a fact newer than the one
//! it holds (`occurred_at`), so replaying every event, twice, in any order, converges to
//! the same tables. A consumer batch leaves what its events leave one by one, with one
//! statement for all its payment facts and one for all its ledger entries
//! ([`project_batch`]).

use std::collections::BTreeMap;
use std::future::Future;

use chrono::{DateTime, Utc};
use finflow_contracts::kyc::{AmlDecision, KycUpdated};
use finflow_contracts::money::MoneyError;
use finflow_contracts::payment::{self, PaymentEvent};
use finflow_contracts::user::UserCreated;
use finflow_contracts::wallet::{TransferResult, WalletEvent};
use finflow_platform::Amount;
use finflow_platform::events::consumer::{Handler, HandlerError};
use finflow_platform::events::{Event, QueueSpec, types};
use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// `ledger.entry_posted`, emitted by B for every journal entry.
pub const LEDGER_ENTRY_POSTED: &str = "ledger.entry_posted";

/// One queue for everything F reads.
pub fn queue() -> QueueSpec {
    QueueSpec::new(
        "reporting.events",
        &[
            types::USER_CREATED,
            types::USER_KYC_UPDATED,
            types::WALLET_CREATED,
            types::WALLET_STATUS_CHANGED,
            types::PAYMENT_REQUESTED,
            types::PAYMENT_ON_HOLD,
            types::PAYMENT_COMPLETED,
            types::PAYMENT_FAILED,
            types::PAYMENT_REVERSED,
            types::AML_FLAGGED,
            types::AML_CLEARED,
            LEDGER_ENTRY_POSTED,
        ],
    )
}

fn malformed(event: &Event, e: &dyn std::fmt::Display) -> HandlerError {
    HandlerError::Permanent(format!("malformed {}: {e}", event.event_type))
}

/// What F keeps of a `payment.*` event ([`PaymentEvent`]).
struct PaymentFact {
    payment_id: Uuid,
    user_id: Uuid,
    kind: payment::Kind,
    status: payment::Status,
    amount: Amount,
    currency: String,
    created_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    failure: Option<payment::Failure>,
    /// Absent for a deposit's source and a withdrawal's destination (B's system account).
    from_wallet_id: Option<Uuid>,
    to_wallet_id: Option<Uuid>,
}

impl PaymentFact {
    fn of(event: PaymentEvent) -> Result<Self, MoneyError> {
        let p = event.payment;
        Ok(Self {
            payment_id: event.payment_id,
            user_id: p.user_id,
            kind: p.kind,
            status: p.status,
            amount: Amount::parse(&p.amount)?,
            currency: p.currency,
            created_at: p.created_at,
            completed_at: p.completed_at,
            failure: p.failure,
            from_wallet_id: p.from_wallet_id,
            to_wallet_id: p.to_wallet_id,
        })
    }
}

/// A `payment.requested` that names only the payment: what C's sweeper published before
/// it re-published the whole payment. Such events may still sit in queues; they carry no
/// fact (the payment's own events do), so they change nothing here.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BarePaymentRequest {
    payment_id: Uuid,
}

/// Folds one event into the read models (in the caller's transaction).
pub async fn project(tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
    match event.event_type.as_str() {
        t if t.starts_with("payment.") => {
            if let Some(p) = payment_fact(event)? {
                upsert_payments(tx, &[PaymentRow::of(&p, event.occurred_at)]).await?;
            }
        }
        types::WALLET_CREATED | types::WALLET_STATUS_CHANGED => {
            let w: WalletEvent = event.data_as().map_err(|e| malformed(event, &e))?;
            // Only creation knows when the wallet was created; a status change may have
            // arrived first. The status is the newest fact's (updated_at is its time).
            let created_at =
                (event.event_type == types::WALLET_CREATED).then_some(event.occurred_at);
            sqlx::query(
                "INSERT INTO wallets_rm (wallet_id, user_id, currency, status, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (wallet_id) DO UPDATE SET \
                   created_at = coalesce(EXCLUDED.created_at, wallets_rm.created_at), \
                   status = CASE WHEN wallets_rm.updated_at < EXCLUDED.updated_at \
                     THEN EXCLUDED.status ELSE wallets_rm.status END, \
                   updated_at = greatest(wallets_rm.updated_at, EXCLUDED.updated_at) \
                 WHERE wallets_rm.updated_at < EXCLUDED.updated_at \
                   OR (wallets_rm.created_at IS NULL AND EXCLUDED.created_at IS NOT NULL)",
            )
            .bind(w.wallet_id)
            .bind(w.user_id)
            .bind(&w.currency)
            .bind(&w.status)
            .bind(created_at)
            .bind(event.occurred_at)
            .execute(&mut *tx)
            .await?;
        }
        LEDGER_ENTRY_POSTED => {
            let l: TransferResult = event.data_as().map_err(|e| malformed(event, &e))?;
            insert_ledger(tx, &[&l]).await?;
        }
        types::USER_CREATED => {
            let u: UserCreated = event.data_as().map_err(|e| malformed(event, &e))?;
            // A KYC decision may have arrived first: keep it, fill in what creation knows.
            sqlx::query(
                "INSERT INTO users_rm (user_id, created_at, account_tier) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO UPDATE SET created_at = EXCLUDED.created_at, \
                   account_tier = coalesce(users_rm.account_tier, EXCLUDED.account_tier)",
            )
            .bind(u.user_id)
            .bind(event.occurred_at)
            .bind(u.account_tier.as_str())
            .execute(&mut *tx)
            .await?;
        }
        types::USER_KYC_UPDATED => {
            let u: KycUpdated = event.data_as().map_err(|e| malformed(event, &e))?;
            let status = u.decision.kyc_status.as_str();
            sqlx::query(
                "INSERT INTO users_rm (user_id, kyc_status, kyc_updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO UPDATE SET kyc_status = EXCLUDED.kyc_status, \
                   kyc_updated_at = EXCLUDED.kyc_updated_at \
                 WHERE users_rm.kyc_updated_at IS NULL OR users_rm.kyc_updated_at < EXCLUDED.kyc_updated_at",
            )
            .bind(u.user_id)
            .bind(status)
            .bind(event.occurred_at)
            .execute(&mut *tx)
            .await?;
        }
        types::AML_FLAGGED | types::AML_CLEARED => {
            let a: AmlDecision = event.data_as().map_err(|e| malformed(event, &e))?;
            let decision = if event.event_type == types::AML_FLAGGED {
                "flagged"
            } else {
                "cleared"
            };
            sqlx::query(
                "INSERT INTO aml_rm (event_id, decision, payment_id, user_id, rule, occurred_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(event.id)
            .bind(decision)
            .bind(a.payment_id)
            .bind(a.user_id)
            .bind(a.rule)
            .bind(event.occurred_at)
            .execute(&mut *tx)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// The payment a `payment.*` event carries, or `None` for a [`BarePaymentRequest`].
fn payment_fact(event: &Event) -> Result<Option<PaymentFact>, HandlerError> {
    match event.data_as::<PaymentEvent>() {
        Ok(p) => PaymentFact::of(p)
            .map(Some)
            .map_err(|e| malformed(event, &e)),
        Err(e) => {
            if event.event_type == types::PAYMENT_REQUESTED
                && let Ok(bare) = event.data_as::<BarePaymentRequest>()
            {
                tracing::debug!(payment_id = %bare.payment_id, event_id = %event.id,
                    "a payment.requested without the payment carries no fact; skipped");
                return Ok(None);
            }
            Err(malformed(event, &e))
        }
    }
}

/// The row of `payments_rm` that one fact, or a batch's facts of one payment, propose.
struct PaymentRow<'a> {
    /// Whose fields no update changes (user, kind, amount, currency, created_at): the row
    /// is inserted with them.
    first: &'a PaymentFact,
    /// Whose status, failure and completion the row takes, and its `occurred_at`.
    newest: &'a PaymentFact,
    at: DateTime<Utc>,
    from_wallet_id: Option<Uuid>,
    to_wallet_id: Option<Uuid>,
}

impl<'a> PaymentRow<'a> {
    fn of(fact: &'a PaymentFact, at: DateTime<Utc>) -> Self {
        Self {
            first: fact,
            newest: fact,
            at,
            from_wallet_id: fact.from_wallet_id,
            to_wallet_id: fact.to_wallet_id,
        }
    }
}

/// Whether the fact `(status, at)` is newer than `held`: of a later stage
/// ([`payment::Status::stage`]), or of the same stage and a later `occurred_at`. By
/// stage first, because each replica of C stamps its events by its own clock: a
/// sweeper's re-publication of a PENDING payment, on a replica whose clock ran ahead,
/// was stamped after the completion another replica published just after it, and the
/// payment stayed PENDING here for good. [`upsert_payments`] compares the same way, and
/// keeps the latest time it applied (a later stage stamped earlier does not take it
/// back, or a release comparing times alone would take a later-stamped PENDING again).
fn newer(held: (payment::Status, DateTime<Utc>), fact: (payment::Status, DateTime<Utc>)) -> bool {
    (held.0.stage(), held.1) < (fact.0.stage(), fact.1)
}

/// [`payment::Status::stage`] of the status in `column`, in SQL.
fn stage_in_sql(column: &str) -> String {
    let cases: String = payment::Status::ALL
        .iter()
        .map(|s| format!("WHEN '{}' THEN {} ", s.as_str(), s.stage()))
        .collect();
    format!("(CASE {column} {cases}ELSE -1 END)")
}

/// Upserts `rows` (at most one per payment: PostgreSQL refuses to update a row twice in
/// one statement) in one statement, in payment id order. A row only takes a fact newer
/// than the one it holds ([`newer`]: a duplicate, a late or re-published event changes
/// nothing), and keeps a wallet once known.
async fn upsert_payments(
    tx: &mut PgConnection,
    rows: &[PaymentRow<'_>],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.first.payment_id).collect();
    let users: Vec<Uuid> = rows.iter().map(|r| r.first.user_id).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.first.kind.as_str()).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.newest.status.as_str()).collect();
    // As decimals, the type `Amount` encodes as.
    let amounts: Vec<_> = rows.iter().map(|r| r.first.amount.decimal()).collect();
    let currencies: Vec<&str> = rows.iter().map(|r| r.first.currency.as_str()).collect();
    let failures: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.newest.failure.as_ref().map(|f| f.code.as_str()))
        .collect();
    let created: Vec<DateTime<Utc>> = rows.iter().map(|r| r.first.created_at).collect();
    let completed: Vec<Option<DateTime<Utc>>> =
        rows.iter().map(|r| r.newest.completed_at).collect();
    let at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.at).collect();
    let from: Vec<Option<Uuid>> = rows.iter().map(|r| r.from_wallet_id).collect();
    let to: Vec<Option<Uuid>> = rows.iter().map(|r| r.to_wallet_id).collect();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO payments_rm (payment_id, user_id, kind, status, amount, currency, failure_code, \
           created_at, completed_at, last_event_at, from_wallet_id, to_wallet_id) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::numeric[], \
           $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], \
           $11::uuid[], $12::uuid[]) \
           AS f(payment_id, user_id, kind, status, amount, currency, failure_code, created_at, \
             completed_at, last_event_at, from_wallet_id, to_wallet_id) \
         ORDER BY payment_id \
         ON CONFLICT (payment_id) DO UPDATE SET status = EXCLUDED.status, \
           failure_code = EXCLUDED.failure_code, completed_at = EXCLUDED.completed_at, \
           last_event_at = greatest(payments_rm.last_event_at, EXCLUDED.last_event_at), \
           from_wallet_id = coalesce(payments_rm.from_wallet_id, EXCLUDED.from_wallet_id), \
           to_wallet_id = coalesce(payments_rm.to_wallet_id, EXCLUDED.to_wallet_id) \
         WHERE ({held}, payments_rm.last_event_at) < ({fact}, EXCLUDED.last_event_at)",
        held = stage_in_sql("payments_rm.status"),
        fact = stage_in_sql("EXCLUDED.status"),
    )))
    .bind(ids)
    .bind(users)
    .bind(kinds)
    .bind(statuses)
    .bind(amounts)
    .bind(currencies)
    .bind(failures)
    .bind(created)
    .bind(completed)
    .bind(at)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Inserts ledger entries not held yet, in one statement, in entry id order.
async fn insert_ledger(
    tx: &mut PgConnection,
    entries: &[&TransferResult],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = entries.iter().map(|l| l.entry_id).collect();
    let transfers: Vec<Uuid> = entries.iter().map(|l| l.transfer_id).collect();
    let kinds: Vec<&str> = entries.iter().map(|l| l.kind.as_str()).collect();
    let amounts: Vec<_> = entries.iter().map(|l| l.money.amount().decimal()).collect();
    let currencies: Vec<&str> = entries.iter().map(|l| l.money.currency().code()).collect();
    let from: Vec<Uuid> = entries.iter().map(|l| l.from_wallet_id).collect();
    let to: Vec<Uuid> = entries.iter().map(|l| l.to_wallet_id).collect();
    let posted: Vec<DateTime<Utc>> = entries.iter().map(|l| l.created_at).collect();
    sqlx::query(
        "INSERT INTO ledger_rm (entry_id, transfer_id, kind, amount, currency, from_wallet_id, \
           to_wallet_id, posted_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::numeric[], $5::text[], \
           $6::uuid[], $7::uuid[], $8::timestamptz[]) \
           AS l(entry_id, transfer_id, kind, amount, currency, from_wallet_id, to_wallet_id, posted_at) \
         ORDER BY entry_id \
         ON CONFLICT (entry_id) DO NOTHING",
    )
    .bind(ids)
    .bind(transfers)
    .bind(kinds)
    .bind(amounts)
    .bind(currencies)
    .bind(from)
    .bind(to)
    .bind(posted)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The one row that applying `facts` (one payment's, in batch order) one by one leaves,
/// whatever row was held; `None` when that depends on the row held.
///
/// One by one, the first fact applies (an insert, or an update if newer than the row,
/// [`newer`]), then each strictly newer than all before it (of equal stages and times,
/// the first). So an
/// insert takes the first fact's unchanging fields, the status is the first newest
/// fact's, and a wallet is the first one the applied facts name (`coalesce`). Over a
/// held row only the applied facts newer than it apply, so the wallet depends on the row
/// if they name different ones or the newest names none after an older one did. C never
/// publishes that (a payment's events all carry its wallets, fixed at creation); such a
/// payment is applied fact by fact.
fn fold(facts: &[(PaymentFact, DateTime<Utc>)]) -> Option<PaymentRow<'_>> {
    let ((first, first_at), rest) = facts.split_first()?;
    let mut row = PaymentRow::of(first, *first_at);
    let (mut from, mut to) = (
        Named::new(first.from_wallet_id),
        Named::new(first.to_wallet_id),
    );
    for (fact, at) in rest {
        if newer((row.newest.status, row.at), (fact.status, *at)) {
            row.newest = fact;
            // As the upsert keeps it: the latest time applied, never earlier.
            row.at = row.at.max(*at);
            from.see(fact.from_wallet_id);
            to.see(fact.to_wallet_id);
        }
    }
    row.from_wallet_id = from.settled(row.newest.from_wallet_id)?;
    row.to_wallet_id = to.settled(row.newest.to_wallet_id)?;
    Some(row)
}

/// The first wallet a payment's applied facts name; `conflict` once another names another.
struct Named {
    first: Option<Uuid>,
    conflict: bool,
}

impl Named {
    fn new(wallet: Option<Uuid>) -> Self {
        Self {
            first: wallet,
            conflict: false,
        }
    }

    fn see(&mut self, wallet: Option<Uuid>) {
        match (self.first, wallet) {
            (None, wallet) => self.first = wallet,
            (Some(a), Some(b)) if a != b => self.conflict = true,
            _ => {}
        }
    }

    /// The wallet, when `coalesce` over the applied facts leaves it over any row held:
    /// every applied fact names none or the one the newest (`newest`) names.
    fn settled(&self, newest: Option<Uuid>) -> Option<Option<Uuid>> {
        (!self.conflict && (self.first.is_none() || self.first == newest)).then_some(self.first)
    }
}

/// Applies a consumer batch in the caller's transaction, answering per event: every
/// payment fact in one statement, every ledger entry in another, the other events
/// through [`project`] in turn. Each table is written by one event type family only, so
/// the result is what applying the events one by one in batch order leaves.
pub async fn project_batch(
    tx: &mut PgConnection,
    events: &[&Event],
) -> Result<Vec<Result<(), HandlerError>>, HandlerError> {
    let mut results: Vec<Result<(), HandlerError>> = Vec::with_capacity(events.len());
    // Each payment's facts in batch order; payments and entries in id order, the order
    // the statements take their rows' locks in.
    let mut payments: BTreeMap<Uuid, Vec<(PaymentFact, DateTime<Utc>)>> = BTreeMap::new();
    let mut ledger: BTreeMap<Uuid, TransferResult> = BTreeMap::new();
    let mut others = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let t = event.event_type.as_str();
        let parsed = if t.starts_with("payment.") {
            payment_fact(event).map(|fact| {
                if let Some(p) = fact {
                    payments
                        .entry(p.payment_id)
                        .or_default()
                        .push((p, event.occurred_at));
                }
            })
        } else if t == LEDGER_ENTRY_POSTED {
            event
                .data_as::<TransferResult>()
                .map(|l| {
                    // One by one, the first of an entry inserts it and the others do
                    // nothing; one statement need not rely on DO NOTHING within itself.
                    ledger.entry(l.entry_id).or_insert(l);
                })
                .map_err(|e| malformed(event, &e))
        } else {
            others.push((i, *event));
            Ok(())
        };
        results.push(parsed);
    }
    let mut rows = Vec::with_capacity(payments.len());
    let mut one_by_one = Vec::new();
    for facts in payments.values() {
        match fold(facts) {
            Some(row) => rows.push(row),
            None => one_by_one.extend(facts.iter().map(|(p, at)| PaymentRow::of(p, *at))),
        }
    }
    if !rows.is_empty() {
        upsert_payments(tx, &rows).await?;
    }
    for row in &one_by_one {
        upsert_payments(tx, std::slice::from_ref(row)).await?;
    }
    if !ledger.is_empty() {
        let entries: Vec<&TransferResult> = ledger.values().collect();
        insert_ledger(tx, &entries).await?;
    }
    for (i, event) in others {
        match project(tx, event).await {
            // A failed statement aborts the transaction: the batch is lost.
            Err(HandlerError::Transient(e)) => return Err(HandlerError::Transient(e)),
            // `project` refuses an event before it writes anything.
            answer => results[i] = answer,
        }
    }
    Ok(results)
}

pub struct Projector;

impl Handler for Projector {
    async fn handle(&self, tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        project(tx, event).await
    }

    /// Payment facts in one statement, ledger entries in another ([`project_batch`]).
    fn handle_batch<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [&'a Event],
    ) -> impl Future<Output = Result<Vec<Result<(), HandlerError>>, HandlerError>> + Send + 'a {
        project_batch(tx, events)
    }
}
