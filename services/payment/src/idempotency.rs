//! Idempotency keys in Redis, Stripe's way: the first request with a key claims it, a
//! duplicate waits briefly for the first to finish and gets the same response, a
//! duplicate still in flight after that answers 409, and the same key with a different
//! body answers 422. Redis is the fast path only: the payments table's unique key on
//! (user, key) is the ground truth when Redis is flushed or down.
//!
//! A claim is a short lease ([`IN_FLIGHT_LEASE`]) that the request holding it renews
//! while it runs ([`Lease`]): when the process dies mid-request the key is free again
//! within seconds, not after a minute of 409s. A request that outlives a lost lease is
//! still safe: the second request finds the payment in the database, or its insert
//! meets the unique key and answers with the first one's payment.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// How long a finished request's response is replayed.
pub const DONE_TTL_SECS: u64 = 24 * 3600;
/// How long a claim survives a process that died mid-request.
pub const IN_FLIGHT_LEASE: Duration = Duration::from_secs(5);
/// How often a live request renews its claim (three renewals per lease).
const RENEW_EVERY: Duration = Duration::from_millis(1_500);

/// Extends a claim's lease only while it is still the holder's (not answered, not
/// taken over).
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

/// A response to replay.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stored {
    pub status: u16,
    pub body: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    hash: String,
    /// Which claim this is, so that only its holder renews it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    holder: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Stored>,
}

/// A claim being renewed; dropping it stops the renewals (the claim then lapses within
/// [`IN_FLIGHT_LEASE`] unless completed or released first).
#[derive(Debug)]
pub struct Lease {
    renewing: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewing.abort();
    }
}

/// What the key says about this request.
#[derive(Debug)]
pub enum Claim {
    /// First use: go ahead, then [`Keys::complete`] or [`Keys::release`], holding the
    /// lease until then.
    Fresh(Lease),
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
            holder: Some(Uuid::new_v4()),
            response: None,
        })
        .unwrap_or_default();
        let mut conn = self.redis.clone();
        let deadline = tokio::time::Instant::now() + wait;
        // A claim that lapses between our SET and our GET leaves the key free: claim it
        // again (a few times at most: each round means another holder came and went).
        for _ in 0..3 {
            let set: redis::RedisResult<bool> = redis::cmd("SET")
                .arg(&k)
                .arg(&mine)
                .arg("NX")
                .arg("PX")
                .arg(lease_millis())
                .query_async::<Option<String>>(&mut conn)
                .await
                .map(|r| r.is_some());
            match set {
                Err(e) => {
                    tracing::warn!(error = %e, "idempotency cache unavailable; the database decides");
                    return Claim::Unavailable;
                }
                Ok(true) => return Claim::Fresh(self.renew(k, mine)),
                Ok(false) => {}
            }
            loop {
                let current: redis::RedisResult<Option<String>> = conn.get(&k).await;
                let entry = match current {
                    Err(_) => return Claim::Unavailable,
                    // Lapsed since the SET: free again.
                    Ok(None) => break,
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
        // The key keeps changing hands: the database's unique key decides.
        Claim::Unavailable
    }

    /// Renews the claim `k` (whose value is `mine`) until the lease is dropped.
    fn renew(&self, k: String, mine: String) -> Lease {
        let mut conn = self.redis.clone();
        let renewing = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let renewed: redis::RedisResult<i64> = redis::cmd("EVAL")
                    .arg(RENEW)
                    .arg(1)
                    .arg(&k)
                    .arg(&mine)
                    .arg(lease_millis())
                    .query_async(&mut conn)
                    .await;
                match renewed {
                    Ok(1) => {}
                    // Answered or taken over: nothing left to hold.
                    Ok(_) => return,
                    Err(e) => tracing::warn!(error = %e, "could not renew an idempotency claim"),
                }
            }
        });
        Lease { renewing }
    }

    /// Records the response to replay for a day.
    pub async fn complete(&self, user: Uuid, key: &str, hash: &[u8], response: Stored) {
        let entry = Entry {
            hash: hex(hash),
            holder: None,
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

fn lease_millis() -> u64 {
    u64::try_from(IN_FLIGHT_LEASE.as_millis()).unwrap_or(u64::MAX)
}
