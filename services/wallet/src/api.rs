//! HTTP handlers of service B.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use finflow_contracts::catalog;
use finflow_platform::error::{self, ErrorBody, ErrorEnvelope, unique_violation};
use finflow_platform::events::{Event, outbox, types};
use finflow_platform::fx::Rates;
use finflow_platform::{
    Amount, ApiError, ApiResult, Currency, Identity, Json, Money, Path, Query, UserId,
};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use finflow_contracts::wallet::{BATCH_MAX, TransferBatch, VoidRequest, WalletEvent};
pub use finflow_contracts::wallet::{InternalWallet, RemainingLimits, Wallet};

use crate::ledger::{self, Applied, Spend, TransferRequest, TransferResult};
use crate::limits::TierLimits;
use crate::users::{UserState, Users};

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub users: Users,
    /// Per tier, in the reference currency of `rates`.
    pub limits: Arc<TierLimits>,
    pub rates: Arc<Rates>,
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
        create_wallet, list_wallets; get_wallet; balance; activate; set_status; transactions;
        internal_wallet; transfer; transfer_batch; void_transfer)
}

/// A wallet with what its owner sent today (`ledger::spent_today` in the same read).
#[derive(sqlx::FromRow)]
struct SpendingWallet {
    #[sqlx(flatten)]
    wallet: WalletRow,
    spent_today: Amount,
}

#[derive(sqlx::FromRow)]
struct WalletRow {
    id: Uuid,
    user_id: Option<Uuid>,
    currency: Currency,
    status: String,
    /// Who froze a frozen wallet (`owner` or `staff`); see [`set_status`].
    frozen_by: Option<String>,
    /// Set once its owner activated it (a trigger keeps it); a lifted freeze returns
    /// the wallet to `pending` while this is unset.
    activated_at: Option<DateTime<Utc>>,
    balance: Amount,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl WalletRow {
    fn view(&self) -> Result<Wallet, ApiError> {
        let balance =
            Money::new(self.balance, self.currency).map_err(|e| ApiError::internal(&e))?;
        Ok(Wallet {
            id: self.id,
            user_id: self
                .user_id
                .ok_or_else(|| ApiError::internal(&"a system account was shown"))?,
            currency: self.currency.code().to_owned(),
            balance: balance.amount_string(),
            status: self.status.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

const WALLET_COLUMNS: &str =
    "id, user_id, currency, status, frozen_by, activated_at, balance, created_at, updated_at";

/// A user wallet the caller may see: their own, or any for `ops`. Anything else is
/// 404, so wallet ids cannot be probed.
async fn visible_wallet(pool: &PgPool, who: &Identity, id: Uuid) -> Result<WalletRow, ApiError> {
    let row: Option<WalletRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {WALLET_COLUMNS} FROM wallets WHERE id = $1 AND kind = 'user'"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let caller = who.user_id().ok();
    row.filter(|w| w.user_id == caller || who.has_role("ops"))
        .ok_or_else(|| ApiError::not_found("wallet not found"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWallet {
    #[schema(value_type = finflow_platform::Currency, example = "USD")]
    pub currency: Currency,
}

/// Creates a wallet in `pending`, once the user's KYC is verified *as A knows it now*
/// (not as the token says: a user verified a minute ago needs no new login).
#[utoipa::path(post, path = "/api/v1/wallets", tag = "wallets", request_body = CreateWallet,
    responses((status = 201, body = Wallet),
        (status = 400, body = ErrorEnvelope, description = "not an ISO 4217 currency code with minor units, or a currency FinFlow has no reference rate for (reason currency_not_supported)"),
        (status = 403, body = ErrorEnvelope, description = "KYC_REQUIRED (KYC not verified), not a user token, or a wallet of the caller is frozen by staff (details.reason staff_freeze)"),
        (status = 409, body = ErrorEnvelope, description = "the caller already has a wallet in this currency")))]
async fn create_wallet(
    State(s): State<AppState>,
    UserId(user_id): UserId,
    Json(req): Json<CreateWallet>,
) -> ApiResult {
    s.rates.require(req.currency)?;
    s.users
        .current(user_id)
        .await?
        .require_verified("open a wallet")?;
    let mut tx = s.pool.begin().await?;
    hold_wallets_of(&mut tx, user_id).await?;
    refuse_while_staff_froze(&mut *tx, user_id).await?;
    let row: WalletRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO wallets (id, user_id, kind, currency, status) VALUES ($1, $2, 'user', $3, 'pending') \
         RETURNING {WALLET_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(user_id)
    .bind(req.currency)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| match unique_violation(&e) {
        Some("wallets_user_currency_key") => {
            ApiError::conflict(format!("you already have a {} wallet", req.currency))
        }
        _ => e.into(),
    })?;
    let event = Event::new(
        catalog::WALLET.name,
        types::WALLET_CREATED,
        &WalletEvent {
            wallet_id: row.id,
            user_id,
            currency: req.currency.code().to_owned(),
            status: "pending".to_owned(),
            previous_status: None,
        },
    )
    .map_err(|e| ApiError::internal(&e))?;
    outbox::enqueue(&mut tx, &event).await?;
    tx.commit().await?;
    Ok(error::with_status(StatusCode::CREATED, row.view()?))
}

#[utoipa::path(get, path = "/api/v1/wallets", tag = "wallets",
    responses((status = 200, body = Vec<Wallet>),
        (status = 403, body = ErrorEnvelope, description = "not a user token")))]
async fn list_wallets(State(s): State<AppState>, UserId(me): UserId) -> ApiResult {
    let rows: Vec<WalletRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {WALLET_COLUMNS} FROM wallets WHERE user_id = $1 AND kind = 'user' ORDER BY created_at"
    )))
    .bind(me)
    .fetch_all(&s.pool)
    .await?;
    let wallets = rows
        .iter()
        .map(WalletRow::view)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(error::ok(wallets))
}

#[utoipa::path(get, path = "/api/v1/wallets/{id}", tag = "wallets", params(("id" = Uuid, Path)),
    responses((status = 200, body = Wallet), (status = 400, body = ErrorEnvelope, description = "the id is not a UUID"),
        (status = 404, body = ErrorEnvelope)))]
