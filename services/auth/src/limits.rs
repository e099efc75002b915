//! Login attempt limits, counted in Redis so every replica (blue and green) shares them.

use finflow_platform::ApiError;
use redis::aio::ConnectionManager;

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
) -> Result<(), ApiError> {
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
                "too many login attempts, try again later",
                u64::try_from(ttl).unwrap_or(1),
            ))
        }
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "login limiter unavailable; attempt allowed");
            Ok(())
        }
    }
}
