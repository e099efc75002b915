//! Email verification: a sign-up proves it controls the address by sending back the
//! token mailed there (`POST /api/v1/auth/verify`). Until then the account cannot log
//! in, and its sign-up can be repeated by whoever controls the mailbox.
//!
//! A token is 32 random bytes, URL-safe base64 in the mail, stored only as its SHA-256
//! (256 bits of entropy: a slow hash buys nothing). It is valid for [`TOKEN_TTL_HOURS`],
//! once; a new sign-up of the same unverified address revokes the earlier ones, and a
//! verification revokes any others left. Expiry is on the database's clock, the one it
//! is compared with.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::tokens::{hash_opaque_token, new_opaque_token};

/// How long a verification token is valid.
pub const TOKEN_TTL_HOURS: i32 = 24;

/// Revokes `user`'s outstanding tokens and issues a new one: the token (for the mail,
/// never stored) and when it expires.
pub async fn issue(
    tx: &mut PgConnection,
    user: Uuid,
) -> Result<(String, DateTime<Utc>), sqlx::Error> {
    revoke_outstanding(tx, user).await?;
    let (token, hash) = new_opaque_token();
    let expires_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO email_verifications (id, user_id, token_hash, expires_at) \
         VALUES ($1, $2, $3, now() + make_interval(hours => $4)) RETURNING expires_at",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(hash)
    .bind(TOKEN_TTL_HOURS)
    .fetch_one(&mut *tx)
    .await?;
    Ok((token, expires_at))
}

/// Revokes every token of `user` not used or revoked yet.
pub async fn revoke_outstanding(tx: &mut PgConnection, user: Uuid) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "UPDATE email_verifications SET revoked_at = now() \
         WHERE user_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(user)
    .execute(&mut *tx)
    .await
    .map(|r| r.rows_affected())
}

/// Uses `token` if it is known, unused, not revoked and unexpired: the user it is for.
///
/// The account's row is locked first, then the token's: the order a sign-up takes them
/// in (it locks the account, then revokes its tokens), so a verification and a repeated
/// sign-up of one account wait for each other instead of deadlocking. The use itself is
/// one conditional `UPDATE`: of two concurrent uses of a token, the second finds it used.
pub async fn redeem(tx: &mut PgConnection, token: &str) -> Result<Option<Uuid>, sqlx::Error> {
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
    sqlx::query_scalar(
        "UPDATE email_verifications SET used_at = now() \
         WHERE token_hash = $1 AND user_id = $2 \
           AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now() \
         RETURNING user_id",
    )
    .bind(&hash)
    .bind(owner)
    .fetch_optional(&mut *tx)
    .await
}
