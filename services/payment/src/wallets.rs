//! What C asks B: wallets before accepting, transfers when working, voids when sweeping.

pub use finflow_contracts::wallet::{InternalWallet, TransferRequest, VoidOutcome};
use finflow_contracts::wallet::{TransferBatch, VoidRequest};
use finflow_platform::ApiError;
use finflow_platform::client::ServiceClient;
use serde::Deserialize;
use uuid::Uuid;

#[derive(Clone)]
pub struct Wallets {
    client: ServiceClient,
}

impl Wallets {
    pub fn new(client: ServiceClient) -> Self {
        Self { client }
    }

    /// The wallet with its owner's standing (KYC, remaining limits), which B asks A for.
    pub async fn get(&self, id: Uuid) -> Result<InternalWallet, ApiError> {
        self.client.get(&format!("/internal/wallets/{id}")).await
    }

    /// The wallet with its owner's standing, and `counterpart` alone (a transfer's
    /// payee) read in the same query: one call to B to accept a transfer.
    pub async fn get_with(&self, id: Uuid, counterpart: Uuid) -> Result<InternalWallet, ApiError> {
        self.client
            .get(&format!("/internal/wallets/{id}?counterpart={counterpart}"))
            .await
    }

    /// The wallet alone: whose it is, its currency and status (a payee's wallet).
    pub async fn get_alone(&self, id: Uuid) -> Result<InternalWallet, ApiError> {
        self.client
            .get(&format!("/internal/wallets/{id}?standing=false"))
            .await
    }

    pub async fn transfer(
        &self,
        transfer: &TransferRequest,
    ) -> Result<serde_json::Value, ApiError> {
        self.client.post("/internal/transfers", transfer).await
    }

    /// `POST /internal/transfers/batch`: several transfers in one call and one commit
    /// at B. Per transfer, in order, what [`Wallets::transfer`] would have answered; an
    /// error is the whole call's (nothing can be said of any transfer).
    pub async fn transfer_all(
        &self,
        transfers: &[TransferRequest],
    ) -> Result<Vec<Result<serde_json::Value, ApiError>>, ApiError> {
        #[derive(Deserialize)]
        struct Outcome {
            status: u16,
            #[serde(flatten)]
            envelope: serde_json::Value,
        }
        #[derive(Deserialize)]
        struct Outcomes {
            results: Vec<Outcome>,
        }
        let answer: Outcomes = self
            .client
            .post(
                "/internal/transfers/batch",
                &TransferBatch {
                    transfers: transfers.to_vec(),
                },
            )
            .await?;
        if answer.results.len() != transfers.len() {
            return Err(ApiError::dependency(
                "wallet",
                &format!(
                    "{} outcomes for {} transfers",
                    answer.results.len(),
                    transfers.len()
                ),
            ));
        }
        Ok(answer
            .results
            .into_iter()
            .map(|o| self.client.outcome(o.status, o.envelope))
            .collect())
    }

    pub async fn void(&self, transfer_id: Uuid, reason: &str) -> Result<VoidOutcome, ApiError> {
        self.client
            .post(
                &format!("/internal/transfers/{transfer_id}/void"),
                &VoidRequest {
                    reason: reason.to_owned(),
                },
            )
            .await
    }
}