async fn get_wallet(State(s): State<AppState>, who: Identity, Path(id): Path<Uuid>) -> ApiResult {
    Ok(error::ok(visible_wallet(&s.pool, &who, id).await?.view()?))
}

#[derive(Serialize, ToSchema)]
struct Balance {
    wallet_id: Uuid,
    balance: String,
    currency: String,
    status: String,
}

#[utoipa::path(get, path = "/api/v1/wallets/{id}/balance", tag = "wallets", params(("id" = Uuid, Path)),
    responses((status = 200, body = Balance), (status = 400, body = ErrorEnvelope, description = "the id is not a UUID"),
        (status = 404, body = ErrorEnvelope)))]
async fn balance(State(s): State<AppState>, who: Identity, Path(id): Path<Uuid>) -> ApiResult {
    let w = visible_wallet(&s.pool, &who, id).await?.view()?;
    Ok(error::ok(Balance {
        wallet_id: w.id,
        balance: w.balance,
        currency: w.currency,
        status: w.status,
    }))
}

/// `pending` to `active`, by the owner. Activating an active wallet changes nothing; a
/// frozen wallet is unfrozen through `PUT .../status`, not here.
#[utoipa::path(post, path = "/api/v1/wallets/{id}/activate", tag = "wallets", params(("id" = Uuid, Path)),
    responses((status = 200, body = Wallet), (status = 400, body = ErrorEnvelope, description = "the id is not a UUID"),
        (status = 403, body = ErrorEnvelope, description = "only the owner activates a wallet, and not while another wallet of theirs is frozen by staff (details.reason staff_freeze)"),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope, description = "the wallet is frozen, or changed meanwhile")))]
async fn activate(State(s): State<AppState>, who: Identity, Path(id): Path<Uuid>) -> ApiResult {
    let wallet = visible_wallet(&s.pool, &who, id).await?;
    if wallet.user_id != who.user_id().ok() {
        return Err(ApiError::forbidden("only the owner activates a wallet"));
    }
    match wallet.status.as_str() {
        "active" => Ok(error::ok(wallet.view()?)),
        "frozen" => Err(ApiError::conflict(
            "the wallet is frozen; it is unfrozen through its status",
        )),
        _ => Ok(error::ok(
            change_status(&s.pool, &wallet, "active", None, true).await?,
        )),
    }
}

