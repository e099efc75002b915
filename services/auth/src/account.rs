//! A user's own credentials: changing the password, and ending every session.
//!
//! Both end every session of the account (each refresh-token family), so a password or
//! a refresh token that leaked stops working once its owner acts. Access tokens already
//! issued live out their lifetime (`ACCESS_TOKEN_TTL_SECS`, 15 minutes by default): the
//! sidecars check them without asking A.

use axum::extract::State;
use chrono::Utc;
use finflow_contracts::catalog;
use finflow_contracts::identity::client_network;
use finflow_contracts::user::{PasswordChanged, PasswordReplacedVia as Via};
use finflow_platform::error::{self, ErrorEnvelope};
use finflow_platform::events::{Event, outbox, types};
use finflow_platform::identity::ClientIp;
use finflow_platform::text;
use finflow_platform::{ApiError, ApiResult, Json, UserId};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::{self, AppState, Session, USER_COLUMNS, User};
use crate::domain::Password;

/// `POST /api/v1/auth/password`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The account's password now. A wrong one is 403; every attempt past the checks of
    /// `new_password` counts towards
    /// `LOGIN_LIMIT_PER_ACCOUNT` a minute for the account from the client's address,
    /// and `LOGIN_LIMIT_PER_ADDRESS` for the address.
    #[schema(example = "correct horse battery")]
    pub current_password: String,
    /// Not the current password (409).
    #[schema(schema_with = text::schema::<Password>)]
    pub new_password: String,
}

/// What signing out everywhere ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionsEnded {
    /// Sessions that could still refresh and now cannot.
    pub sessions_ended: i64,
}

const PASSWORD_ATTEMPTS_LIMITED: &str = "too many password attempts, try again later";

fn wrong_password() -> ApiError {
    ApiError::forbidden("the current password is wrong")
        .with_details(serde_json::json!({ "field": "current_password" }))
}

/// Changes the caller's password, ends every session of the account and starts a new
/// one for the caller; the owner is mailed at the account's address
/// (`user.password_changed`). Needs the current password: an access token alone, which
/// a stolen device or a leaked log may give away, must not become the account for good.
#[utoipa::path(post, path = "/api/v1/auth/password", tag = "auth", request_body = PasswordChange,
    responses((status = 200, body = Session, description = "the password is changed and every session ended; the caller's new session"),
        (status = 400, body = ErrorEnvelope, description = "new_password breaks its rule"),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope, description = "current_password is wrong (details.field = current_password), or not a user token"),
        (status = 404, body = ErrorEnvelope, description = "the user no longer exists"),
        (status = 409, body = ErrorEnvelope, description = "new_password is the current password (details.field = new_password)"),
        (status = 429, body = ErrorEnvelope, description = "too many attempts for this account from this address, or from this address; see Retry-After")))]
pub(crate) async fn change_password(
    State(s): State<AppState>,
    UserId(me): UserId,
    ClientIp(ip): ClientIp,
    Json(req): Json<PasswordChange>,
) -> ApiResult {
    // Refused before any attempt counts or Argon2 runs.
    let new = Password::parse_field("new_password", &req.new_password)?;
    // Every attempt costs an Argon2 check (two when it succeeds) and is counted, as a
    // login is, where it comes from: per client address, and per account and address.
    // Not per account alone: a thief holding the account's token could then keep its
    // owner from ever changing the password. A success does not clear the count, or
    // changing a password back and forth would be Argon2 without a limit.
    let mut redis = s.redis.clone();
    let address = client_network(ip);
    crate::limits::hit(
        &mut redis,
        "password-address",
        &address,
        s.settings.login_limit_per_address,
        PASSWORD_ATTEMPTS_LIMITED,
    )
    .await?;
    let by_pair = crate::limits::hit(
        &mut redis,
        "password-account-address",
        &format!("{me}/{address}"),
        s.settings.login_limit_per_account,
        PASSWORD_ATTEMPTS_LIMITED,
    )
    .await?;
    let current: Option<String> =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
            .bind(me)
            .fetch_optional(&s.pool)
            .await?;
    let current = current.ok_or_else(|| ApiError::not_found("user not found"))?;
    let checked = s
        .passwords
        .verify(req.current_password.clone(), current.clone())
        .await;
    if !crate::limits::unless_busy(&redis, by_pair, checked).await? {
        return Err(wrong_password());
    }
    // Told only to whoever gave the current password, so it tells a guess nothing.
    if new.expose() == req.current_password {
        return Err(ApiError::conflict("new_password is the current password")
            .with_details(serde_json::json!({ "field": "new_password" })));
    }
    let new_hash = s.passwords.hash(new).await?;

    let mut tx = s.pool.begin().await?;
    // Only over the password just checked: of two changes at once, the later finds its
    // current password gone, as a wrong one.
    let (user, ended) = replace_password(&mut tx, me, &new_hash, Some(&current), Via::Change)
        .await?
        .ok_or_else(wrong_password)?;
    let family = api::Family::begin(&mut tx).await?;
    let session = api::start_session(&s, &mut tx, user, family).await?;
    tx.commit().await?;
    tracing::info!(user_id = %me, sessions_ended = ended, "password changed");
    Ok(error::ok(session))
}

