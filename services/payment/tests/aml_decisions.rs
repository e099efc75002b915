//! E's decisions on held payments as C takes them: from E's authenticated call
//! (`PUT /internal/payments/{id}/aml`, service `kyc` only), never from the bus, on C's
//! API and a real PostgreSQL database.

mod common;

use common::Stand;
use finflow_payment::worker::AmlDecisions;
use finflow_platform::client::ServiceClient;
use finflow_platform::db;
use finflow_platform::events::consumer::Handler;
use finflow_platform::events::{Event, types};
use serde_json::{Value, json};
use uuid::Uuid;

/// A deposit of 15 000 USD that C put on hold.
async fn held(stand: &Stand) -> Uuid {
    stand
        .payment(
            Uuid::now_v7(),
            "deposit",
            None,
            Some(Uuid::now_v7()),
            "15000",
            "ON_HOLD",
        )
        .await
}

/// E's `outcome` on the alert holding `payment`, called as `service`.
async fn decide(stand: &Stand, service: &str, payment: Uuid, outcome: &str) -> (u16, Value) {
    let response = ServiceClient::http_client()
        .put(format!("{}/internal/payments/{payment}/aml", stand.base))
        .header("x-user-id", format!("service:{service}"))
        .header("x-user-roles", format!("service:{service}"))
        .json(&json!({"alert_id": Uuid::now_v7(), "outcome": outcome,
            "decided_at": chrono::Utc::now()}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn e_s_call_releases_or_fails_a_held_payment_once() {
    let stand = Stand::start().await;
    let released = held(&stand).await;
    let (status, body) = decide(&stand, "kyc", released, "cleared").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "PENDING");
    assert_eq!(stand.status_of(released).await, "PENDING");

    let flagged = held(&stand).await;
    let (status, body) = decide(&stand, "kyc", flagged, "flagged").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "FAILED");
    assert_eq!(body["data"]["failure"]["code"], "AML_FLAGGED");
    // The payer reads the failure (C's API, D's mail and webhooks): never the officer's
    // note, which would tip them off about the review.
    assert_eq!(
        body["data"]["failure"]["reason"],
        "declined after a compliance review"
    );

    // E tells again until it hears back: the same or a later decision on a payment no
    // longer held changes nothing.
    let (status, body) = decide(&stand, "kyc", flagged, "cleared").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "FAILED");
    let (status, body) = decide(&stand, "kyc", Uuid::now_v7(), "cleared").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = decide(&stand, "kyc", released, "released").await;
    assert!((400..500).contains(&status), "{status} {body}");
}

#[tokio::test]
async fn no_other_service_settles_a_hold() {
    let stand = Stand::start().await;
    let payment = held(&stand).await;
    for service in ["notification", "reporting", "wallet", "auth", "payment"] {
        let (status, body) = decide(&stand, service, payment, "cleared").await;
        assert_eq!(status, 403, "{service}: {body}");
        assert_eq!(
            body["error"]["details"]["reason"], "service_not_allowed",
            "{body}"
        );
    }
    // Nor a user, compliance included (their release is `POST .../release`).
    let officer = Uuid::now_v7();
    let response = ServiceClient::http_client()
        .put(format!("{}/internal/payments/{payment}/aml", stand.base))
        .header("x-user-id", officer.to_string())
        .header("x-user-roles", "user,compliance")
        .json(&json!({"alert_id": Uuid::now_v7(), "outcome": "cleared",
            "decided_at": chrono::Utc::now()}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(stand.status_of(payment).await, "ON_HOLD");
}

#[tokio::test]
async fn an_aml_decision_published_on_the_bus_settles_nothing() {
    let stand = Stand::start().await;
    let payment = held(&stand).await;
    // Whoever holds the broker's credentials (D's, F's) publishes E's decision.
    for (event_type, rule) in [
        (types::AML_CLEARED, types::AML_HOLD_RULE),
        (types::AML_FLAGGED, types::AML_HOLD_RULE),
    ] {
        let event = Event::new(
            "kyc",
            event_type,
            &json!({"alert_id": Uuid::now_v7(), "payment_id": payment,
                "user_id": Uuid::now_v7(), "rule": rule, "reason": "forged"}),
        )
        .unwrap();
        let mut tx = stand.pool.begin().await.unwrap();
        AmlDecisions.handle(&mut tx, &event).await.unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(stand.status_of(payment).await, "ON_HOLD");
    let moved: i64 = db::scalar(&stand.pool, "SELECT count(*) FROM outbox").await;
    assert_eq!(moved, 0, "nothing announced");
}