/// Whether a wallet of `staff` and a wallet of `owner` ever took part in one journal
/// entry: a payment either way, or its reversal.
async fn exchanged_money(pool: &PgPool, staff: Uuid, owner: Uuid) -> Result<bool, ApiError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM wallets mine \
           JOIN ledger_lines ml ON ml.wallet_id = mine.id \
           JOIN ledger_lines tl ON tl.entry_id = ml.entry_id \
           JOIN wallets theirs ON theirs.id = tl.wallet_id \
         WHERE mine.user_id = $1 AND theirs.user_id = $2)",
    )
    .bind(staff)
    .bind(owner)
    .fetch_one(pool)
    .await?)
}

/// Takes `user`'s lock over the statuses of their wallets until the transaction ends:
/// opening, activating, freezing and unfreezing any of them take turns, so a freeze and
/// an activation elsewhere cannot each miss the other.
async fn hold_wallets_of(tx: &mut PgConnection, user: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('wallets-of:' || $1::text, 13))")
        .bind(user)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A staff freeze is not escaped through another wallet: while any wallet of `user` is
/// frozen by staff, no other is opened, activated or freed from a freeze of its owner's
/// (wallets already active stay so: staff freeze each one they mean to stop). 403
/// `staff_freeze`. A freeze of the owner's own stops nothing else. Call under
/// [`hold_wallets_of`].
async fn refuse_while_staff_froze(
    db: impl sqlx::PgExecutor<'_>,
    user: Uuid,
) -> Result<(), ApiError> {
    let frozen: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM wallets WHERE user_id = $1 AND kind = 'user' \
         AND status = 'frozen' AND frozen_by IS DISTINCT FROM 'owner')",
    )
    .bind(user)
    .fetch_one(db)
    .await?;
    if frozen {
        return Err(ApiError::forbidden(
            "a wallet of yours was frozen by staff: no other is opened, activated or unfrozen until it is lifted",
        )
        .with_details(serde_json::json!({ "reason": "staff_freeze" })));
    }
    Ok(())
}

/// The services `/internal/*` opens to: payments are C's alone.
const PAYMENT_SERVICE: &[&str] = &["payment"];

/// The body of `PUT .../status`: `{"status": "frozen"}`, or the bare string `"frozen"`;
/// both are accepted.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StatusChange {
    Object { status: WalletStatus },
    Bare(WalletStatus),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WalletStatus {
    Active,
    Frozen,
}

/// Freezes or unfreezes a wallet; emits `wallet.status_changed`.
///
/// Who may: the owner freezes their wallet and lifts their own freeze; `ops` freezes
/// and unfreezes other people's wallets. A freeze records who put it on, because an
/// owner who could lift a staff freeze would make freezing pointless. A staff member
/// does not change the status of their own wallet at all, or one person would be both
/// the one frozen and the one deciding (staff: `ops` or `compliance`), nor of a wallet
/// whose owner they exchanged money with (a party to a dispute deciding it). Refusals are
/// `403 FORBIDDEN` with `details.reason` `staff_freeze`, `own_wallet` or `party`. A pending
/// wallet is not activated here: that is its owner's step (`POST .../activate`), `409
/// CONFLICT` with `details.reason` `pending`; staff may freeze it, and lifting that
/// freeze returns it to `pending`.
#[utoipa::path(put, path = "/api/v1/wallets/{id}/status", tag = "wallets", params(("id" = Uuid, Path)),
    request_body = StatusChange,
    responses((status = 200, body = Wallet), (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope, description = "the wallet is pending (its owner activates it), or changed meanwhile")))]
