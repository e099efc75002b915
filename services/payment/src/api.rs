//! HTTP handlers of service C.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{SubsecRound, Utc};
use finflow_contracts::kyc::HoldDecision;
use finflow_platform::error::{self, ErrorEnvelope, unique_violation};
use finflow_platform::events::outbox;
use finflow_platform::fx::Rates;
use finflow_platform::identity::KycStatus;
use finflow_platform::page;
use finflow_platform::{
    Amount, ApiError, ApiResult, ErrorCode, Identity, Json, Path, Query, UserId,
};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use crate::idempotency::{Claim, Keys, Stored};
use crate::model::{
    DepositRequest, Kind, PAYMENT_COLUMNS, Payment, PaymentRequest, PaymentRow, Status,
    TransferRequest, WithdrawalRequest,
};
use crate::settle;
use crate::waiters::Waiters;
use crate::wallets::{InternalWallet, Wallets};

/// Settings the handlers need.
pub struct Settings {
    /// Payments worth more than this (in the reference currency of `rates`) wait in
    /// `ON_HOLD` for an AML decision.
    pub aml_hold_threshold: Amount,
    /// What a payment is worth in the reference currency, for the hold and limits.
    pub rates: Rates,
    /// Longest `Prefer: wait=N` honoured.
    pub max_wait: Duration,
    /// How long a duplicate waits for the first request with its key.
    pub duplicate_wait: Duration,
}

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub keys: Keys,
    pub wallets: Wallets,
    pub settings: Arc<Settings>,
    pub waiters: Waiters,
}

/// What the document has beside what the routes' attributes bring: schemas no route
/// names; its title and description come from the service catalog
/// ([`finflow_platform::service::run`] sets them).
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(finflow_platform::Currency)))]
pub(crate) struct ApiDoc;

/// The route table.
pub fn routes() -> OpenApiRouter<AppState> {
    finflow_platform::route_table!(ApiDoc:
        transfer; deposit; withdrawal; list; get_one; release; aml_decision;
        crate::reversal::reverse, crate::reversal::withdraw; crate::reversal::reversals)
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .ok_or_else(|| {
            ApiError::invalid_field("Idempotency-Key", "the Idempotency-Key header is required")
        })?
        .to_str()
        .map_err(|_| {
            ApiError::invalid_field(
                "Idempotency-Key",
                "the Idempotency-Key header must be ASCII",
            )
        })?
        .trim();
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::invalid_field(
            "Idempotency-Key",
            "the Idempotency-Key must be 1 to 255 characters",
        ));
    }
    Ok(key.to_owned())
}

/// `Prefer: wait=N` (RFC 7240), capped.
fn preferred_wait(headers: &HeaderMap, max: Duration) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix("wait="))
        .find_map(|n| n.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(max))
}

/// The headers of `POST /api/v1/payments/{transfer,deposit,withdrawal}` (documentation:
/// the handlers read them from the request's `HeaderMap`).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct PaymentHeaders {
    /// 1 to 255 visible ASCII characters (spaces and tabs inside, none around), unique
    /// per request of the caller's: a retry with the same key and body replays the
    /// first answer.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 255,
        pattern = r"^[\x21-\x7E]([\t\x20-\x7E]{0,253}[\x21-\x7E])?$"
    )]
    idempotency_key: String,
    /// `wait=N` (RFC 7240, N whole seconds, capped by the server) waits for a terminal
    /// status and answers 200 if it gets there; any other preference is accepted and
    /// ignored.
    #[param(
        rename = "Prefer",
        example = "wait=5",
        pattern = r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$"
    )]
    prefer: Option<String>,
}

/// What `POST /api/v1/payments/{transfer,deposit,withdrawal}` answer (documentation:
/// [`accept`] answers them).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum PaymentAnswers {
    /// accepted: PENDING or ON_HOLD (or a replay)
    #[response(status = 202)]
    Accepted(Payment),
    /// terminal within `Prefer: wait`
    #[response(status = 200)]
    Settled(Payment),
    /// VALIDATION_ERROR (header, fields, amount, currency not the wallets'), INSUFFICIENT_FUNDS or WALLET_NOT_ACTIVE
    #[response(status = 400)]
    Refused(ErrorEnvelope),
    /// not a user token, or the amount exceeds a tier limit (`details.reason` `tier_limit`)
    #[response(status = 403)]
    Forbidden(ErrorEnvelope),
    /// a wallet is not found or not the caller's
    #[response(status = 404)]
    NotFound(ErrorEnvelope),
    /// a request with this Idempotency-Key is still in progress
    #[response(status = 409)]
    InProgress(ErrorEnvelope),
    /// IDEMPOTENCY_KEY_REUSED: the key was used with a different request
    #[response(status = 422)]
    KeyReused(ErrorEnvelope),
}

