//! Redis: one multiplexed, self-reconnecting connection per process.
//!
//! [`redis::aio::ConnectionManager`] is cheap to clone and reconnects on its own, so a
//! Redis restart costs the requests in flight, not the process. Timeouts are short:
//! Redis is a cache and an idempotency fast path, never the ground truth, and a slow
//! cache must not hold a request longer than the database would.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};

pub use redis::aio::ConnectionManager as Redis;

/// Connects and proves the server answers, so a wrong URL fails at start.
pub async fn connect(url: &SecretString) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url.expose_secret())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2);
    ConnectionManager::new_with_config(client, config).await
}

/// The Redis tests use: `FINFLOW_REDIS_URL`, else the default local server.
pub fn test_url() -> SecretString {
    std::env::var("FINFLOW_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
        .into()
}
