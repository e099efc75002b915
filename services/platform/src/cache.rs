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

impl crate::config::RedisConfig {
    /// [`connect`]s to `REDIS_URL`, trusting (over `rediss://`) the CAs of
    /// `REDIS_CA_FILE` if it is set.
    pub async fn connect(&self) -> anyhow::Result<ConnectionManager> {
        let ca_pem = match &self.redis_ca_file {
            None => None,
            Some(path) => {
                Some(crate::client::pem_file("REDIS_CA_FILE", path).map_err(anyhow::Error::msg)?)
            }
        };
        Ok(connect(&self.redis_url, ca_pem.as_deref()).await?)
    }
}

/// Connects and proves the server answers, so a wrong URL fails at start. Over
/// `rediss://` the server's certificate must be vouched for by `ca_pem` (PEM
/// certificates) if given, else by the system's roots.
pub async fn connect(
    url: &SecretString,
    ca_pem: Option<&str>,
) -> redis::RedisResult<ConnectionManager> {
    let client = match ca_pem {
        None => redis::Client::open(url.expose_secret())?,
        Some(pem) => redis::Client::build_with_tls(
            url.expose_secret(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.as_bytes().to_vec()),
            },
        )?,
    };
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
