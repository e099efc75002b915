//! Resetting a forgotten password with a token mailed to the account's address.
//!
//! `POST /api/v1/auth/password-reset` answers every valid address the same 202; only a verified account's address is mailed a token
//! (`user.password_reset_requested`), at most [`MAILS_PER_HOUR`] an hour, so the form
//! cannot flood a mailbox. `POST /api/v1/auth/password-reset/confirm` with the token and
//! a new password sets the password, ends every session of the account and tells its
//! owner (`user.password_changed`), as a change does ([`crate::account`]).
//!
//! A token is 32 random bytes, as a verification token is, stored as its SHA-256 only;
//! valid for [`TOKEN_TTL_MINUTES`], once. Using one revokes the account's others, and so
//! does a password change. Expiry is on the database's clock, the one it is compared with.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use finflow_contracts::catalog;
use finflow_contracts::user::{
    MailedCredential, PasswordReplacedVia as Via, PasswordResetRequested,
};
use finflow_platform::error::{self, ErrorEnvelope};
use finflow_platform::events::{Event, outbox, types};
use finflow_platform::identity::ClientIp;
use finflow_platform::{ApiError, ApiResult, Json, text};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::account::replace_password;
use crate::api::{self, AppState, User};
use crate::domain::Password;
use crate::tokens::{self, MailedToken};

/// How long a reset token is valid.
pub const TOKEN_TTL_MINUTES: i32 = 60;

/// Reset mails one account is sent in an hour at most; further requests are answered
/// as usual and mail nothing.
pub const MAILS_PER_HOUR: i64 = 3;

/// `POST /api/v1/auth/password-reset`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// An address without display text, quoted local part or IP literal, with a `.` in
    /// it; at most 254 characters once trimmed (compared trimmed and lower-cased).
    #[schema(format = Email, max_length = 254, example = "ada@example.com")]
    pub email: String,
}

/// What a reset request answers, whatever the address: only the mailbox learns whether
/// it has an account.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResetAccepted {
    /// The address as it is compared and mailed (trimmed, lower-cased).
    #[schema(example = "ada@example.com")]
    pub email: String,
    pub status: ResetStatus,
}

/// `status` of a reset request: if the address has an account, a mail is on its way.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResetStatus {
    ResetRequested,
}

/// `POST /api/v1/auth/password-reset/confirm`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetConfirm {
    #[schema(schema_with = text::schema::<MailedToken>)]
    pub token: String,
    #[schema(schema_with = text::schema::<Password>)]
    pub new_password: String,
}

/// Asks for a reset mail. Every valid address gets the same 202: whether it has an
/// account is told only to its mailbox.
#[utoipa::path(post, path = "/api/v1/auth/password-reset", tag = "auth", request_body = ResetRequest,
    responses((status = 202, body = ResetAccepted,
            description = "if the address has a verified account, a mail with a reset token is on its way (at most 3 an hour); the answer is the same either way"),
        (status = 400, body = ErrorEnvelope, description = "not a valid email address"),
        (status = 429, body = ErrorEnvelope, description = "too many requests from this client address; see Retry-After")))]
pub(crate) async fn request_reset(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<ResetRequest>,
) -> ApiResult {
    // Each request may send a mail, as a sign-up does: limited where they come from.
    crate::limits::per_address(
        &s.redis,
        "reset-address",
        ip,
        s.settings.register_limit_per_address,
        "too many password reset requests from this address, try again later",
    )
    .await?;
    let email = api::parse_email(&req.email)?;
    let mut tx = s.pool.begin().await?;
    // The account's row lock makes concurrent requests count each other's mails. NO KEY
    // UPDATE, the lock a session change takes (`account::hold_sessions`): the two take
    // turns, and a session's foreign key check (KEY SHARE) does not wait for either.
    let account: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM users WHERE email = $1 AND email_verified_at IS NOT NULL \
         FOR NO KEY UPDATE",
    )
    .bind(email.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(user_id) = account {
        if let Some((token, expires_at)) = issue(&mut tx, user_id).await? {
            let to = finflow_contracts::sealed::Addressee {
                event_type: types::USER_PASSWORD_RESET_REQUESTED,
                user_id,
                email: email.as_str(),
            };
            let requested = PasswordResetRequested {
                user_id,
                email: email.as_str().to_owned(),
                token: MailedCredential(s.settings.mail_seal.seal(&token, &to)),
                expires_at,
            };
            let event = Event::new(
                catalog::AUTH.name,
                types::USER_PASSWORD_RESET_REQUESTED,
                &requested,
            )
            .map_err(|e| ApiError::internal(&e))?;
            outbox::enqueue(&mut tx, &event).await?;
        } else {
            tracing::info!(%user_id, "password reset not mailed: the hour's mails were sent");
        }
    }
    tx.commit().await?;
    Ok(error::with_status(
        StatusCode::ACCEPTED,
        ResetAccepted {
            email: email.as_str().to_owned(),
            status: ResetStatus::ResetRequested,
        },
    ))
}