async fn set_status(
    State(s): State<AppState>,
    who: Identity,
    Path(id): Path<Uuid>,
    Json(change): Json<StatusChange>,
) -> ApiResult {
    let target = match change {
        StatusChange::Object { status } | StatusChange::Bare(status) => status,
    };
    let wallet = visible_wallet(&s.pool, &who, id).await?;
    let own = wallet.user_id.is_some() && wallet.user_id == who.user_id().ok();
    if own && who.is_staff() {
        return Err(ApiError::forbidden(
            "staff cannot change the status of their own wallet; another staff member must",
        )
        .with_details(serde_json::json!({ "reason": "own_wallet" })));
    }
    if !own
        && let (Some(owner), Ok(me)) = (wallet.user_id, who.user_id())
        && exchanged_money(&s.pool, me, owner).await?
    {
        return Err(ApiError::counterparty("this wallet's owner"));
    }
    // Not the owner: `visible_wallet` let the caller through as `ops`.
    let by = if own { "owner" } else { "staff" };
    // A freeze nobody attributed (made before freezes were) counts as staff's.
    let staff_freeze = wallet.status == "frozen" && wallet.frozen_by.as_deref() != Some("owner");
    match target {
        WalletStatus::Active if staff_freeze && own => Err(ApiError::forbidden(
            "the wallet was frozen by staff; only staff can unfreeze it",
        )
        .with_details(serde_json::json!({ "reason": "staff_freeze" }))),
        WalletStatus::Active if wallet.status == "active" => Ok(error::ok(wallet.view()?)),
        // Activation is the owner's step (`activate`): staff unfreeze, they do not activate.
        WalletStatus::Active if wallet.status == "pending" => Err(ApiError::conflict(
            "the wallet is pending: its owner activates it (POST /api/v1/wallets/{id}/activate)",
        )
        .with_details(serde_json::json!({ "reason": "pending" }))),
        // A freeze lifted leaves the wallet where its owner had it.
        WalletStatus::Active => {
            let to = if wallet.activated_at.is_some() {
                "active"
            } else {
                "pending"
            };
            Ok(error::ok(
                change_status(&s.pool, &wallet, to, None, own).await?,
            ))
        }
        // Staff freezing an owner-frozen wallet makes it theirs to lift; any other
        // freeze of a frozen wallet changes nothing.
        WalletStatus::Frozen if wallet.status == "frozen" && (staff_freeze || own) => {
            Ok(error::ok(wallet.view()?))
        }
        WalletStatus::Frozen => Ok(error::ok(
            change_status(&s.pool, &wallet, "frozen", Some(by), own).await?,
        )),
    }
}

/// Moves `wallet` to `to`, frozen by `frozen_by`, if nobody changed its status or its
/// freeze since it was read (an owner lifting their freeze must not lift a staff freeze
/// made meanwhile), and emits the event in the same transaction. `by_owner`: the
/// wallet's owner asks (an activation, or lifting a freeze of their own), not staff.
async fn change_status(
    pool: &PgPool,
    wallet: &WalletRow,
    to: &str,
    frozen_by: Option<&str>,
    by_owner: bool,
) -> Result<Wallet, ApiError> {
    let from = wallet.status.as_str();
    let mut tx = pool.begin().await?;
    if let Some(owner) = wallet.user_id {
        hold_wallets_of(&mut tx, owner).await?;
        // The owner making a wallet live (an activation, or lifting a freeze of their
        // own, which staff cannot tell from theirs by the status): refused while staff
        // hold another wallet of theirs, checked under the owner's lock, which a freeze
        // of that wallet takes too. Staff lifting a freeze decide that themselves.
        if to == "active" && by_owner {
            refuse_while_staff_froze(&mut *tx, owner).await?;
        }
    }
    let row: Option<WalletRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE wallets SET status = $3, frozen_by = $4, updated_at = now() \
         WHERE id = $1 AND status = $2 AND frozen_by IS NOT DISTINCT FROM $5 \
         RETURNING {WALLET_COLUMNS}"
    )))
    .bind(wallet.id)
    .bind(from)
    .bind(to)
    .bind(frozen_by)
    .bind(wallet.frozen_by.as_deref())
    .fetch_optional(&mut *tx)
    .await?;
    let row = row.ok_or_else(|| ApiError::conflict("the wallet changed meanwhile; retry"))?;
    let event = Event::new(
        catalog::WALLET.name,
        types::WALLET_STATUS_CHANGED,
        &WalletEvent {
            wallet_id: row.id,
            user_id: row.user_id.unwrap_or_default(),
            currency: row.currency.code().to_owned(),
            status: to.to_owned(),
            previous_status: Some(from.to_owned()),
        },
    )
    .map_err(|e| ApiError::internal(&e))?;
    // A staff freeze over an owner's changes who froze it, not the status: no event.
    if from != to {
        outbox::enqueue(&mut tx, &event).await?;
    }
    tx.commit().await?;
    row.view()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    cursor: Option<String>,
    limit: Option<u16>,
}

