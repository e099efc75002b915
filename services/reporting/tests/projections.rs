//! F's read models against real PostgreSQL: replays and disorder change nothing.

use finflow_platform::db::TestDb;
use finflow_platform::events::consumer::HandlerError;
use finflow_platform::events::{Event, types};
use finflow_reporting::projections::{LEDGER_ENTRY_POSTED, project};
use finflow_reporting::reports::{ledger_totals, statement_lines};
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

/// A transfer between two users' wallets.
#[derive(Clone, Copy)]
struct Transfer {
    id: Uuid,
    payer: Uuid,
    from: Uuid,
    to: Uuid,
}

/// A `payment.*` event of `t` with the data C publishes for every payment event, the
/// original `payment.requested` and the sweeper's re-publication alike: the payment id
/// and the whole payment (`settle::PaymentEvent`).
fn transfer_event(kind: &str, t: Transfer, status: &str, amount: &str, offset_ms: i64) -> Event {
    let completed_at = if status == "COMPLETED" {
        json!("2026-11-20T10:00:01Z")
    } else {
        Value::Null
    };
    let mut e = Event::new(
        "payment",
        kind,
        &json!({"payment_id": t.id, "id": t.id, "user_id": t.payer, "kind": "transfer", "status": status,
                "from_wallet_id": t.from, "to_wallet_id": t.to, "amount": amount, "currency": "USD",
                "description": null, "failure": null, "created_at": "2026-11-20T10:00:00Z",
                "updated_at": "2026-11-20T10:00:00Z", "completed_at": completed_at}),
    )
    .unwrap();
    e.occurred_at += chrono::Duration::milliseconds(offset_ms);
    e
}

/// `wallet.created` (no `previous`) or `wallet.status_changed`, as B publishes them.
fn wallet_event(
    wallet: Uuid,
    user: Uuid,
    status: &str,
    previous: Option<&str>,
    offset_ms: i64,
) -> Event {
    let (kind, data) = match previous {
        None => (
            types::WALLET_CREATED,
            json!({"wallet_id": wallet, "user_id": user, "currency": "USD", "status": status}),
        ),
        Some(previous) => (
            types::WALLET_STATUS_CHANGED,
            json!({"wallet_id": wallet, "user_id": user, "currency": "USD", "status": status,
                   "previous_status": previous}),
        ),
    };
    let mut e = Event::new("wallet", kind, &data).unwrap();
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

/// Every read model as the reports see it, and the statements of `users_with_statements`.
async fn snapshot(db: &TestDb, users_with_statements: &[Uuid]) -> Value {
    type PaymentRm = (
        Uuid,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<Uuid>,
        Option<Uuid>,
    );
    let payments: Vec<PaymentRm> = sqlx::query_as(
        "SELECT payment_id, status, amount::text, failure_code, completed_at::text, from_wallet_id, \
           to_wallet_id FROM payments_rm ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let wallets: Vec<(Uuid, Uuid, String, Option<String>, String)> = sqlx::query_as(
        "SELECT wallet_id, user_id, status, created_at::text, updated_at::text FROM wallets_rm ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut statements = Vec::new();
    for user in users_with_statements {
        let lines = statement_lines(&db.pool, *user).await.unwrap();
        statements.push(format!("{user}: {lines:?}"));
    }
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
    json!({"payments": format!("{payments:?}"), "users": format!("{users:?}"), "totals": format!("{totals:?}"),
           "wallets": format!("{wallets:?}"), "statements": statements})
}

/// (direction, kind, status) of each line of `user`'s statement.
async fn statement_of(db: &TestDb, user: Uuid) -> Vec<(String, String, String)> {
    statement_lines(&db.pool, user)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.direction, l.payment.kind, l.payment.status))
        .collect()
}

fn line(direction: &str, kind: &str, status: &str) -> (String, String, String) {
    (direction.to_owned(), kind.to_owned(), status.to_owned())
}

