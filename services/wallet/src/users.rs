//! What B asks A about users: KYC status and tier, as A knows them now.
//!
//! Never cached: E tells A of a decision before it answers its client, so asking A is
//! what makes B agree with what E told the client, and a revoked verification stops a
//! user's payments at the next request.

use std::collections::HashMap;

use finflow_platform::client::ServiceClient;
use finflow_platform::identity::{KycStatus, Tier};
use finflow_platform::{ApiError, ErrorCode};
use serde::Deserialize;
use uuid::Uuid;

/// Most users A answers in one lookup.
const LOOKUP_MAX: usize = 100;

/// The part of A's user B needs.
#[derive(Debug, Clone, Deserialize)]
pub struct UserState {
    pub kyc_status: KycStatus,
    pub account_tier: Tier,
}

impl UserState {
    /// `403 KYC_REQUIRED` unless the user is verified; `doing` completes "KYC
    /// verification is required to ...".
    pub fn require_verified(&self, doing: &str) -> Result<(), ApiError> {
        if self.kyc_status == KycStatus::Verified {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::KycRequired,
            format!("KYC verification is required to {doing}"),
        )
        .with_details(serde_json::json!({ "kyc_status": self.kyc_status })))
    }
}

/// A's internal user API, through A's sidecar, as service `wallet`.
#[derive(Clone)]
pub struct Users {
    auth: ServiceClient,
}

impl Users {
    pub fn new(auth: ServiceClient) -> Self {
        Self { auth }
    }

    /// The user as A knows it now.
    pub async fn current(&self, user: Uuid) -> Result<UserState, ApiError> {
        self.auth.get(&format!("/internal/users/{user}")).await
    }

    /// Several users as A knows them now, in one call; a user A does not have is
    /// missing from the map.
    pub async fn current_all(&self, users: &[Uuid]) -> Result<HashMap<Uuid, UserState>, ApiError> {
        #[derive(Deserialize)]
        struct Listed {
            id: Uuid,
            #[serde(flatten)]
            state: UserState,
        }
        #[derive(Deserialize)]
        struct List {
            users: Vec<Listed>,
        }
        let mut found = HashMap::with_capacity(users.len());
        for chunk in users.chunks(LOOKUP_MAX) {
            let list: List = self
                .auth
                .post(
                    "/internal/users/lookup",
                    &serde_json::json!({ "user_ids": chunk }),
                )
                .await?;
            found.extend(list.users.into_iter().map(|u| (u.id, u.state)));
        }
        Ok(found)
    }
}