/// One ledger line of a wallet.
#[derive(Serialize, ToSchema, sqlx::FromRow)]
struct Line {
    #[serde(skip)]
    id: i64,
    entry_id: Uuid,
    transfer_id: Uuid,
    kind: String,
    /// Signed: negative leaves the wallet, positive enters it.
    #[schema(value_type = String)]
    amount: Amount,
    #[schema(value_type = String)]
    balance_after: Amount,
    counterparty_wallet_id: Option<Uuid>,
    created_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
struct LinePage {
    items: Vec<Line>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    next_cursor: Option<String>,
}

/// The wallet's ledger, newest first, with an opaque cursor.
#[utoipa::path(get, path = "/api/v1/wallets/{id}/transactions", tag = "wallets",
    params(("id" = Uuid, Path),
        ("cursor" = Option<String>, Query, min_length = 11, max_length = 11,
            pattern = "^[A-Za-z0-9_-]{10}[AEIMQUYcgkosw048]$",
            description = "`next_cursor` of the previous page (opaque: 8 bytes, unpadded base64url)"),
        ("limit" = Option<u16>, Query, minimum = 0, maximum = 65535,
            description = "page size, default 50; any value is clamped to 1..=200")),
    responses((status = 200, body = LinePage),
        (status = 400, body = ErrorEnvelope, description = "the id is not a UUID, a bad cursor or limit, or an unknown query parameter"),
        (status = 404, body = ErrorEnvelope)))]
async fn transactions(
    State(s): State<AppState>,
    who: Identity,
    Path(id): Path<Uuid>,
    Query(page): Query<Page>,
) -> ApiResult {
    visible_wallet(&s.pool, &who, id).await?;
    let size = finflow_platform::page::size(page.limit, 50, 200);
    let before = match page.cursor.as_deref() {
        None => i64::MAX,
        Some(c) => {
            decode_cursor(c).ok_or_else(|| ApiError::invalid_field("cursor", "invalid cursor"))?
        }
    };
    let rows: Vec<Line> = sqlx::query_as(
        "SELECT l.id, l.entry_id, e.transfer_id, e.kind, l.amount, l.balance_after, \
                CASE WHEN e.from_wallet_id = l.wallet_id THEN e.to_wallet_id ELSE e.from_wallet_id END \
                  AS counterparty_wallet_id, l.created_at \
         FROM ledger_lines l JOIN journal_entries e ON e.id = l.entry_id \
         WHERE l.wallet_id = $1 AND l.id < $2 ORDER BY l.id DESC LIMIT $3",
    )
    .bind(id)
    .bind(before)
    .bind(finflow_platform::page::fetch(size))
    .fetch_all(&s.pool)
    .await?;
    let (items, next_cursor) = finflow_platform::page::split(rows, size, |l| encode_cursor(l.id));
    Ok(error::ok(LinePage { items, next_cursor }))
}

fn encode_cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(id.to_be_bytes())
}

fn decode_cursor(c: &str) -> Option<i64> {
    let bytes: [u8; 8] = URL_SAFE_NO_PAD.decode(c).ok()?.try_into().ok()?;
    Some(i64::from_be_bytes(bytes))
}

/// The query of `GET /internal/wallets/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StandingQuery {
    /// Whether to ask A about the owner (default yes): C needs it for the wallet the
    /// money leaves (or a deposit enters), not for the payee's.
    standing: Option<bool>,
    /// The other wallet of a payment, read in the same query: C's one call to accept a
    /// transfer.
    counterpart: Option<Uuid>,
}

