//! F's read models against real PostgreSQL: replays and disorder change nothing.

use finflow_contracts::payment::{Kind, Payment, PaymentEvent, Status};
use finflow_platform::db::{self, TestDb};
use finflow_platform::events::consumer::{Handler, HandlerError};
use finflow_platform::events::{Event, types};
use finflow_reporting::projections::{LEDGER_ENTRY_POSTED, Projector, project};
use finflow_reporting::reports::{
    LedgerTotal, compliance_report, ledger_totals, statement_lines, volume_by_day,
};
use serde_json::{Value, json};
use uuid::Uuid;

/// A `payment.*` event of a payment between `from` and `to` (none: the system
/// account), as C publishes every payment event (the original `payment.requested` and
/// the sweeper's re-publication alike): the contract's [`PaymentEvent`].
#[allow(clippy::too_many_arguments)]
fn event_of(
    kind: &str,
    id: Uuid,
    user: Uuid,
    (from, to): (Option<Uuid>, Option<Uuid>),
    status: &str,
    amount: &str,
    offset_ms: i64,
) -> Event {
    let created_at = "2026-11-20T10:00:00Z".parse().unwrap();
    let status = Status::parse(status).unwrap();
    let mut e = Event::new(
        "payment",
        kind,
        &PaymentEvent {
            payment_id: id,
            payee_user_id: None,
            payment: Payment {
                id,
                user_id: user,
                kind: Kind::Transfer,
                status,
                from_wallet_id: from,
                to_wallet_id: to,
                amount: amount.to_owned(),
                currency: "USD".to_owned(),
                description: None,
                failure: None,
                created_at,
                updated_at: created_at,
                completed_at: (status == Status::Completed)
                    .then(|| "2026-11-20T10:00:01Z".parse().unwrap()),
            },
        },
    )
    .unwrap();
    e.occurred_at += chrono::Duration::milliseconds(offset_ms);
    e
}

fn payment_event(
    kind: &str,
    id: Uuid,
    user: Uuid,
    status: &str,
    amount: &str,
    offset_ms: i64,
) -> Event {
    event_of(kind, id, user, (None, None), status, amount, offset_ms)
}

/// A transfer between two users' wallets.
#[derive(Clone, Copy)]
struct Transfer {
    id: Uuid,
    payer: Uuid,
    from: Uuid,
    to: Uuid,
}

/// A `payment.*` event of `t`.
fn transfer_event(kind: &str, t: Transfer, status: &str, amount: &str, offset_ms: i64) -> Event {
    let sides = (Some(t.from), Some(t.to));
    event_of(kind, t.id, t.payer, sides, status, amount, offset_ms)
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

/// B's entry `entry` for transfer `t`.
fn entry_event(t: Transfer, entry: Uuid, amount: &str) -> Event {
    Event::new(
        "wallet",
        LEDGER_ENTRY_POSTED,
        &json!({"transfer_id": t.id, "entry_id": entry, "kind": "transfer", "amount": amount,
                "currency": "USD", "from_wallet_id": t.from, "to_wallet_id": t.to,
                "created_at": "2026-11-20T10:00:01Z"}),
    )
    .unwrap()
}

/// `e`, occurred `offset_ms` after a fixed time (so two events may share one).
fn at(mut e: Event, offset_ms: i64) -> Event {
    e.occurred_at = "2026-11-20T10:00:00Z"
        .parse::<chrono::DateTime<chrono::Utc>>()
        .unwrap()
        + chrono::Duration::milliseconds(offset_ms);
    e
}

/// Every order of `items`.
fn orders(items: &[usize]) -> Vec<Vec<usize>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut all = Vec::new();
    for (i, first) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        for mut order in orders(&rest) {
            order.insert(0, *first);
            all.push(order);
        }
    }
    all
}

/// Every row, all columns, of `payment`'s payment and ledger read models (all payments'
/// with `None`).
async fn rows_of(db: &TestDb, payment: Option<Uuid>) -> Vec<String> {
    db::column_of(
        &db.pool,
        "SELECT p::text FROM payments_rm p WHERE $1::uuid IS NULL OR payment_id = $1 \
         UNION ALL SELECT l::text FROM ledger_rm l WHERE $1::uuid IS NULL OR transfer_id = $1 \
         ORDER BY 1",
        payment,
    )
    .await
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
    let totals = totals_of_the_day(db).await;
    json!({"payments": format!("{payments:?}"), "users": format!("{users:?}"), "totals": format!("{totals:?}"),
           "wallets": format!("{wallets:?}"), "statements": statements})
}