/// The wallet's owner and status, whether it has a creation time, whether that is
/// `created`'s time, and whether its newest fact is `newest`.
async fn wallet_state(
    db: &TestDb,
    wallet: Uuid,
    created: &Event,
    newest: &Event,
) -> (Uuid, String, bool, bool, bool) {
    sqlx::query_as(
        "SELECT user_id, status, created_at IS NOT NULL, coalesce(created_at = $2, false), \
           updated_at = $3 FROM wallets_rm WHERE wallet_id = $1",
    )
    .bind(wallet)
    .bind(created.occurred_at)
    .bind(newest.occurred_at)
    .fetch_one(&db.pool)
    .await
    .unwrap()
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
    let (receiver, from, to) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let transfer = Transfer {
        id: Uuid::new_v4(),
        payer: user,
        from,
        to,
    };
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
        wallet_event(from, user, "pending", None, 0),
        wallet_event(from, user, "active", Some("pending"), 5),
        wallet_event(to, receiver, "pending", None, 0),
        wallet_event(to, receiver, "active", Some("pending"), 5),
        transfer_event(types::PAYMENT_REQUESTED, transfer, "PENDING", "7.25", 0),
        transfer_event(types::PAYMENT_COMPLETED, transfer, "COMPLETED", "7.25", 5),
        wallet_event(to, receiver, "frozen", Some("active"), 10),
    ];
    let users = [user, receiver];
    apply(&db, &events).await;
    let once = snapshot(&db, &users).await;
    apply(&db, &events).await;
    apply(&db, &events).await;
    assert_eq!(snapshot(&db, &users).await, once);
    let backwards: Vec<Event> = events.iter().rev().cloned().collect();
    apply(&db, &backwards).await;
    assert_eq!(
        snapshot(&db, &users).await,
        once,
        "a replay in reverse order too"
    );
    assert!(once["totals"].as_str().unwrap().contains("5.5"), "{once}");
    assert!(
        once["wallets"].as_str().unwrap().contains("frozen"),
        "{once}"
    );
    assert_eq!(
        statement_of(&db, user).await,
        [
            line("out", "transfer", "COMPLETED"),
            line("out", "transfer", "COMPLETED")
        ]
    );
    assert_eq!(
        statement_of(&db, receiver).await,
        [line("in", "transfer", "COMPLETED")],
        "the receiver sees the transfer as money in"
    );
}

#[tokio::test]
async fn wallet_events_converge_to_the_newest_status_in_any_order() {
    let db = TestDb::new(Some(&finflow_reporting::MIGRATIONS)).await;
    let (wallet, user) = (Uuid::new_v4(), Uuid::new_v4());
    let created = wallet_event(wallet, user, "pending", None, 0);
    let activated = wallet_event(wallet, user, "active", Some("pending"), 5);
    let frozen = wallet_event(wallet, user, "frozen", Some("active"), 10);

    // The newest fact first: the wallet is known, its creation time not yet.
    apply(&db, std::slice::from_ref(&frozen)).await;
    let (owner, status, has_created_at, _, newest) =
        wallet_state(&db, wallet, &created, &frozen).await;
    assert_eq!(
        (owner, status.as_str(), has_created_at, newest),
        (user, "frozen", false, true)
    );
    // Creation arrives late: it fills in the creation time, not the status.
    apply(&db, std::slice::from_ref(&created)).await;
    // An older status change, then every event again, in order and twice: nothing moves.
    apply(&db, std::slice::from_ref(&activated)).await;
    let expected = (user, "frozen".to_owned(), true, true, true);
    assert_eq!(wallet_state(&db, wallet, &created, &frozen).await, expected);
    let all = [created.clone(), activated, frozen.clone()];
    apply(&db, &all).await;
    apply(&db, &all).await;
    assert_eq!(wallet_state(&db, wallet, &created, &frozen).await, expected);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM wallets_rm")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);

    // In order, a second wallet reaches the same kind of state.
    let other = Uuid::new_v4();
    apply(
        &db,
        &[
            wallet_event(other, user, "pending", None, 0),
            wallet_event(other, user, "active", Some("pending"), 5),
        ],
    )
    .await;
    let (status, has_created_at): (String, bool) = sqlx::query_as(
        "SELECT status, created_at IS NOT NULL FROM wallets_rm WHERE wallet_id = $1",
    )
    .bind(other)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), has_created_at), ("active", true));
}