#[utoipa::path(get, path = "/internal/wallets/{id}", tag = "internal",
    params(("id" = Uuid, Path), ("standing" = Option<bool>, Query, description = "false: the wallet alone, without asking A about its owner"),
        ("counterpart" = Option<Uuid>, Query, description = "another wallet to read alone in the same query (a transfer's payee)")),
    responses((status = 200, body = InternalWallet), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
async fn internal_wallet(
    State(s): State<AppState>,
    who: Identity,
    Path(id): Path<Uuid>,
    Query(query): Query<StandingQuery>,
) -> ApiResult {
    // Only C moves money between wallets or reads them for a payment.
    who.require_service_of(PAYMENT_SERVICE)?;
    // The wallet, its counterpart, and what the owner sent today, in one read.
    let ids: Vec<Uuid> = std::iter::once(id).chain(query.counterpart).collect();
    let mut rows: Vec<SpendingWallet> = sqlx::query_as(
        // WALLET_COLUMNS, each qualified (user_daily_spend has a user_id too).
        "SELECT w.id, w.user_id, w.currency, w.status, w.frozen_by, w.activated_at, w.balance, \
                w.created_at, w.updated_at, coalesce(s.spent, 0) AS spent_today \
         FROM wallets w LEFT JOIN user_daily_spend s \
           ON s.user_id = w.user_id AND s.day = (now() AT TIME ZONE 'UTC')::date \
         WHERE w.id = ANY($1) AND w.kind = 'user'",
    )
    .bind(&ids)
    .fetch_all(&s.pool)
    .await?;
    let mut take = |wanted: Uuid| {
        rows.iter()
            .position(|w| w.wallet.id == wanted)
            .map(|i| rows.swap_remove(i))
    };
    let found = take(id).ok_or_else(|| ApiError::not_found("wallet not found"))?;
    let counterpart = match query.counterpart {
        None => None,
        // The same wallet twice is still one wallet, and the caller's to refuse.
        Some(other) if other == id => Some(Some(found.wallet.view()?)),
        Some(other) => Some(take(other).map(|w| w.wallet.view()).transpose()?),
    };
    let (row, spent) = (found.wallet, found.spent_today);
    let owner = row
        .user_id
        .ok_or_else(|| ApiError::internal(&"a user wallet without owner"))?;
    if query.standing == Some(false) {
        return Ok(error::ok(InternalWallet {
            wallet: row.view()?,
            owner_kyc_status: None,
            limits: None,
            counterpart,
        }));
    }
    let user = s.users.current(owner).await?;
    let limit = s.limits.for_tier(user.account_tier);
    let remaining_today = limit
        .per_day
        .checked_sub(spent)
        .ok()
        .filter(|a| !a.is_negative())
        .unwrap_or(Amount::ZERO);
    Ok(error::ok(InternalWallet {
        wallet: row.view()?,
        owner_kyc_status: Some(user.kyc_status),
        limits: Some(RemainingLimits {
            currency: s.rates.reference().code().to_owned(),
            per_transaction: limit.per_transaction,
            remaining_today,
        }),
        counterpart,
    }))
}

/// Makes a transfer id unusable unless it was applied already (service callers only).
#[utoipa::path(post, path = "/internal/transfers/{id}/void", tag = "internal", params(("id" = Uuid, Path)),
    request_body = VoidRequest, responses((status = 200, body = ledger::VoidOutcome), (status = 400, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)))]
async fn void_transfer(
    State(s): State<AppState>,
    who: Identity,
    Path(id): Path<Uuid>,
    Json(req): Json<VoidRequest>,
) -> ApiResult {
    // Only C moves money between wallets or reads them for a payment.
    who.require_service_of(PAYMENT_SERVICE)?;
    Ok(error::ok(ledger::void(&s.pool, id, &req.reason).await?))
}