#[utoipa::path(post, path = "/api/v1/payments/transfer", tag = "payments", request_body = TransferRequest,
    params(PaymentHeaders),
    responses(PaymentAnswers))]
async fn transfer(
    s: State<AppState>,
    user: UserId,
    headers: HeaderMap,
    body: Json<PaymentRequest>,
) -> Response {
    accept(s, user, headers, Kind::Transfer, body).await
}

#[utoipa::path(post, path = "/api/v1/payments/deposit", tag = "payments", request_body = DepositRequest,
    params(PaymentHeaders),
    responses(PaymentAnswers))]
async fn deposit(
    s: State<AppState>,
    user: UserId,
    headers: HeaderMap,
    body: Json<PaymentRequest>,
) -> Response {
    accept(s, user, headers, Kind::Deposit, body).await
}

#[utoipa::path(post, path = "/api/v1/payments/withdrawal", tag = "payments", request_body = WithdrawalRequest,
    params(PaymentHeaders),
    responses(PaymentAnswers))]
async fn withdrawal(
    s: State<AppState>,
    user: UserId,
    headers: HeaderMap,
    body: Json<PaymentRequest>,
) -> Response {
    accept(s, user, headers, Kind::Withdrawal, body).await
}

fn stored_response(stored: Stored, replayed: bool) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::ACCEPTED);
    let mut response = (status, axum::Json(stored.body)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// Payments of one user that may wait for a compliance review at once; more above the
/// review threshold are refused (409, `details.reason` `too_many_held`) until one is
/// decided.
pub const MAX_HELD_PER_USER: usize = 10;

/// Accepts a payment: idempotency, checks, the row and its event in one transaction,
/// then 202 with the payment `PENDING` (or `ON_HOLD`), or its terminal state if the
/// client asked to wait and it got there.
async fn accept(
    State(s): State<AppState>,
    UserId(user): UserId,
    headers: HeaderMap,
    kind: Kind,
    Json(req): Json<PaymentRequest>,
) -> Response {
    let outcome = async {
        let key = idempotency_key(&headers)?;
        req.validate(kind)?;
        let hash = req.fingerprint(kind);
        let wait = preferred_wait(&headers, s.settings.max_wait);
        // Held (and renewed) until this request has answered.
        let _lease = match s
            .keys
            .claim(user, &key, &hash, s.settings.duplicate_wait)
            .await
        {
            Claim::Fresh(lease) => Some(lease),
            Claim::Unavailable => None,
            Claim::Mismatch => return Err(key_reused()),
            Claim::InFlight => {
                return Err(ApiError::conflict(
                    "a request with this Idempotency-Key is still in progress",
                ));
            }
            Claim::Done(stored) => {
                return Ok(match wait {
                    Some(w) => replay_after_wait(&s, &stored, w)
                        .await
                        .unwrap_or_else(|| stored_response(stored, true)),
                    None => stored_response(stored, true),
                });
            }
        };
        let result = create(&s, user, &key, &hash, kind, &req).await;
        let (row, fresh) = match result {
            Ok(r) => r,
            Err(e) => {
                // Nothing was created: free the key so a corrected request can use it.
                s.keys.release(user, &key).await;
                return Err(e);
            }
        };
        let stored = Stored {
            status: StatusCode::ACCEPTED.as_u16(),
            body: serde_json::json!({ "success": true, "data": row.view()? }),
        };
        s.keys.complete(user, &key, &hash, stored.clone()).await;
        let response = match wait {
            Some(w) => wait_for_terminal(&s, row.id, w).await?,
            None => stored_response(stored, !fresh),
        };
        Ok(response)
    }
    .await;
    outcome.unwrap_or_else(IntoResponse::into_response)
}

fn key_reused() -> ApiError {
    ApiError::new(
        ErrorCode::IdempotencyKeyReused,
        "this Idempotency-Key was used with a different request",
    )
}

async fn replay_after_wait(s: &AppState, stored: &Stored, wait: Duration) -> Option<Response> {
    let id: Uuid = serde_json::from_value(stored.body["data"]["id"].clone()).ok()?;
    wait_for_terminal(s, id, wait).await.ok()
}

/// Waits until the payment is terminal or `wait` passes: 200 when terminal, else 202.
/// Woken by the payment's settlement ([`Waiters`]); with every wait slot taken, answers
/// at once.
async fn wait_for_terminal(s: &AppState, id: Uuid, wait: Duration) -> Result<Response, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    // Watching before the first read: a settlement between the two is not missed.
    let mut watching = s.waiters.watch(id);
    let mut out_of_time = false;
    loop {
        let row = payment(&s.pool, id)
            .await?
            .ok_or_else(|| ApiError::not_found("payment not found"))?;
        let view = row.view()?;
        if view.status.is_terminal() {
            return Ok(error::ok(view));
        }
        let Some(wait) = watching.as_mut().filter(|_| !out_of_time) else {
            return Ok(error::with_status(StatusCode::ACCEPTED, view));
        };
        out_of_time = wait.next(deadline).await;
    }
}

