//! Login, sign-up and password attempt limits, counted in Redis so every replica (blue
//! and green) shares them. Sign-ups, reset requests and reset confirmations are counted
//! per client address; password changes per address and per account and address, as
//! logins are, but a success does not clear the count ([`crate::account`]).
//!
//! Two login counters, both per client address: every attempt from an address, and the
//! attempts at one account from one address since its last success there. There is no
//! counter per account alone: anyone can fail logins for any email, and such a counter
//! let an attacker anywhere lock the owner out. Guessing one account's password from
//! many addresses is bounded by each address's limit and by Argon2's cost per attempt.

use std::net::IpAddr;

use finflow_contracts::identity::client_network;
use finflow_platform::{ApiError, Email};
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

/// The key of the (account, client address) counter. Hashed: the email stays out of
/// Redis, and no spelling of an email and an address collides with another.
pub fn account_address(email: &Email, address: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(email.as_str().as_bytes());
    digest.update([0]);
    digest.update(address.as_bytes());
    format!("{:x}", digest.finalize())
}

/// Forgets the attempts counted for `scope`/`key` (after a successful login). Best
/// effort, like the counting: an unreachable Redis leaves the count to expire.
pub async fn clear(redis: &mut ConnectionManager, scope: &str, key: &str) {
    let k = format!("auth:login:{scope}:{key}");
    if let Err(e) = redis::cmd("DEL").arg(&k).query_async::<()>(redis).await {
        tracing::warn!(error = %e, "login limiter unavailable; count not cleared");
    }
}

/// [`hit`] keyed by the client's network (an IPv6 client's /64 is one address,
/// [`client_network`]), on a clone of `redis`.
pub async fn per_address(
    redis: &ConnectionManager,
    scope: &str,
    ip: IpAddr,
    limit: u32,
    message: &'static str,
) -> Result<Counted, ApiError> {
    hit(
        &mut redis.clone(),
        scope,
        &client_network(ip),
        limit,
        message,
    )
    .await
}

/// The window attempts are counted in.
pub const WINDOW_SECS: i64 = 60;

/// Counts one attempt for `scope`/`key`; `429 RATE_LIMITED` once more than `limit`
/// attempts fall in the current window. If Redis is unreachable the attempt is
/// allowed (and logged): Argon2's cost still bounds guessing, and an outage of the
/// cache must not lock every user out.
pub async fn hit(
    redis: &mut ConnectionManager,
    scope: &str,
    key: &str,
    limit: u32,
    message: &'static str,
) -> Result<Counted, ApiError> {
    let k = format!("auth:login:{scope}:{key}");
    let result: redis::RedisResult<(u64, i64)> = redis::pipe()
        .atomic()
        .incr(&k, 1)
        .cmd("EXPIRE")
        .arg(&k)
        .arg(WINDOW_SECS)
        .arg("NX")
        .ignore()
        .ttl(&k)
        .query_async(redis)
        .await;
    match result {
        Ok((count, ttl)) if count > u64::from(limit) => {
            metrics::counter!("finflow_auth_login_limited_total", "scope" => scope.to_owned())
                .increment(1);
            Err(ApiError::rate_limited(
                message,
                u64::try_from(ttl).unwrap_or(1),
            ))
        }
        Ok(_) => Ok(Counted(Some(k))),
        Err(e) => {
            tracing::warn!(error = %e, "login limiter unavailable; attempt allowed");
            Ok(Counted(None))
        }
    }
}

/// An attempt [`hit`] counted (none when Redis was unreachable).
#[derive(Debug)]
pub struct Counted(Option<String>);

/// Takes one off a count, only while it stands: a count that expired meanwhile is not
/// brought back as -1 without an expiry.
const GIVE_BACK: &str =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end return 0";

/// `result`, having given back the attempt `counted` when it is the password queue's
/// 503 ([`crate::passwords::is_busy`]): no password was checked, so nothing was
/// guessed, and an honest client retrying through a flood of others' logins does not
/// use up its tries at the account. Only the (account, address) count: the address's
/// own keeps counting, or a flood from one address would be answered by turns it waits
/// for (5 s each, ahead of everyone else's) instead of a 429 at once. Best effort.
pub async fn unless_busy<T>(
    redis: &ConnectionManager,
    counted: Counted,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    if let Err(e) = &result
        && crate::passwords::is_busy(e)
    {
        give_back(redis, counted).await;
    }
    result
}

/// Takes the attempt `counted` off its count again (one that turned out not to be a
/// guess). Best effort, like the counting.
pub async fn give_back(redis: &ConnectionManager, counted: Counted) {
    let Counted(Some(key)) = counted else {
        return;
    };
    let given: redis::RedisResult<i64> = redis::cmd("EVAL")
        .arg(GIVE_BACK)
        .arg(1)
        .arg(key)
        .query_async(&mut redis.clone())
        .await;
    if let Err(e) = given {
        tracing::warn!(error = %e, "login limiter unavailable; attempt not given back");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn attempt(redis: &ConnectionManager, key: &str) -> Result<Counted, ApiError> {
        hit(&mut redis.clone(), "test", key, 2, "limited").await
    }

    #[tokio::test]
    async fn an_attempt_that_found_no_password_turn_is_given_back_and_no_other() {
        let redis = finflow_platform::cache::connect(&finflow_platform::cache::test_url(), None)
            .await
            .expect("the test Redis");
        let key = uuid::Uuid::new_v4().to_string();
        // The queue was full: nothing was checked, the attempt does not count.
        let counted = attempt(&redis, &key).await.unwrap();
        let busy = Err::<(), _>(crate::passwords::busy());
        let busy = unless_busy(&redis, counted, busy).await.unwrap_err();
        assert_eq!(busy.code.status().as_u16(), 503);
        // A password checked (right or wrong), or any other failure, still counts.
        let checked = attempt(&redis, &key).await.unwrap();
        let wrong = Err::<(), _>(ApiError::unauthorized("wrong"));
        let wrong = unless_busy(&redis, checked, wrong).await.unwrap_err();
        assert_eq!(wrong.code.status().as_u16(), 401);
        attempt(&redis, &key).await.unwrap();
        let over = attempt(&redis, &key).await.unwrap_err();
        assert_eq!(
            over.code.status().as_u16(),
            429,
            "two counted, the third over"
        );
    }
}