/// Applies a transfer once (service callers only). 201 when applied now, 200 with the
/// same body when the transfer id had been applied before.
#[utoipa::path(post, path = "/internal/transfers", tag = "internal", request_body = TransferRequest,
    responses((status = 201, body = TransferResult), (status = 200, body = TransferResult),
        (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
async fn transfer(
    State(s): State<AppState>,
    who: Identity,
    Json(req): Json<TransferRequest>,
) -> ApiResult {
    // Only C moves money between wallets or reads them for a payment.
    who.require_service_of(PAYMENT_SERVICE)?;
    // A refusal is the ledger's to answer, under the transfer's lock ([`ledger::Allowance`]).
    let spend = ledger::Allowance(spend_of(&s, &req).await);
    let (result, applied) = ledger::apply(&s.pool, &req, spend).await?;
    let status = match applied {
        Applied::Now => StatusCode::CREATED,
        Applied::Before => StatusCode::OK,
    };
    Ok(error::with_status(status, result))
}

/// One transfer of a batch: what `POST /internal/transfers` would have answered for it,
/// its status beside its envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchOutcome {
    /// 201 applied now, 200 applied before, else the refusal's status.
    pub status: u16,
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<TransferResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// The outcomes of a batch, in the order of its transfers.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchOutcomes {
    pub results: Vec<BatchOutcome>,
}

impl BatchOutcome {
    fn of(result: Result<(TransferResult, Applied), ApiError>) -> Self {
        match result {
            Ok((data, applied)) => Self {
                status: match applied {
                    Applied::Now => StatusCode::CREATED,
                    Applied::Before => StatusCode::OK,
                }
                .as_u16(),
                success: true,
                data: Some(data),
                error: None,
            },
            Err(e) => Self {
                status: e.status().as_u16(),
                success: false,
                data: None,
                error: Some(ErrorBody {
                    code: e.code,
                    message: e.message,
                    details: e.details,
                }),
            },
        }
    }
}

/// Applies several transfers (service callers only): C's worker sends what it took off
/// its queue together. Each is applied at most once and answered as
/// `POST /internal/transfers` would answer it; together they cost one read of the
/// senders at A and one commit.
#[utoipa::path(post, path = "/internal/transfers/batch", tag = "internal", request_body = TransferBatch,
    responses((status = 200, body = BatchOutcomes), (status = 400, body = ErrorEnvelope, description = "no transfers, or more than 100"),
        (status = 403, body = ErrorEnvelope)))]
async fn transfer_batch(
    State(s): State<AppState>,
    who: Identity,
    Json(batch): Json<TransferBatch>,
) -> ApiResult {
    // Only C moves money between wallets or reads them for a payment.
    who.require_service_of(PAYMENT_SERVICE)?;
    if batch.transfers.is_empty() || batch.transfers.len() > BATCH_MAX {
        return Err(ApiError::invalid_field(
            "transfers",
            format!("between 1 and {BATCH_MAX} transfers"),
        ));
    }
    let spends = spends_of(&s, &batch.transfers).await?;
    let mut outcomes: Vec<Option<Result<(TransferResult, Applied), ApiError>>> =
        std::iter::repeat_with(|| None)
            .take(batch.transfers.len())
            .collect();
    // Refused ones too: a refusal is the ledger's to answer, under the transfer's lock
    // ([`ledger::Allowance`]).
    let mut todo: Vec<(usize, Option<Uuid>, TransferRequest, ledger::Allowance)> = batch
        .transfers
        .into_iter()
        .zip(spends)
        .enumerate()
        .map(|(i, (req, (sender, spend)))| (i, sender, req, ledger::Allowance(spend)))
        .collect();
    // Senders in one order: each transfer locks its sender's day of spending, and two
    // batches that took two senders in opposite orders would deadlock.
    todo.sort_by_key(|(_, sender, _, _)| *sender);
    let (order, transfers): (Vec<usize>, Vec<(TransferRequest, ledger::Allowance)>) = todo
        .into_iter()
        .map(|(i, _, req, spend)| (i, (req, spend)))
        .unzip();
    if !transfers.is_empty() {
        for (i, result) in order
            .into_iter()
            .zip(ledger::apply_all(&s.pool, &transfers).await?)
        {
            outcomes[i] = Some(result);
        }
    }
    let results = outcomes
        .into_iter()
        .map(|o| {
            BatchOutcome::of(
                o.unwrap_or_else(|| Err(ApiError::internal(&"a transfer without outcome"))),
            )
        })
        .collect();
    Ok(error::ok(BatchOutcomes { results }))
}

/// The wallet whose owner's KYC a transfer needs: the sender's for money leaving a user
/// (transfer, withdrawal), the owner's for a deposit. A reversal undoes a movement and
/// needs none.
fn kyc_wallet(req: &TransferRequest) -> Option<Uuid> {
    match req.kind {
        ledger::TransferKind::Transfer | ledger::TransferKind::Withdrawal => req.from_wallet_id,
        ledger::TransferKind::Deposit => req.to_wallet_id,
        ledger::TransferKind::Reversal => None,
    }
}