async fn payment(pool: &PgPool, id: Uuid) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

async fn existing(
    pool: &PgPool,
    user: Uuid,
    key: &str,
    hash: &[u8],
) -> Result<Option<PaymentRow>, ApiError> {
    let row: Option<PaymentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE user_id = $1 AND idempotency_key = $2"
    )))
    .bind(user)
    .bind(key)
    .fetch_optional(pool)
    .await?;
    match row {
        Some(r) if r.request_hash != hash => Err(key_reused()),
        other => Ok(other),
    }
}

/// Checks the wallets with B, then records the payment and its event. Returns the row
/// and whether it was created now (false: the database already had this key).
async fn create(
    s: &AppState,
    user: Uuid,
    key: &str,
    hash: &[u8],
    kind: Kind,
    req: &PaymentRequest,
) -> Result<(PaymentRow, bool), ApiError> {
    let money = req.validate(kind)?;
    let value = s.settings.rates.value(money)?;
    // Redis may have forgotten a key it answered: the database is the ground truth. A
    // retry that passes the checks meets the unique key on insert below; one that fails
    // them (its first attempt spent the money) is answered with its payment here, not
    // with today's refusal. Either way a new key costs no extra read.
    let payee = match precheck(&s.wallets, user, kind, req, money, value).await {
        Ok(payee) => payee,
        Err(e) => {
            return match existing(&s.pool, user, key, hash).await? {
                Some(row) => Ok((row, false)),
                None => Err(e),
            };
        }
    };

    let status = if value > s.settings.aml_hold_threshold {
        Status::OnHold
    } else {
        Status::Pending
    };
    // A held payment waits for compliance, and costs its payer nothing meanwhile (a
    // deposit is not even funded): the count of them is bounded per user, under the
    // user's lock until this one is written, so parallel requests cannot pass it. Only
    // a held payment pays for the transaction.
    let held = if status == Status::OnHold {
        let mut tx = s.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('held:' || $1::text, 0))")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM payments WHERE user_id = $1 AND status = 'ON_HOLD'",
        )
        .bind(user)
        .fetch_one(&mut *tx)
        .await?;
        if waiting >= i64::try_from(MAX_HELD_PER_USER).unwrap_or(i64::MAX) {
            drop(tx);
            // A retry of a payment already made (Redis forgot its key) is answered with
            // it, as the unique key below would answer it: it is one of those held.
            if let Some(row) = existing(&s.pool, user, key, hash).await? {
                return Ok((row, false));
            }
            return Err(ApiError::conflict(format!(
                "{MAX_HELD_PER_USER} of your payments wait for a compliance review already; \
                 another one above the review threshold can be made once one is decided"
            ))
            .with_details(serde_json::json!({"reason": "too_many_held"})));
        }
        Some(tx)
    } else {
        None
    };
    // The row is known before it is written, so its event is too: the payment, its
    // outbox row and the relay's wake-up are one statement and one commit. This process
    // dates the payment, as every process dates the events it emits (`occurred_at`):
    // the platform's clocks are kept in step (NTP), and the sweeper's ages, counted in
    // minutes, do not notice a skew of milliseconds.
    let now = Utc::now().trunc_subsecs(6);
    let row = PaymentRow {
        id: Uuid::now_v7(),
        user_id: user,
        request_hash: hash.to_vec(),
        kind: kind.as_str().to_owned(),
        from_wallet_id: req.from_wallet_id,
        to_wallet_id: req.to_wallet_id,
        amount: money.amount(),
        currency: money.currency(),
        description: req.description.clone(),
        status: status.as_str().to_owned(),
        failure_code: None,
        failure_reason: None,
        created_at: now,
        updated_at: now,
        completed_at: None,
        payee_user_id: payee,
    };
    let event = outbox::stage(&settle::event_of(&row)?)?;
    let insert = sqlx::query(
        "WITH added AS (INSERT INTO payments (id, user_id, idempotency_key, request_hash, kind, from_wallet_id, \
           to_wallet_id, amount, currency, description, status, payee_user_id, created_at, updated_at) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13) RETURNING id), \
         queued AS (INSERT INTO outbox (event_id, event_type, payload, headers) \
           SELECT $14, $15, $16, $17 FROM added) \
         SELECT pg_notify($18, '') FROM added",
    )
    .bind(row.id)
    .bind(user)
    .bind(key)
    .bind(hash)
    .bind(kind.as_str())
    .bind(req.from_wallet_id)
    .bind(req.to_wallet_id)
    .bind(money.amount())
    .bind(money.currency())
    .bind(req.description.as_deref())
    .bind(status.as_str())
    .bind(payee)
    .bind(now)
    .bind(event.event_id)
    .bind(&event.event_type)
    .bind(&event.payload)
    .bind(&event.headers)
    .bind(outbox::NOTIFY_CHANNEL);
    // The held payment's transaction ends here either way: a unique violation below
    // reads the twin's row on another connection, with this one given back.
    let inserted = match held {
        Some(mut tx) => match insert.execute(&mut *tx).await {
            Ok(done) => tx.commit().await.map(|()| done),
            Err(e) => Err(e),
        },
        None => insert.execute(&s.pool).await,
    };
    match inserted {
        Ok(_) => {}
        Err(e) if unique_violation(&e) == Some("payments_user_idempotency_key") => {
            // A concurrent twin won the race (Redis was unavailable): answer with its payment.
            let row = existing(&s.pool, user, key, hash)
                .await?
                .ok_or_else(|| ApiError::internal(&"the conflicting payment vanished"))?;
            return Ok((row, false));
        }
        Err(e) => return Err(e.into()),
    }
    metrics::counter!("finflow_payments_accepted_total", "kind" => kind.as_str()).increment(1);
    Ok((row, true))
}