/// Gives `user` the password hashed as `new_hash`, if its hash is still `current` (any,
/// when `None`), with what follows from it in the same transaction: every session ends,
/// reset tokens mailed before are revoked (they would undo the change for whoever reads
/// the mailbox), and `user.password_changed` tells its owner it was replaced `via` a
/// change or a reset. The account and how many sessions ended; `None` if the account is
/// gone or its hash is not `current`.
pub(crate) async fn replace_password(
    tx: &mut PgConnection,
    user: Uuid,
    new_hash: &str,
    current: Option<&str>,
    via: Via,
) -> Result<Option<(User, i64)>, ApiError> {
    let updated: Option<User> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET password_hash = $2, updated_at = now() \
         WHERE id = $1 AND ($3::text IS NULL OR password_hash = $3) RETURNING {USER_COLUMNS}"
    )))
    .bind(user)
    .bind(new_hash)
    .bind(current)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(account) = updated else {
        return Ok(None);
    };
    let ended = end_sessions(&mut *tx, user).await?;
    crate::reset::revoke_outstanding_resets(&mut *tx, user).await?;
    let changed = PasswordChanged {
        user_id: account.id,
        email: account.email.clone(),
        changed_at: Utc::now(),
        via,
    };
    let event = Event::new(catalog::AUTH.name, types::USER_PASSWORD_CHANGED, &changed)
        .map_err(|e| ApiError::internal(&e))?;
    outbox::enqueue(&mut *tx, &event).await?;
    Ok(Some((account, ended)))
}

/// Ends every session of the caller, on every device (the one asking included): a
/// refresh token that leaked stops working without the owner needing it to log out.
#[utoipa::path(post, path = "/api/v1/auth/logout-all", tag = "auth",
    responses((status = 200, body = SessionsEnded), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope, description = "not a user token")))]
pub(crate) async fn logout_all(State(s): State<AppState>, UserId(me): UserId) -> ApiResult {
    let mut tx = s.pool.begin().await?;
    let sessions_ended = end_sessions(&mut tx, me).await?;
    tx.commit().await?;
    tracing::info!(user_id = %me, sessions_ended, "signed out everywhere");
    Ok(error::ok(SessionsEnded { sessions_ended }))
}

/// Takes `user`'s sessions until `tx` ends. Whatever changes a user's refresh tokens (a
/// refresh, a logout, signing out everywhere, a password replaced) takes this first and
/// the tokens after: two of them then never each hold a token the other waits for, a
/// deadlock PostgreSQL breaks by failing one (a 500, or a sign-out that did not happen).
/// NO KEY UPDATE, the lock a password's UPDATE takes: a session's foreign key check on
/// the row (KEY SHARE) does not wait for it; a login's share lock does.
pub async fn hold_sessions(tx: &mut PgConnection, user: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
        .bind(user)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Revokes every refresh token of `user`, holding its sessions first; returns how many
/// sessions could still refresh. Public for the test that catches it midway.
pub async fn end_sessions(tx: &mut PgConnection, user: Uuid) -> Result<i64, sqlx::Error> {
    hold_sessions(&mut *tx, user).await?;
    // The SELECT reads the table as it was before the UPDATE: a family with a revoked
    // token then was ended already.
    sqlx::query_scalar(
        "WITH ended AS ( \
           UPDATE refresh_tokens SET revoked_at = now() \
           WHERE user_id = $1 AND revoked_at IS NULL \
           RETURNING family_id, used_at, expires_at \
         ) \
         SELECT count(DISTINCT family_id) FROM ended \
         WHERE used_at IS NULL AND expires_at > now() AND NOT EXISTS ( \
           SELECT 1 FROM refresh_tokens r \
           WHERE r.family_id = ended.family_id AND r.revoked_at IS NOT NULL)",
    )
    .bind(user)
    .fetch_one(&mut *tx)
    .await
}
