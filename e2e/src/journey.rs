//! What every journey test starts with: an isolated platform, fresh idempotency keys,
//! and waiting for what the platform does asynchronously.

use std::time::Duration;

use crate::launcher::{Options, Platform};

/// A platform of the test's own (ports, databases, RabbitMQ vhost), up and healthy.
pub async fn platform() -> Platform {
    Platform::start(Options::isolated())
        .await
        .unwrap_or_else(|e| panic!("the platform did not start: {e:#}"))
}

/// A fresh `Idempotency-Key`.
pub fn key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Asks `probe` every 200 ms until it has an answer; panics naming `what` after a minute
/// (events cross the broker and up to three services).
pub async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