/// The checks answered at once: ownership, the caller's KYC, status, currency, funds
/// and limits as B knows them now (`value` is the payment's worth in the reference
/// currency the limits are stated in). The worker's transfer at B re-checks under
/// lock; this only spares the client a payment that is bound to fail. Answers whom the
/// payment pays: the destination wallet's owner (a withdrawal pays nobody here).
async fn precheck(
    wallets: &Wallets,
    user: Uuid,
    kind: Kind,
    req: &PaymentRequest,
    money: finflow_platform::Money,
    value: Amount,
) -> Result<Option<Uuid>, ApiError> {
    let owned = |w: &InternalWallet| w.wallet.user_id == user;
    let not_found = |id: Uuid| ApiError::not_found(format!("wallet {id} not found"));
    // The owner's standing (B asks A) only for the wallet the money leaves, or a deposit
    // enters; of a transfer's destination C needs whose it is, its currency and status,
    // which B reads in the same query: one call to B, whose latency is the client's.
    // Errors are reported source first.
    let found = |id: Uuid, e: ApiError| {
        if e.code == ErrorCode::NotFound {
            not_found(id)
        } else {
            e
        }
    };
    let (from, to) = match (kind, req.from_wallet_id, req.to_wallet_id) {
        (Kind::Deposit, _, Some(to)) => {
            (None, Some(wallets.get(to).await.map_err(|e| found(to, e))?))
        }
        (_, Some(from), Some(to)) => {
            let mut view = wallets
                .get_with(from, to)
                .await
                .map_err(|e| found(from, e))?;
            let payee = view
                .counterpart
                .take()
                .ok_or_else(|| ApiError::dependency("wallet", &"no counterpart in the answer"))?
                .ok_or_else(|| not_found(to))?;
            let payee = InternalWallet {
                wallet: payee,
                owner_kyc_status: None,
                limits: None,
                counterpart: None,
            };
            (Some(view), Some(payee))
        }
        (_, Some(from), None) => (
            Some(wallets.get(from).await.map_err(|e| found(from, e))?),
            None,
        ),
        // `PaymentRequest::validate` has refused every other shape.
        _ => {
            return Err(ApiError::validation(
                "the payment names no wallet of the caller",
            ));
        }
    };
    // The caller must own the wallet the money leaves (or, for a deposit, enters);
    // someone else's wallet is 404, as at B.
    let own = if kind == Kind::Deposit {
        to.as_ref()
    } else {
        from.as_ref()
    };
    if let Some(w) = own {
        if !owned(w) {
            return Err(not_found(w.wallet.id));
        }
        // As A knows it now: a verification revoked since the token was issued counts.
        if w.owner_kyc_status != Some(KycStatus::Verified) {
            return Err(ApiError::new(
                ErrorCode::KycRequired,
                "KYC verification is required to move money",
            )
            .with_details(serde_json::json!({ "kyc_status": w.owner_kyc_status })));
        }
    }
    if kind == Kind::Transfer && req.from_wallet_id == req.to_wallet_id {
        return Err(ApiError::invalid_field(
            "to_wallet_id",
            "a transfer needs two different wallets",
        ));
    }
    // Someone else's wallet a transfer pays: whether it is frozen (an investigation
    // under way) or not yet activated is its owner's business, not the payer's.
    let payee = to
        .as_ref()
        .filter(|w| kind == Kind::Transfer && !owned(w))
        .map(|w| w.wallet.id);
    for w in from.iter().chain(to.iter()).map(|w| &w.wallet) {
        if w.currency != money.currency().code() {
            return Err(ApiError::invalid_field(
                "currency",
                format!(
                    "wallet {} holds {}, the payment is in {}",
                    w.id,
                    w.currency,
                    money.currency()
                ),
            ));
        }
        if w.status != "active" && payee == Some(w.id) {
            return Err(cannot_receive(w.id));
        }
        if w.status != "active" {
            return Err(ApiError::new(
                ErrorCode::WalletNotActive,
                format!("wallet {} is {}", w.id, w.status),
            )
            .with_details(serde_json::json!({ "wallet_id": w.id, "status": w.status })));
        }
    }
    if let Some(from) = &from {
        let balance = from
            .wallet
            .balance()
            .map_err(|e| ApiError::dependency("wallet", &e))?;
        if balance < money.amount() {
            return Err(
                ApiError::new(ErrorCode::InsufficientFunds, "insufficient funds")
                    .with_details(serde_json::json!({ "wallet_id": from.wallet.id })),
            );
        }
        let over = |which: &str, limit: Amount| {
            ApiError::new(
                ErrorCode::Forbidden,
                format!("the amount exceeds your {which} limit of {limit}"),
            )
            .with_details(serde_json::json!({ "reason": "tier_limit", "limit": which }))
        };
        let limits = from
            .limits
            .as_ref()
            .ok_or_else(|| ApiError::dependency("wallet", &"no limits for the source wallet"))?;
        if value > limits.per_transaction {
            return Err(over("per-transaction", limits.per_transaction));
        }
        if value > limits.remaining_today {
            return Err(over("daily", limits.remaining_today));
        }
    }
    Ok(to.map(|w| w.wallet.user_id))
}