/// The ledger's totals over the day either side of now.
async fn totals_of_the_day(db: &TestDb) -> Vec<LedgerTotal> {
    let now = chrono::Utc::now();
    let day = chrono::Duration::days(1);
    ledger_totals(&db.pool, now - day, now + day, None)
        .await
        .unwrap()
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

/// Applies `events` as one consumer batch ([`Handler::handle_batch`]) and commits: the
/// answer for each event.
async fn apply_batch(db: &TestDb, events: &[Event]) -> Vec<Result<(), HandlerError>> {
    let refs: Vec<&Event> = events.iter().collect();
    let mut tx = db.pool.begin().await.unwrap();
    let answers = Projector.handle_batch(&mut tx, &refs).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(answers.len(), events.len());
    answers
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
            &json!({"user_id": user, "email": "ada@example.com", "full_name": "Ada",
                    "kyc_status": "pending", "account_tier": "bronze"}),
        )
        .unwrap(),
        Event::new(
            "kyc",
            types::USER_KYC_UPDATED,
            &json!({"user_id": user, "kyc_status": "verified", "submission_id": Uuid::now_v7()}),
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
    let count: i64 = db::scalar(&db.pool, "SELECT count(*) FROM wallets_rm").await;
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
        &json!({"user_id": user, "kyc_status": "verified", "submission_id": Uuid::now_v7()}),
    )
    .unwrap();
    let created = Event::new(
        "auth",
        types::USER_CREATED,
        &json!({"user_id": user, "email": "ada@example.com", "full_name": "Ada",
                "kyc_status": "pending", "account_tier": "gold"}),
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

/// Each of C's replicas stamps its events by its own clock: a sweeper's re-publication of
/// a PENDING payment, on a replica whose clock ran ahead, was stamped after the
/// completion another replica published just after it, and F kept PENDING for good (out
/// of the day's volume and the payee's statement).
#[tokio::test]
async fn a_payment_never_goes_back_to_an_earlier_status_whatever_the_times_of_its_events() {
    let db = TestDb::new(Some(&finflow_reporting::MIGRATIONS)).await;
    let user = Uuid::new_v4();
    let status_of = |payment: Uuid| {
        let pool = db.pool.clone();
        async move {
            db::scalar_of::<String, _>(
                &pool,
                "SELECT status FROM payments_rm WHERE payment_id = $1",
                payment,
            )
            .await
        }
    };
    // (earlier stage, stamped later) then (later stage, stamped earlier).
    let cases = [
        (
            ("PENDING", types::PAYMENT_REQUESTED),
            ("COMPLETED", types::PAYMENT_COMPLETED),
        ),
        (
            ("PENDING", types::PAYMENT_REQUESTED),
            ("FAILED", types::PAYMENT_FAILED),
        ),
        (
            ("COMPLETED", types::PAYMENT_COMPLETED),
            ("REVERSED", types::PAYMENT_REVERSED),
        ),
    ];
    for ((early, early_kind), (late, late_kind)) in cases {
        let events = |payment: Uuid| {
            (
                payment_event(early_kind, payment, user, early, "25.00", 50),
                payment_event(late_kind, payment, user, late, "25.00", 0),
            )
        };
        // One by one, in both orders, and as one batch in both orders.
        let ids: [Uuid; 4] = std::array::from_fn(|_| Uuid::new_v4());
        let [one, other, batch, reversed_batch] = ids.map(events);
        apply(&db, &[one.0, one.1]).await;
        apply(&db, &[other.1, other.0]).await;
        let outcomes = apply_batch(&db, &[batch.0, batch.1]).await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        let outcomes = apply_batch(&db, &[reversed_batch.1, reversed_batch.0]).await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        for payment in ids {
            assert_eq!(status_of(payment).await, late, "{early} after {late}");
        }
    }
}

#[tokio::test]
async fn a_batch_of_a_payments_events_leaves_the_rows_they_leave_one_by_one() {
    let batched = TestDb::new(Some(&finflow_reporting::MIGRATIONS)).await;
    let one_by_one = TestDb::new(Some(&finflow_reporting::MIGRATIONS)).await;
    let t = Transfer {
        id: Uuid::new_v4(),
        payer: Uuid::new_v4(),
        from: Uuid::new_v4(),
        to: Uuid::new_v4(),
    };
    let events = [
        transfer_event(types::PAYMENT_REQUESTED, t, "PENDING", "25.00", 0),
        transfer_event(types::PAYMENT_COMPLETED, t, "COMPLETED", "25.00", 10),
        entry_event(t, Uuid::new_v4(), "25.00"),
    ];
    let answers = apply_batch(&batched, &events).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    apply(&one_by_one, &events).await;
    assert_eq!(
        rows_of(&batched, None).await,
        rows_of(&one_by_one, None).await
    );

    let payment: (String, String, Option<Uuid>, Option<Uuid>, bool) = sqlx::query_as(
        "SELECT status, amount::text, from_wallet_id, to_wallet_id, last_event_at = $2 \
         FROM payments_rm WHERE payment_id = $1",
    )
    .bind(t.id)
    .bind(events[1].occurred_at)
    .fetch_one(&batched.pool)
    .await
    .unwrap();
    assert_eq!(
        payment,
        (
            "COMPLETED".to_owned(),
            "25.0000".to_owned(),
            Some(t.from),
            Some(t.to),
            true
        )
    );
    let entries: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT transfer_id, amount::text FROM ledger_rm")
            .fetch_all(&batched.pool)
            .await
            .unwrap();
    assert_eq!(entries, [(t.id, "25.0000".to_owned())]);
}

#[tokio::test]
async fn a_batch_in_reverse_order_converges_to_the_same_rows() {
    let in_order = TestDb::new(Some(&finflow_reporting::MIGRATIONS)).await;
    let reversed = TestDb::new(Some(&finflow_reporting::MIGRATIONS)).await;
    let t = Transfer {
        id: Uuid::new_v4(),
        payer: Uuid::new_v4(),
        from: Uuid::new_v4(),
        to: Uuid::new_v4(),
    };
    let events = [
        transfer_event(types::PAYMENT_REQUESTED, t, "PENDING", "25.00", 0),
        transfer_event(types::PAYMENT_COMPLETED, t, "COMPLETED", "25.00", 10),
        entry_event(t, Uuid::new_v4(), "25.00"),
    ];
    let backwards: Vec<Event> = events.iter().rev().cloned().collect();
    apply_batch(&in_order, &events).await;
    apply_batch(&reversed, &backwards).await;
    let rows = rows_of(&in_order, None).await;
    assert_eq!(rows_of(&reversed, None).await, rows);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().any(|r| r.contains("COMPLETED")), "{rows:?}");

    // Replayed as a batch, in either order: nothing moves.
    apply_batch(&in_order, &backwards).await;
    apply_batch(&reversed, &events).await;
    assert_eq!(rows_of(&in_order, None).await, rows);
    assert_eq!(rows_of(&reversed, None).await, rows);
}

#[tokio::test]
async fn a_batch_leaves_what_its_events_leave_one_by_one_in_every_order_over_every_row_held() {
    let batched = TestDb::new(Some(&finflow_reporting::MIGRATIONS)).await;
    let one_by_one = TestDb::new(Some(&finflow_reporting::MIGRATIONS)).await;
    let mut cases = 0;
    for held in 0..4 {
        for order in orders(&[0, 1, 2, 3]) {
            let t = Transfer {
                id: Uuid::new_v4(),
                payer: Uuid::new_v4(),
                from: Uuid::new_v4(),
                to: Uuid::new_v4(),
            };
            // Facts that name the wallets and facts that do not, with different amounts
            // (the first fact's stays), and two at the same time (the first one's wins).
            let named =
                |kind: &str, status: &str, ms| at(transfer_event(kind, t, status, "1.00", 0), ms);
            let unnamed = |kind: &str, status: &str, ms| {
                at(payment_event(kind, t.id, t.payer, status, "2.00", 0), ms)
            };
            let facts = [
                named(types::PAYMENT_REQUESTED, "PENDING", 0),
                unnamed(types::PAYMENT_ON_HOLD, "ON_HOLD", 5),
                named(types::PAYMENT_COMPLETED, "COMPLETED", 10),
                unnamed(types::PAYMENT_FAILED, "FAILED", 10),
            ];
            let before: Vec<Event> = match held {
                0 => vec![],
                1 => vec![unnamed(types::PAYMENT_ON_HOLD, "ON_HOLD", 7)],
                2 => vec![named(types::PAYMENT_REQUESTED, "PENDING", 3)],
                _ => vec![named(types::PAYMENT_COMPLETED, "COMPLETED", 10)],
            };
            // One entry delivered twice, differently: the first delivery stays.
            let entry = Uuid::new_v4();
            let mut batch: Vec<Event> = order.iter().map(|i| facts[*i].clone()).collect();
            batch.insert(1, entry_event(t, entry, "1.00"));
            batch.push(entry_event(t, entry, "2.00"));

            for db in [&batched, &one_by_one] {
                apply(db, &before).await;
            }
            let answers = apply_batch(&batched, &batch).await;
            assert!(answers.iter().all(Result::is_ok), "{answers:?}");
            apply(&one_by_one, &batch).await;
            assert_eq!(
                rows_of(&batched, Some(t.id)).await,
                rows_of(&one_by_one, Some(t.id)).await,
                "held {held}, order {order:?}"
            );
            cases += 1;
        }
    }
    assert_eq!(cases, 96);
}

#[tokio::test]
async fn a_malformed_event_in_a_batch_is_refused_alone_and_the_others_are_written() {
    let db = TestDb::new(Some(&finflow_reporting::MIGRATIONS)).await;
    let t = Transfer {
        id: Uuid::new_v4(),
        payer: Uuid::new_v4(),
        from: Uuid::new_v4(),
        to: Uuid::new_v4(),
    };
    let events = [
        transfer_event(types::PAYMENT_REQUESTED, t, "PENDING", "25.00", 0),
        // A completion without the payment: malformed.
        Event::new(
            "payment",
            types::PAYMENT_COMPLETED,
            &json!({"payment_id": t.id}),
        )
        .unwrap(),
        entry_event(t, Uuid::new_v4(), "25.00"),
        Event::new(
            "wallet",
            LEDGER_ENTRY_POSTED,
            &json!({"entry_id": Uuid::new_v4(), "amount": 1.5}),
        )
        .unwrap(),
        // What the sweeper used to publish: no fact, no error.
        Event::new(
            "payment",
            types::PAYMENT_REQUESTED,
            &json!({"payment_id": t.id}),
        )
        .unwrap(),
        wallet_event(t.from, t.payer, "active", None, 0),
        Event::new("kyc", types::USER_KYC_UPDATED, &json!({"user_id": t.payer})).unwrap(),
    ];
    let answers: Vec<&str> = apply_batch(&db, &events)
        .await
        .iter()
        .map(|a| match a {
            Ok(()) => "ok",
            Err(HandlerError::Permanent(_)) => "refused",
            Err(HandlerError::Transient(_)) => "transient",
        })
        .collect();
    assert_eq!(
        answers,
        ["ok", "refused", "ok", "refused", "ok", "ok", "refused"]
    );
    let counts: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM payments_rm WHERE status = 'PENDING'), \
           (SELECT count(*) FROM ledger_rm), (SELECT count(*) FROM wallets_rm), \
           (SELECT count(*) FROM users_rm)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(counts, (1, 1, 1, 0), "the others written, the refused not");
}