#[tokio::test]
async fn a_republished_payment_request_leaves_the_reports_unchanged() {
    let db = TestDb::new(Some(&finflow_reporting::MIGRATIONS)).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let t = Transfer {
        id: Uuid::new_v4(),
        payer: alice,
        from: a,
        to: b,
    };
    let users = [alice, bob];
    let requested = transfer_event(types::PAYMENT_REQUESTED, t, "PENDING", "25.00", 0);
    // C's sweeper re-publishes a payment still PENDING: the same data, a new event.
    let republished = transfer_event(types::PAYMENT_REQUESTED, t, "PENDING", "25.00", 5);
    let completed = transfer_event(types::PAYMENT_COMPLETED, t, "COMPLETED", "25.00", 10);
    apply(
        &db,
        &[
            wallet_event(a, alice, "active", None, 0),
            wallet_event(b, bob, "active", None, 0),
            requested.clone(),
        ],
    )
    .await;

    // While the payment waits, the re-publication changes nothing.
    let pending = snapshot(&db, &users).await;
    apply(&db, std::slice::from_ref(&republished)).await;
    assert_eq!(snapshot(&db, &users).await, pending);
    assert_eq!(
        statement_of(&db, alice).await,
        [line("out", "transfer", "PENDING")]
    );
    assert!(
        statement_of(&db, bob).await.is_empty(),
        "nothing received yet"
    );

    // Delivered after the completion (a newer fact), it changes nothing either.
    apply(&db, std::slice::from_ref(&completed)).await;
    let done = snapshot(&db, &users).await;
    apply(&db, &[republished, requested]).await;
    assert_eq!(snapshot(&db, &users).await, done);
    assert_eq!(
        statement_of(&db, alice).await,
        [line("out", "transfer", "COMPLETED")]
    );
    assert_eq!(
        statement_of(&db, bob).await,
        [line("in", "transfer", "COMPLETED")]
    );

    // What the sweeper used to publish (only the id) may still be queued: a no-op, not
    // a dead letter. Any other payment event without the payment is malformed.
    let bare = |kind: &str| Event::new("payment", kind, &json!({"payment_id": t.id})).unwrap();
    apply(&db, &[bare(types::PAYMENT_REQUESTED)]).await;
    assert_eq!(snapshot(&db, &users).await, done);
    let mut tx = db.pool.begin().await.unwrap();
    let refused = project(&mut tx, &bare(types::PAYMENT_COMPLETED)).await;
    assert!(
        matches!(refused, Err(HandlerError::Permanent(_))),
        "{refused:?}"
    );
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn a_received_transfer_on_a_statement_does_not_name_its_sender() {
    let db = TestDb::new(Some(&finflow_reporting::MIGRATIONS)).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let t = Transfer {
        id: Uuid::new_v4(),
        payer: alice,
        from: a,
        to: b,
    };
    apply(
        &db,
        &[
            wallet_event(a, alice, "active", None, 0),
            wallet_event(b, bob, "active", None, 0),
            transfer_event(types::PAYMENT_REQUESTED, t, "PENDING", "25.00", 0),
            transfer_event(types::PAYMENT_COMPLETED, t, "COMPLETED", "25.00", 10),
        ],
    )
    .await;
    let received = statement_lines(&db.pool, bob).await.unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].direction, "in");
    assert_eq!(received[0].payment.user_id, None, "the sender is not named");
    let json = serde_json::to_value(&received[0]).unwrap();
    assert!(json.get("user_id").is_none(), "{json}");
    assert!(!json.to_string().contains(&alice.to_string()), "{json}");
    let sent = statement_lines(&db.pool, alice).await.unwrap();
    assert_eq!(
        sent[0].payment.user_id,
        Some(alice),
        "the payer's own line is theirs"
    );
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
