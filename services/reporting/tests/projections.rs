//! F's read models against real PostgreSQL: replays and disorder change nothing.

use finflow_platform::db::TestDb;
use finflow_platform::events::{Event, types};
use finflow_reporting::projections::{LEDGER_ENTRY_POSTED, project};
use finflow_reporting::reports::ledger_totals;
use serde_json::{Value, json};
use uuid::Uuid;

fn payment_event(
    kind: &str,
    id: Uuid,
    user: Uuid,
    status: &str,
    amount: &str,
    offset_ms: i64,
) -> Event {
    let mut e = Event::new(
        "payment",
        kind,
        &json!({"payment_id": id, "id": id, "user_id": user, "kind": "transfer", "status": status,
                "amount": amount, "currency": "USD", "created_at": "2026-11-20T10:00:00Z",
                "completed_at": if status == "COMPLETED" { json!("2026-11-20T10:00:01Z") } else { Value::Null }}),
    )
    .unwrap();
    e.occurred_at += chrono::Duration::milliseconds(offset_ms);
    e
}

fn ledger_event(amount: &str, currency: &str, kind: &str) -> Event {
    Event::new(
        "wallet",
        LEDGER_ENTRY_POSTED,
        &json!({"transfer_id": Uuid::new_v4(), "entry_id": Uuid::new_v4(), "kind": kind, "amount": amount,
                "currency": currency, "from_wallet_id": Uuid::new_v4(), "to_wallet_id": Uuid::new_v4(),
                "created_at": chrono::Utc::now()}),
    )
    .unwrap()
}

async fn snapshot(db: &TestDb) -> Value {
    let payments: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT payment_id, status FROM payments_rm ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let users: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT user_id, kyc_status FROM users_rm ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let now = chrono::Utc::now();
    let totals = ledger_totals(
        &db.pool,
        now - chrono::Duration::days(1),
        now + chrono::Duration::days(1),
        None,
    )
    .await
    .unwrap();
    json!({"payments": format!("{payments:?}"), "users": format!("{users:?}"), "totals": format!("{totals:?}")})
}

async fn apply(db: &TestDb, events: &[Event]) {
    let mut tx = db.pool.begin().await.unwrap();
    for e in events {
        project(&mut tx, e).await.unwrap();
    }
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn replaying_every_event_twice_leaves_every_report_unchanged() {
    let db = TestDb::new(Some(&finflow_reporting::MIGRATIONS)).await;
    let (user, payment) = (Uuid::new_v4(), Uuid::new_v4());
    let events = vec![
        Event::new(
            "auth",
            types::USER_CREATED,
            &json!({"user_id": user, "account_tier": "bronze"}),
        )
        .unwrap(),
        Event::new(
            "kyc",
            types::USER_KYC_UPDATED,
            &json!({"user_id": user, "kyc_status": "verified"}),
        )
        .unwrap(),
        payment_event(
            types::PAYMENT_REQUESTED,
            payment,
            user,
            "PENDING",
            "10.00",
            0,
        ),
        payment_event(
            types::PAYMENT_COMPLETED,
            payment,
            user,
            "COMPLETED",
            "10.00",
            5,
        ),
        ledger_event("10.00", "USD", "transfer"),
        ledger_event("5.50", "EUR", "deposit"),
    ];
    apply(&db, &events).await;
    let once = snapshot(&db).await;
    apply(&db, &events).await;
    apply(&db, &events).await;
    assert_eq!(snapshot(&db).await, once);
    assert!(once["totals"].as_str().unwrap().contains("5.5"), "{once}");
}

#[tokio::test]
async fn events_arriving_out_of_order_converge_to_the_newest_fact() {
    let db = TestDb::new(Some(&finflow_reporting::MIGRATIONS)).await;
    let (user, payment) = (Uuid::new_v4(), Uuid::new_v4());
    let requested = payment_event(
        types::PAYMENT_REQUESTED,
        payment,
        user,
        "PENDING",
        "1.00",
        0,
    );
    let completed = payment_event(
        types::PAYMENT_COMPLETED,
        payment,
        user,
        "COMPLETED",
        "1.00",
        10,
    );
    let kyc = Event::new(
        "kyc",
        types::USER_KYC_UPDATED,
        &json!({"user_id": user, "kyc_status": "verified"}),
    )
    .unwrap();
    let created = Event::new(
        "auth",
        types::USER_CREATED,
        &json!({"user_id": user, "account_tier": "gold"}),
    )
    .unwrap();
    apply(&db, &[completed, requested, kyc, created]).await;
    let (status,): (String,) =
        sqlx::query_as("SELECT status FROM payments_rm WHERE payment_id = $1")
            .bind(payment)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        status, "COMPLETED",
        "a late PENDING does not undo COMPLETED"
    );
    let (kyc_status, tier): (String, Option<String>) =
        sqlx::query_as("SELECT kyc_status, account_tier FROM users_rm WHERE user_id = $1")
            .bind(user)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (kyc_status.as_str(), tier.as_deref()),
        ("verified", Some("gold"))
    );
}