#[tokio::test]
async fn totals_past_what_one_payment_may_be_are_reported_not_refused() {
    let db = TestDb::new(Some(&finflow_reporting::MIGRATIONS)).await;
    // Each the largest a payment may be, near enough: two of them held, two settled,
    // two posted; together past 10^16, which no single amount reaches.
    let large = "9000000000000000";
    let mut events = Vec::new();
    for status in ["ON_HOLD", "ON_HOLD", "COMPLETED", "COMPLETED"] {
        let user = Uuid::new_v4();
        events.push(payment_event(
            types::PAYMENT_REQUESTED,
            Uuid::new_v4(),
            user,
            status,
            large,
            0,
        ));
    }
    events.push(ledger_event(large, "USD", "deposit"));
    events.push(ledger_event(large, "USD", "deposit"));
    apply(&db, &events).await;
    // Settled today, so within the dashboard's 30 days.
    sqlx::query("UPDATE payments_rm SET created_at = now()")
        .execute(&db.pool)
        .await
        .unwrap();

    let sum = "18000000000000000.0000";
    let held = serde_json::to_value(compliance_report(&db.pool).await.unwrap()).unwrap();
    assert_eq!(
        held["on_hold"],
        json!([{"currency": "USD", "payments": 2, "amount": sum}])
    );
    let days = serde_json::to_value(volume_by_day(&db.pool).await.unwrap()).unwrap();
    assert_eq!(days[0]["payments"], 2, "{days}");
    assert_eq!(days[0]["amount"], sum, "{days}");
    let posted = totals_of_the_day(&db).await;
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!((posted[0].entries, posted[0].amount.as_str()), (2, sum));
}
