//! The event-driven cascades through the gateway: KYC (E to A to B) with its mails, and
//! AML holds (C to E to compliance and back to C), with notifications from D.

use std::time::Duration;

use finflow_e2e::client::{Client, User};
use finflow_e2e::journey::{eventually, key, platform};
use finflow_e2e::launcher::Platform;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn mails_to(platform: &Platform, email: &str) -> Vec<String> {
    platform
        .mailbox
        .lock()
        .unwrap()
        .iter()
        .filter(|(to, _)| to.iter().any(|t| t == email))
        .map(|(_, data)| data.clone())
        .collect()
}

#[tokio::test]
async fn kyc_approval_opens_wallets_for_the_same_token_and_both_mails_arrive() {
    let mut platform = platform().await;
    let user = platform.client().new_user("kyc").await;
    let refused = user
        .client
        .post("/api/v1/wallets", json!({"currency": "EUR"}))
        .await;
    assert_eq!(refused.error(StatusCode::FORBIDDEN), "KYC_REQUIRED");

    user.submit_kyc().await.data(StatusCode::CREATED);
    user.open_wallet("EUR", Duration::from_secs(30)).await;

    // The verification mail of the sign-up came first; the welcome mail follows the
    // verification (`user.created`), the KYC mail the decision.
    let mails = eventually("the welcome and KYC mails", async || {
        let mails = mails_to(&platform, &user.email);
        let subjects = [
            "Subject: Welcome to FinFlow",
            "Subject: Your identity is verified",
        ];
        subjects
            .iter()
            .all(|s| mails.iter().any(|m| m.contains(s)))
            .then_some(mails)
    })
    .await;
    assert!(
        mails
            .iter()
            .any(|m| m.contains("Subject: Confirm your email address")),
        "{mails:?}"
    );
    assert!(
        mails
            .iter()
            .any(|m| m.contains("Subject: Welcome to FinFlow")),
        "{mails:?}"
    );
    assert!(
        mails
            .iter()
            .any(|m| m.contains("Subject: Your identity is verified")),
        "{mails:?}"
    );
    platform.stop().await;
}

async fn compliance(platform: &Platform, client: &Client) -> User {
    let officer = platform
        .staff_user(client, "compliance@finflow.local", "compliance")
        .await
        .unwrap_or_else(|e| panic!("granting compliance: {e:#}"));
    let roles = officer.session["user"]["roles"].clone();
    assert_eq!(roles, json!(["user", "compliance"]));
    officer
}

async fn payment_status(user: &User, id: &str) -> Value {
    user.client
        .get(&format!("/api/v1/payments/{id}"))
        .await
        .data(StatusCode::OK)
        .clone()
}

async fn open_alert_for(officer: &User, payment: &str) -> String {
    eventually("the AML alert", async || {
        let alerts = officer
            .client
            .get("/api/v1/aml/alerts?status=open&limit=500")
            .await;
        alerts.data(StatusCode::OK)["items"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|x| x["payment_id"] == payment && x["rule"] == "amount_threshold")
                    .map(|x| x["id"].as_str().unwrap_or_default().to_owned())
            })
    })
    .await
}

#[tokio::test]
async fn a_held_payment_is_notified_cleared_by_compliance_and_completes_while_a_flagged_one_moves_nothing()
 {
    let mut platform = platform().await;
    let client = platform.client();
    let officer = compliance(&platform, &client).await;
    let (alice, wallet) = client.new_user("aml").await.with_wallet("USD").await;

    // Above the 10000 threshold: held, and the user is told.
    let held = alice
        .pay(
            "deposit",
            json!({"to_wallet_id": wallet, "amount": "15000.00", "currency": "USD"}),
            &key(),
            None,
        )
        .await;
    let held = held.data(StatusCode::ACCEPTED).clone();
    assert_eq!(held["status"], "ON_HOLD");
    let held_id = held["id"].as_str().unwrap().to_owned();
    eventually("the on-hold notification", async || {
        let n = alice.client.get("/api/v1/notifications").await;
        n.data(StatusCode::OK).as_array().and_then(|a| {
            a.iter()
                .find(|x| x["event_type"] == "payment.on_hold")
                .cloned()
        })
    })
    .await;

    // Compliance clears it: C releases it and it completes.
    let alert = open_alert_for(&officer, &held_id).await;
    officer
        .client
        .post(
            &format!("/api/v1/aml/alerts/{alert}/clear"),
            json!({"reason": "source of funds documented"}),
        )
        .await
        .data(StatusCode::OK);
    let done = eventually("the cleared payment to complete", async || {
        let p = payment_status(&alice, &held_id).await;
        (p["status"] == "COMPLETED").then_some(p)
    })
    .await;
    assert_eq!(done["amount"], "15000.00");
    assert_eq!(alice.balance(&wallet).await, "15000.00");

    // A second one is flagged: it fails and no money moves.
    let flagged = alice
        .pay(
            "deposit",
            json!({"to_wallet_id": wallet, "amount": "12000.00", "currency": "USD"}),
            &key(),
            None,
        )
        .await;
    let flagged_id = flagged.data(StatusCode::ACCEPTED)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let alert = open_alert_for(&officer, &flagged_id).await;
    officer
        .client
        .post(
            &format!("/api/v1/aml/alerts/{alert}/flag"),
            json!({"reason": "structuring suspected"}),
        )
        .await
        .data(StatusCode::OK);
    let failed = eventually("the flagged payment to fail", async || {
        let p = payment_status(&alice, &flagged_id).await;
        (p["status"] == "FAILED").then_some(p)
    })
    .await;
    assert_eq!(failed["failure"]["code"], "AML_FLAGGED");
    assert_eq!(alice.balance(&wallet).await, "15000.00", "no money moved");

    // Only compliance sees alerts.
    let denied = alice.client.get("/api/v1/aml/alerts").await;
    assert_eq!(denied.error(StatusCode::FORBIDDEN), "FORBIDDEN");
    platform.stop().await;
}