/// A payment the caller may see: theirs, or any for `ops`. Anything else is 404.
async fn visible(pool: &PgPool, who: &Identity, id: Uuid) -> Result<PaymentRow, ApiError> {
    let row = payment(pool, id).await?;
    let caller = who.user_id().ok();
    row.filter(|p| Some(p.user_id) == caller || who.has_role("ops"))
        .ok_or_else(|| ApiError::not_found("payment not found"))
}

#[utoipa::path(get, path = "/api/v1/payments/{id}", tag = "payments", params(("id" = Uuid, Path)),
    responses((status = 200, body = Payment), (status = 400, body = ErrorEnvelope, description = "the id is not a UUID"),
        (status = 404, body = ErrorEnvelope)))]
async fn get_one(State(s): State<AppState>, who: Identity, Path(id): Path<Uuid>) -> ApiResult {
    Ok(error::ok(visible(&s.pool, &who, id).await?.view()?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<Status>,
    cursor: Option<Uuid>,
    limit: Option<u16>,
}

#[derive(Serialize, ToSchema)]
struct PaymentPage {
    items: Vec<Payment>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    next_cursor: Option<Uuid>,
}

/// The caller's payments, newest first (ids are time-ordered UUIDv7, so the id is the cursor).
#[utoipa::path(get, path = "/api/v1/payments", tag = "payments",
    params(("status" = Option<Status>, Query),
        ("cursor" = Option<Uuid>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u16>, Query, minimum = 0, maximum = 65535,
            description = "page size, default 50; any value is clamped to 1..=200")),
    responses((status = 200, body = PaymentPage),
        (status = 400, body = ErrorEnvelope, description = "a bad or unknown query parameter"),
        (status = 403, body = ErrorEnvelope, description = "not a user token")))]