/// What a transfer counts against its user's limits, given the user as A holds them
/// now: refused unless verified; nothing for a deposit.
fn spend_for(
    s: &AppState,
    req: &TransferRequest,
    user: &UserState,
) -> Result<Option<Spend>, ApiError> {
    user.require_verified("move money")?;
    if req.kind == ledger::TransferKind::Deposit {
        return Ok(None);
    }
    let money = Money::positive(req.amount, req.currency)
        .map_err(|e| ApiError::invalid_field("amount", e.to_string()))?;
    Ok(Some(Spend {
        value: s.rates.value(money)?,
        limit: s.limits.for_tier(user.account_tier),
    }))
}

/// Whose KYC a transfer needs and what it counts against their limits ([`kyc_wallet`],
/// [`spend_for`]). Asked of A now, not when the payment was accepted: a payment held
/// for review may be released after a revocation. Nothing for a transfer applied
/// before ([`ledger::applied`]).
async fn spend_of(s: &AppState, req: &TransferRequest) -> Result<Option<Spend>, ApiError> {
    let Some(wallet) = kyc_wallet(req) else {
        return Ok(None);
    };
    if !ledger::applied(&s.pool, &[req.transfer_id])
        .await?
        .is_empty()
    {
        return Ok(None);
    }
    let owner: Option<Uuid> =
        sqlx::query_scalar("SELECT user_id FROM wallets WHERE id = $1 AND kind = 'user'")
            .bind(wallet)
            .fetch_optional(&s.pool)
            .await?
            .flatten();
    // No such wallet: the ledger answers that under lock.
    let Some(owner) = owner else {
        return Ok(None);
    };
    let user = s.users.current(owner).await?;
    spend_for(s, req, &user)
}

/// [`spend_of`] for a batch: what was applied in one read, the owners in one, the users
/// in one call to A. Per transfer, its sender (if any) and its spend or refusal; an
/// error is the batch's.
async fn spends_of(
    s: &AppState,
    transfers: &[TransferRequest],
) -> Result<Vec<(Option<Uuid>, Result<Option<Spend>, ApiError>)>, ApiError> {
    let needing: Vec<Uuid> = transfers
        .iter()
        .filter(|req| kyc_wallet(req).is_some())
        .map(|req| req.transfer_id)
        .collect();
    let applied = ledger::applied(&s.pool, &needing).await?;
    // What an applied transfer is answered does not depend on its sender now.
    let sender_wallet =
        |req: &TransferRequest| kyc_wallet(req).filter(|_| !applied.contains(&req.transfer_id));
    let wallets: Vec<Uuid> = transfers.iter().filter_map(sender_wallet).collect();
    let owners: std::collections::HashMap<Uuid, Uuid> = if wallets.is_empty() {
        std::collections::HashMap::new()
    } else {
        sqlx::query_as::<_, (Uuid, Uuid)>(
            "SELECT id, user_id FROM wallets WHERE id = ANY($1) AND kind = 'user' AND user_id IS NOT NULL",
        )
        // Planned for these ids each time: a plan cached while the table was small
        // would go on scanning all of it once it has grown (until an analyze replans it).
        .persistent(false)
        .bind(&wallets)
        .fetch_all(&s.pool)
        .await?
        .into_iter()
        .collect()
    };
    let mut users: Vec<Uuid> = owners.values().copied().collect();
    users.sort_unstable();
    users.dedup();
    let states = if users.is_empty() {
        std::collections::HashMap::new()
    } else {
        s.users.current_all(&users).await?
    };
    Ok(transfers
        .iter()
        .map(|req| {
            // No such wallet: the ledger answers that under lock.
            let Some(owner) = sender_wallet(req).and_then(|w| owners.get(&w).copied()) else {
                return (None, Ok(None));
            };
            let spend = states
                .get(&owner)
                .ok_or_else(|| ApiError::not_found("user not found"))
                .and_then(|user| spend_for(s, req, user));
            (Some(owner), spend)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert_eq!(decode_cursor("not-base64!"), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode([1, 2, 3])), None);
    }
}
