//! Idempotency keys in Redis, Stripe's way: the first request with a key claims it, a
//! duplicate waits briefly for the first to finish and gets the same response, a
//! duplicate still in flight after that answers 409, and the same key with a different
//! body answers 422. Redis is the fast path only: the payments table's unique key on
//! (user, key) is the ground truth when Redis is flushed or down.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// How long a finished request's response is replayed.
pub const DONE_TTL_SECS: u64 = 24 * 3600;
/// How long a claim survives a process that died mid-request.
pub const IN_FLIGHT_TTL_SECS: u64 = 60;

/// A response to replay.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stored {
    pub status: u16,
    pub body: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Stored>,
}

/// What the key says about this request.
#[derive(Debug, PartialEq)]
pub enum Claim {
    /// First use: go ahead, then [`Keys::complete`] or [`Keys::release`].
    Fresh,
    /// The same request is being processed by someone else.
    InFlight,
    /// The same request was answered: replay this.
    Done(Stored),
    /// The key was used with another body.
    Mismatch,
    /// Redis did not answer: rely on the database.
    Unavailable,
}

/// Idempotency keys of one user.
#[derive(Clone)]
pub struct Keys {
    redis: ConnectionManager,
}

fn redis_key(user: Uuid, key: &str) -> String {
    // Hashed: client keys are up to 255 bytes of anything.
    format!("pay:idem:{user}:{}", hex(&Sha256::digest(key.as_bytes())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Keys {
    pub fn new(redis: ConnectionManager) -> Self {
        Self { redis }
    }

    /// Claims `key` for a request with fingerprint `hash`; if another request holds
    /// it, waits up to `wait` for that one's response.
    pub async fn claim(&self, user: Uuid, key: &str, hash: &[u8], wait: Duration) -> Claim {
        let k = redis_key(user, key);
        let mine = serde_json::to_string(&Entry {
            hash: hex(hash),
            response: None,
        })
        .unwrap_or_default();
        let mut conn = self.redis.clone();
        let set: redis::RedisResult<bool> = redis::cmd("SET")
            .arg(&k)
            .arg(&mine)
            .arg("NX")
            .arg("EX")
            .arg(IN_FLIGHT_TTL_SECS)
            .query_async::<Option<String>>(&mut conn)
            .await
            .map(|r| r.is_some());
        match set {
            Err(e) => {
                tracing::warn!(error = %e, "idempotency cache unavailable; the database decides");
                return Claim::Unavailable;
            }
            Ok(true) => return Claim::Fresh,
            Ok(false) => {}
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let current: redis::RedisResult<Option<String>> = conn.get(&k).await;
            let entry = match current {
                Err(_) => return Claim::Unavailable,
                // Expired between SET and GET: the database decides.
                Ok(None) => return Claim::Unavailable,
                Ok(Some(raw)) => match serde_json::from_str::<Entry>(&raw) {
                    Ok(e) => e,
                    Err(_) => return Claim::Unavailable,
                },
            };
            if entry.hash != hex(hash) {
                return Claim::Mismatch;
            }
            if let Some(response) = entry.response {
                return Claim::Done(response);
            }
            if tokio::time::Instant::now() >= deadline {
                return Claim::InFlight;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Records the response to replay for a day.
    pub async fn complete(&self, user: Uuid, key: &str, hash: &[u8], response: Stored) {
        let entry = Entry {
            hash: hex(hash),
            response: Some(response),
        };
        let mut conn = self.redis.clone();
        let value = serde_json::to_string(&entry).unwrap_or_default();
        let result: redis::RedisResult<()> = conn
            .set_ex(redis_key(user, key), value, DONE_TTL_SECS)
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not record an idempotent response");
        }
    }

    /// Frees a claim whose request was refused before anything happened, so the client
    /// can correct it and retry with the same key.
    pub async fn release(&self, user: Uuid, key: &str) {
        let mut conn = self.redis.clone();
        let _: redis::RedisResult<()> = conn.del(redis_key(user, key)).await;
    }
}