async fn list(
    State(s): State<AppState>,
    UserId(me): UserId,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let size = page::size(q.limit, 50, 200);
    let rows: Vec<PaymentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE user_id = $1 \
           AND ($2::uuid IS NULL OR id < $2) AND ($3::text IS NULL OR status = $3) \
         ORDER BY id DESC LIMIT $4"
    )))
    .bind(me)
    .bind(q.cursor)
    .bind(q.status.map(Status::as_str))
    .bind(page::fetch(size))
    .fetch_all(&s.pool)
    .await?;
    let (rows, next_cursor) = page::split(rows, size, |r| r.id);
    let items = rows
        .iter()
        .map(PaymentRow::view)
        .collect::<Result<_, _>>()?;
    Ok(error::ok(PaymentPage { items, next_cursor }))
}

/// Staff decide only on other people's payments: a staff member who could release or
/// reverse a payment they made, or one paid to them, would move money to themselves
/// with nobody else looking. `403 FORBIDDEN` with `details.reason = "own_payment"`.
/// Both ends are on the row; for a payment accepted before C recorded the payee, the
/// payee of a transfer is whoever owns the destination wallet at B (a deposit pays
/// the payer, a withdrawal pays nobody here).
///
/// Nor on the payment of someone they exchanged money with: a user who paid the
/// officer (a dollar to be noticed, a reward after the fact), or whom the officer paid,
/// has an interest the officer shares. Any payment C recorded between them, either
/// way, whatever became of it. E's clear of the alert holding the payment applies the
/// same rule to the payments E observed (services/kyc's `case_for_another`) before E
/// calls [`aml_decision`]. `403 FORBIDDEN` with `details.reason = "party"`. Payments
/// accepted before C recorded payees are not seen.
pub(crate) async fn for_another(
    wallets: &Wallets,
    db: impl sqlx::PgExecutor<'_>,
    who: &Identity,
    row: &PaymentRow,
) -> Result<(), ApiError> {
    staff_for_another(wallets, db, who.user_id()?, row).await
}

/// [`for_another`] of the staff member `me`, who need not be the caller (the operator
/// who asked for a reversal, when another makes it).
pub(crate) async fn staff_for_another(
    wallets: &Wallets,
    db: impl sqlx::PgExecutor<'_>,
    me: Uuid,
    row: &PaymentRow,
) -> Result<(), ApiError> {
    let payee = match (row.payee_user_id, row.kind()?, row.to_wallet_id) {
        (Some(payee), _, _) => Some(payee),
        (None, Kind::Transfer, Some(to)) if row.user_id != me => {
            Some(wallets.get_alone(to).await?.wallet.user_id)
        }
        _ => None,
    };
    if row.user_id == me || payee == Some(me) {
        return Err(ApiError::forbidden(
            "staff cannot decide on a payment they made or are paid by; another staff member must",
        )
        .with_details(serde_json::json!({ "reason": "own_payment" })));
    }
    let parties: Vec<Uuid> = std::iter::once(row.user_id).chain(payee).collect();
    let exchanged: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM payments \
           WHERE (user_id = $1 AND payee_user_id = ANY($2)) \
              OR (user_id = ANY($2) AND payee_user_id = $1))",
    )
    .bind(me)
    .bind(&parties)
    .fetch_one(db)
    .await?;
    if exchanged {
        return Err(ApiError::counterparty("a party to this payment"));
    }
    Ok(())
}