/// Issues a reset token for `user` (whose row the caller holds locked): the token, for
/// the mail and never stored, and when it expires; `None` once [`MAILS_PER_HOUR`] were
/// issued in the last hour.
async fn issue(
    tx: &mut PgConnection,
    user: Uuid,
) -> Result<Option<(String, DateTime<Utc>)>, sqlx::Error> {
    // Rows are kept a day past their expiry (what was asked, and when), then go.
    sqlx::query(
        "DELETE FROM password_resets WHERE user_id = $1 AND expires_at < now() - interval '1 day'",
    )
    .bind(user)
    .execute(&mut *tx)
    .await?;
    let recent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM password_resets \
         WHERE user_id = $1 AND created_at > now() - interval '1 hour'",
    )
    .bind(user)
    .fetch_one(&mut *tx)
    .await?;
    if recent >= MAILS_PER_HOUR {
        return Ok(None);
    }
    let (token, hash) = tokens::new_opaque_token();
    let expires_at = sqlx::query_scalar(
        "INSERT INTO password_resets (id, user_id, token_hash, expires_at) \
         VALUES ($1, $2, $3, now() + make_interval(mins => $4)) RETURNING expires_at",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(hash)
    .bind(TOKEN_TTL_MINUTES)
    .fetch_one(&mut *tx)
    .await?;
    Ok(Some((token, expires_at)))
}

/// Revokes every reset token of `user` not used or revoked yet.
pub(crate) async fn revoke_outstanding_resets(
    tx: &mut PgConnection,
    user: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE password_resets SET revoked_at = now() \
         WHERE user_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(user)
    .execute(&mut *tx)
    .await
    .map(drop)
}

/// The account of `token` if the token is unused, not revoked and unexpired.
const LIVE_RESET_OWNER: &str = "SELECT user_id FROM password_resets \
     WHERE token_hash = $1 \
       AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now()";

/// Sets a new password with the token of a reset mail, as a change does
/// ([`replace_password`]): every session of the account ends, its other reset tokens
/// are revoked, and its owner is mailed that the password changed. The account's address is not touched: a reset proves the mailbox, which
/// the account already has.
#[utoipa::path(post, path = "/api/v1/auth/password-reset/confirm", tag = "auth", request_body = ResetConfirm,
    responses((status = 200, body = User, description = "the password is set; every session ended: log in with it"),
        (status = 400, body = ErrorEnvelope, description = "not the shape of a reset token, or new_password breaks its rule"),
        (status = 404, body = ErrorEnvelope,
            description = "the token is unknown, already used, revoked or expired (details.reason = invalid_token; which one is not said)"),
        (status = 429, body = ErrorEnvelope, description = "too many attempts from this client address; see Retry-After")))]
pub(crate) async fn confirm_reset(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<ResetConfirm>,
) -> ApiResult {
    if !MailedToken::shaped(&req.token) {
        return Err(ApiError::invalid_field(
            "token",
            "a reset token is 43 characters of unpadded base64url",
        ));
    }
    let new = Password::parse_field("new_password", &req.new_password)?;
    // A live token costs an Argon2 hash: limited where the attempts come from, as
    // verifications are.
    crate::limits::per_address(
        &s.redis,
        "reset-confirm-address",
        ip,
        s.settings.login_limit_per_address,
        "too many reset attempts from this address, try again later",
    )
    .await?;
    let hash = tokens::hash_opaque_token(&req.token);
    // Looked up before hashing, which is slow and taken outside any lock: an unknown
    // token costs no Argon2.
    let peeked: Option<Uuid> = sqlx::query_scalar(LIVE_RESET_OWNER)
        .bind(&hash)
        .fetch_optional(&s.pool)
        .await?;
    let Some(owner) = peeked else {
        return Err(tokens::invalid_mailed_token("reset"));
    };
    let new_hash = s.passwords.hash(new).await?;

    let mut tx = s.pool.begin().await?;
    // The account's row, then the token's: the order a password change and a reset
    // request take them in. Of two uses of one token, the second finds it used.
    crate::account::hold_sessions(&mut tx, owner).await?;
    let used: Option<Uuid> = sqlx::query_scalar(
        "UPDATE password_resets SET used_at = now() \
         WHERE token_hash = $1 AND user_id = $2 \
           AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now() \
         RETURNING id",
    )
    .bind(&hash)
    .bind(owner)
    .fetch_optional(&mut *tx)
    .await?;
    if used.is_none() {
        return Err(tokens::invalid_mailed_token("reset"));
    }
    let (user, ended) = replace_password(&mut tx, owner, &new_hash, None, Via::Reset)
        .await?
        .ok_or_else(|| tokens::invalid_mailed_token("reset"))?;
    tx.commit().await?;
    tracing::info!(user_id = %owner, sessions_ended = ended, "password reset");
    Ok(error::ok(user))
}
