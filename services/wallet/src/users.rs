//! What B asks A about users: KYC status (always fresh) and tier (briefly cached).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use finflow_platform::ApiError;
use finflow_platform::client::ServiceClient;
use finflow_platform::identity::{KycStatus, Tier};
use serde::Deserialize;
use tokio::sync::Mutex;
use uuid::Uuid;

/// How long a user's tier is reused for transfer limits.
const TIER_TTL: Duration = Duration::from_secs(30);
/// Past this many cached users, stale entries are dropped before adding one.
const MAX_CACHED: usize = 10_000;

/// The part of A's user B needs.
#[derive(Debug, Clone, Deserialize)]
pub struct UserState {
    pub kyc_status: KycStatus,
    pub account_tier: Tier,
}

/// A's internal user API, through A's sidecar, as service `wallet`.
#[derive(Clone)]
pub struct Users {
    auth: ServiceClient,
    tiers: Arc<Mutex<HashMap<Uuid, (Tier, Instant)>>>,
}

impl Users {
    pub fn new(auth: ServiceClient) -> Self {
        Self {
            auth,
            tiers: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The user as A knows it now (no cache: KYC gates wallet creation).
    pub async fn current(&self, user: Uuid) -> Result<UserState, ApiError> {
        let state: UserState = self.auth.get(&format!("/internal/users/{user}")).await?;
        let mut tiers = self.tiers.lock().await;
        if tiers.len() >= MAX_CACHED {
            tiers.retain(|_, (_, at)| at.elapsed() < TIER_TTL);
        }
        tiers.insert(user, (state.account_tier, Instant::now()));
        Ok(state)
    }

    /// The user's tier, from a cache of at most [`TIER_TTL`].
    pub async fn tier(&self, user: Uuid) -> Result<Tier, ApiError> {
        if let Some((tier, at)) = self.tiers.lock().await.get(&user).copied()
            && at.elapsed() < TIER_TTL
        {
            return Ok(tier);
        }
        Ok(self.current(user).await?.account_tier)
    }
}