/// Releases a held payment to the worker (role `compliance`), never one of the
/// caller's own nor one of a party they exchanged money with ([`for_another`]); E
/// applies the same rule to a clear before it calls [`aml_decision`]. Not `ops`: a
/// payment is held for an AML review, and an operator's release would settle it
/// before compliance decided, whatever they decide after.
#[utoipa::path(post, path = "/api/v1/payments/{id}/release", tag = "payments", params(("id" = Uuid, Path)),
    responses((status = 200, body = Payment), (status = 400, body = ErrorEnvelope, description = "the id is not a UUID"),
        (status = 403, body = ErrorEnvelope, description = "not `compliance`, the caller's own payment (`details.reason` `own_payment`), or the caller and a party to it exchanged money (`details.reason` `party`)"),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope, description = "the payment's status does not allow it")))]
async fn release(State(s): State<AppState>, who: Identity, Path(id): Path<Uuid>) -> ApiResult {
    who.require_role("compliance")?;
    let mut tx = s.pool.begin().await?;
    let row = settle::lock(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment not found"))?;
    for_another(&s.wallets, &mut *tx, &who, &row).await?;
    let released = settle::transition(&mut tx, &row, Status::Pending, None).await?;
    tx.commit().await?;
    Ok(error::ok(released.view()?))
}

/// E's decision on the alert that holds payment `id` (service `kyc` only): `cleared`
/// releases it to the worker, `flagged` fails it; a payment no longer on hold is
/// answered as it is. The one way an AML review settles a hold: E's `aml.*` events on
/// the bus are not taken ([`crate::worker::AmlDecisions`]).
#[utoipa::path(put, path = "/internal/payments/{id}/aml", tag = "internal", params(("id" = Uuid, Path)),
    request_body = HoldDecision,
    responses((status = 200, body = Payment), (status = 400, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope, description = "not service `kyc`"),
        (status = 404, body = ErrorEnvelope, description = "no such payment (yet): E tells it again")))]
async fn aml_decision(
    State(s): State<AppState>,
    who: Identity,
    Path(id): Path<Uuid>,
    Json(decision): Json<HoldDecision>,
) -> ApiResult {
    who.require_service_of(&[finflow_contracts::catalog::KYC.name])?;
    let mut tx = s.pool.begin().await?;
    let row = settle::lock(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment not found"))?;
    let now = crate::worker::decide_hold(&mut tx, &row, decision.outcome).await?;
    tx.commit().await?;
    Ok(error::ok(now.view()?))
}

/// The refusal of a transfer to someone else's wallet that cannot receive it now, the
/// same whether it is frozen or pending.
pub(crate) fn cannot_receive(wallet: Uuid) -> ApiError {
    ApiError::new(
        ErrorCode::WalletNotActive,
        format!("wallet {wallet} cannot receive payments now"),
    )
    .with_details(serde_json::json!({ "wallet_id": wallet, "reason": "payee_cannot_receive" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_wait_is_read_and_capped() {
        let mut h = HeaderMap::new();
        h.insert("prefer", HeaderValue::from_static("respond-async, wait=5"));
        assert_eq!(
            preferred_wait(&h, Duration::from_secs(30)),
            Some(Duration::from_secs(5))
        );
        h.insert("prefer", HeaderValue::from_static("wait=600"));
        assert_eq!(
            preferred_wait(&h, Duration::from_secs(30)),
            Some(Duration::from_secs(30))
        );
        h.insert("prefer", HeaderValue::from_static("return=minimal"));
        assert_eq!(preferred_wait(&h, Duration::from_secs(30)), None);
    }

    #[test]
    fn an_idempotency_key_is_required_and_bounded() {
        let mut h = HeaderMap::new();
        assert!(idempotency_key(&h).is_err());
        h.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("abc"));
        assert_eq!(idempotency_key(&h).unwrap(), "abc");
        h.insert(
            IDEMPOTENCY_KEY,
            HeaderValue::from_str(&"k".repeat(256)).unwrap(),
        );
        assert!(idempotency_key(&h).is_err());
    }
}
