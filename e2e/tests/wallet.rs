//! Wallet journeys through the gateway: the FinFlow seed's Test 1 (KYC cascade).

use std::time::Duration;

use finflow_e2e::client::Client;
use finflow_e2e::launcher::{Options, Platform};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn kyc_gates_wallet_creation_and_a_verification_opens_it_for_the_same_token() {
    let mut platform = Platform::start(Options::isolated())
        .await
        .unwrap_or_else(|e| panic!("the platform did not start: {e:#}"));
    let user = Client::new(&platform.gateway_url).new_user("kyc").await;

    // First half: not verified yet, refused with KYC_REQUIRED and nothing created.
    let refused = user
        .client
        .post("/api/v1/wallets", json!({"currency": "USD"}))
        .await;
    assert_eq!(refused.error(StatusCode::FORBIDDEN), "KYC_REQUIRED");
    let mine = user.client.get("/api/v1/wallets").await;
    assert_eq!(mine.data(StatusCode::OK), &json!([]));

    // Second half: E verifies, A learns it by event, B asks A: the same token now works.
    let submitted = user.submit_kyc().await;
    assert_eq!(submitted.data(StatusCode::CREATED)["status"], "verified");
    let wallet = user.open_wallet("USD", Duration::from_secs(30)).await;
    assert_eq!(wallet["currency"], "USD");
    assert_eq!(wallet["balance"], "0.00");
    let status = user.client.get("/api/v1/kyc/status").await;
    assert_eq!(status.data(StatusCode::OK)["kyc_status"], "verified");

    // Another user's wallet is 404, not 403.
    let stranger = Client::new(&platform.gateway_url)
        .new_user("stranger")
        .await;
    let id = wallet["id"].as_str().unwrap();
    let peek = stranger.client.get(&format!("/api/v1/wallets/{id}")).await;
    assert_eq!(peek.error(StatusCode::NOT_FOUND), "NOT_FOUND");
    platform.stop().await;
}
