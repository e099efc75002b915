//! Email verification: a sign-up proves it controls the address by sending back the
//! token mailed there, with the password it chose (`POST /api/v1/auth/verify`). Until
//! then the account cannot log in, and its sign-up can be repeated by anyone.
//!
//! Each sign-up keeps its own password, name and phone with its token, and the account
//! takes those of the sign-up whose token is redeemed. Redeeming needs that sign-up's
//! password: the mailbox's owner holds every token, but knows only the password they
//! chose, so a sign-up of their address by somebody else (before theirs or after it)
//! can neither hand the account to its author nor stop theirs from completing.
//!
//! A token is 32 random bytes, URL-safe base64 in the mail, stored only as its SHA-256
//! (256 bits of entropy: a slow hash buys nothing). It is valid for [`TOKEN_TTL_HOURS`],
//! once; a verification revokes any others left. Expiry is on the database's clock, the
//! one it is compared with.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use crate::tokens::{hash_opaque_token, new_opaque_token};

/// How long a verification token is valid.
pub const TOKEN_TTL_HOURS: i32 = 24;

/// What one sign-up chose, kept with its token until the token is redeemed.
pub struct SignUp<'a> {
    pub password_hash: &'a str,
    pub full_name: &'a str,
    pub phone: &'a str,
}

/// Issues a token for `sign_up` of `user`: the token (for the mail, never stored) and
/// when it expires. Earlier sign-ups' tokens stay valid: the owner of the mailbox may
/// still redeem theirs, whoever signed up since.
pub async fn issue(
    tx: &mut PgConnection,
    user: Uuid,
    sign_up: &SignUp<'_>,
) -> Result<(String, DateTime<Utc>), sqlx::Error> {
    // What expired sign-ups chose is kept no longer than their tokens could be used.
    sqlx::query(
        "UPDATE email_verifications SET password_hash = NULL, full_name = NULL, phone = NULL \
         WHERE id IN (SELECT id FROM email_verifications \
                      WHERE password_hash IS NOT NULL AND expires_at <= now() \
                      LIMIT 100 FOR UPDATE SKIP LOCKED)",
    )
    .execute(&mut *tx)
    .await?;
    let (token, hash) = new_opaque_token();
    let expires_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO email_verifications \
           (id, user_id, token_hash, expires_at, password_hash, full_name, phone) \
         VALUES ($1, $2, $3, now() + make_interval(hours => $4), $5, $6, $7) RETURNING expires_at",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(hash)
    .bind(TOKEN_TTL_HOURS)
    .bind(sign_up.password_hash)
    .bind(sign_up.full_name)
    .bind(sign_up.phone)
    .fetch_one(&mut *tx)
    .await?;
    Ok((token, expires_at))
}

/// Revokes every token of `user` not used or revoked yet.
pub async fn revoke_outstanding(tx: &mut PgConnection, user: Uuid) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "UPDATE email_verifications \
         SET revoked_at = now(), password_hash = NULL, full_name = NULL, phone = NULL \
         WHERE user_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(user)
    .execute(&mut *tx)
    .await
    .map(|r| r.rows_affected())
}

/// An outstanding token, locked: the account it is for and what its sign-up chose.
#[derive(sqlx::FromRow, PartialEq, Eq)]
pub struct Outstanding {
    id: Uuid,
    pub user_id: Uuid,
    /// The sign-up's password hash (the account's own for a token issued before sign-ups
    /// kept theirs).
    pub password_hash: String,
    /// `None` for a token issued before sign-ups kept theirs: the account's stand.
    pub full_name: Option<String>,
    pub phone: Option<String>,
}

/// `token` if it is known, unused, not revoked and unexpired, unlocked: to check the
/// password against (slow, so outside any lock) before [`find`] takes the locks.
pub async fn peek(pool: &sqlx::PgPool, token: &str) -> Result<Option<Outstanding>, sqlx::Error> {
    sqlx::query_as(OUTSTANDING)
        .bind(hash_opaque_token(token))
        .fetch_optional(pool)
        .await
}

/// `token` if it is known, unused, not revoked and unexpired, locked until the
/// transaction ends; [`use_up`] then uses it.
///
/// The account's row is locked first, then the token's: the order a sign-up of the
/// address takes them in, so two verifications of one account wait for each other
/// instead of deadlocking, and of two uses of one token the second finds it used.
pub async fn find(tx: &mut PgConnection, token: &str) -> Result<Option<Outstanding>, sqlx::Error> {
    let hash = hash_opaque_token(token);
    let owner: Option<Uuid> =
        sqlx::query_scalar("SELECT user_id FROM email_verifications WHERE token_hash = $1")
            .bind(&hash)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(owner) = owner else {
        return Ok(None);
    };
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(owner)
        .execute(&mut *tx)
        .await?;
    sqlx::query_as(AssertSqlSafe(format!(
        "{OUTSTANDING} AND v.user_id = $2 FOR UPDATE OF v"
    )))
    .bind(&hash)
    .bind(owner)
    .fetch_optional(&mut *tx)
    .await
}

/// The token whose hash is `$1` if it is unused, not revoked and unexpired, with what
/// its sign-up chose (the account's own for a token issued before sign-ups kept theirs).
const OUTSTANDING: &str = "SELECT v.id, v.user_id, \
       COALESCE(v.password_hash, u.password_hash) AS password_hash, v.full_name, v.phone \
     FROM email_verifications v JOIN users u ON u.id = v.user_id \
     WHERE v.token_hash = $1 \
       AND v.used_at IS NULL AND v.revoked_at IS NULL AND v.expires_at > now()";

/// Marks `token` used; what its sign-up chose is no longer kept.
pub async fn use_up(tx: &mut PgConnection, token: &Outstanding) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE email_verifications \
         SET used_at = now(), password_hash = NULL, full_name = NULL, phone = NULL \
         WHERE id = $1",
    )
    .bind(token.id)
    .execute(&mut *tx)
    .await
    .map(drop)
}
