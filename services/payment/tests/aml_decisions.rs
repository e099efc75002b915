//! E's AML decisions as C's worker applies them, on a real PostgreSQL database.

use finflow_payment::worker::AmlDecisions;
use finflow_platform::db::{self, TestDb};
use finflow_platform::events::consumer::Handler;
use finflow_platform::events::{Event, types};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// A deposit of 15 000 USD that C put on hold.
async fn held_payment(pool: &PgPool) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO payments (id, user_id, idempotency_key, request_hash, kind, to_wallet_id, \
           amount, currency, status) \
         VALUES ($1, $2, $3, '\\x00', 'deposit', $4, 15000, 'USD', 'ON_HOLD')",
    )
    .bind(id)
    .bind(Uuid::now_v7())
    .bind(id.to_string())
    .bind(Uuid::now_v7())
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn status_of(pool: &PgPool, id: Uuid) -> (String, Option<String>) {
    sqlx::query_as("SELECT status, failure_code FROM payments WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// E's decision on an alert of `rule` about `payment`, applied as the consumer would.
async fn decide(pool: &PgPool, event_type: &str, payment: Uuid, rule: &str) {
    let event = Event::new(
        "finflow-kyc",
        event_type,
        &json!({
            "alert_id": Uuid::now_v7(),
            "payment_id": payment,
            "user_id": Uuid::now_v7(),
            "rule": rule,
            // An officer's note for E's case file, not for the payer.
            "reason": "SAR filed, ref 2026-117",
        }),
    )
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    AmlDecisions.handle(&mut tx, &event).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn only_the_decision_on_the_holding_alert_releases_or_fails_a_held_payment() {
    let db = TestDb::new(Some(&finflow_payment::MIGRATIONS)).await;
    let held = held_payment(&db.pool).await;

    // Pattern alerts on the same payment say nothing about its hold.
    decide(&db.pool, types::AML_CLEARED, held, "velocity").await;
    decide(&db.pool, types::AML_FLAGGED, held, "structuring").await;
    assert_eq!(
        status_of(&db.pool, held).await,
        ("ON_HOLD".to_owned(), None)
    );

    decide(&db.pool, types::AML_CLEARED, held, types::AML_HOLD_RULE).await;
    assert_eq!(
        status_of(&db.pool, held).await,
        ("PENDING".to_owned(), None)
    );

    let flagged = held_payment(&db.pool).await;
    decide(&db.pool, types::AML_FLAGGED, flagged, types::AML_HOLD_RULE).await;
    assert_eq!(
        status_of(&db.pool, flagged).await,
        ("FAILED".to_owned(), Some("AML_FLAGGED".to_owned()))
    );
    // The payer reads the failure (C's API, D's mail and webhooks): never the officer's
    // note, which would tip them off about the review.
    let told: String = db::scalar_of(
        &db.pool,
        "SELECT failure_reason FROM payments WHERE id = $1",
        flagged,
    )
    .await;
    assert_eq!(told, "declined after a compliance review");
    let announced: i64 = db::scalar(
        &db.pool,
        "SELECT count(*) FROM outbox WHERE payload::text LIKE '%SAR filed%'",
    )
    .await;
    assert_eq!(announced, 0, "no event carries the officer's note");
    // A later decision on a payment no longer held changes nothing.
    decide(&db.pool, types::AML_CLEARED, flagged, types::AML_HOLD_RULE).await;
    assert_eq!(status_of(&db.pool, flagged).await.0, "FAILED");
}
