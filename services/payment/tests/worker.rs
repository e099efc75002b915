//! C's worker against real PostgreSQL and a stand-in for B: the requests a consumer
//! batch holds go to B in one call, and each payment settles by its own answer.

mod common;

use common::Stand;
use finflow_payment::worker::PaymentWorker;
use finflow_platform::db;
use finflow_platform::events::consumer::{Outcome, apply_batch, apply_once};
use finflow_platform::events::{Event, types};
use serde_json::json;
use uuid::Uuid;

const QUEUE: &str = "payment.requests";

fn requested(payment: Uuid) -> Event {
    Event::new(
        "payment",
        types::PAYMENT_REQUESTED,
        &json!({ "payment_id": payment }),
    )
    .unwrap()
}

async fn failure_code(stand: &Stand, id: Uuid) -> Option<String> {
    db::scalar_of(
        &stand.pool,
        "SELECT failure_code FROM payments WHERE id = $1",
        id,
    )
    .await
}

async fn announced(stand: &Stand, event_type: &str) -> i64 {
    db::scalar_of(
        &stand.pool,
        "SELECT count(*) FROM outbox WHERE event_type = $1",
        event_type,
    )
    .await
}

#[tokio::test]
async fn a_batch_of_requests_is_one_call_to_b_and_each_payment_settles_by_its_own_answer() {
    let stand = Stand::start().await;
    let payer = Uuid::now_v7();
    let (from, to) = (
        stand.wallets.wallet_of(payer),
        stand.wallets.wallet_of(Uuid::now_v7()),
    );
    let poor = stand.wallets.wallet_of(payer);
    stand.wallets.refuse_from(poor);
    let pay = |from: Uuid, status: &'static str| {
        let stand = &stand;
        async move {
            stand
                .payment(payer, "transfer", Some(from), Some(to), "1.00", status)
                .await
        }
    };
    let (first, second) = (pay(from, "PENDING").await, pay(from, "PENDING").await);
    let refused = pay(poor, "PENDING").await;
    let settled = pay(from, "COMPLETED").await;
    let held = pay(from, "ON_HOLD").await;
    // The sweeper's second request for `first` rides in the same batch.
    let events = [
        requested(first),
        requested(second),
        requested(refused),
        requested(settled),
        requested(held),
        requested(first),
    ];
    let refs: Vec<&Event> = events.iter().collect();
    let worker = PaymentWorker {
        wallets: stand.client.clone(),
    };
    let outcomes = apply_batch(&stand.pool, QUEUE, &worker, &refs)
        .await
        .unwrap();
    assert_eq!(outcomes, vec![Some(Outcome::Applied); 6]);

    assert_eq!(
        stand.wallets.batches(),
        vec![3],
        "one call, the pending ones only"
    );
    assert_eq!(
        stand.wallets.transfers(),
        3,
        "each pending payment asked for once"
    );
    assert_eq!(stand.status_of(first).await, "COMPLETED");
    assert_eq!(stand.status_of(second).await, "COMPLETED");
    assert_eq!(stand.status_of(refused).await, "FAILED");
    assert_eq!(
        failure_code(&stand, refused).await.as_deref(),
        Some("INSUFFICIENT_FUNDS")
    );
    assert_eq!(stand.status_of(settled).await, "COMPLETED");
    assert_eq!(
        stand.status_of(held).await,
        "ON_HOLD",
        "a held payment waits"
    );
    assert_eq!(announced(&stand, types::PAYMENT_COMPLETED).await, 2);
    assert_eq!(announced(&stand, types::PAYMENT_FAILED).await, 1);
    // One event each, in the order the requests came, carrying the outcome.
    let events: Vec<(String, Uuid, Option<String>)> = sqlx::query_as(
        "SELECT event_type, (payload->'data'->>'payment_id')::uuid, \
                payload->'data'->'failure'->>'code' FROM outbox ORDER BY seq",
    )
    .fetch_all(&stand.pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        vec![
            (types::PAYMENT_COMPLETED.to_owned(), first, None),
            (types::PAYMENT_COMPLETED.to_owned(), second, None),
            (
                types::PAYMENT_FAILED.to_owned(),
                refused,
                Some("INSUFFICIENT_FUNDS".to_owned())
            ),
        ]
    );

    // Delivered again: nothing more happens.
    let outcomes = apply_batch(&stand.pool, QUEUE, &worker, &refs)
        .await
        .unwrap();
    assert_eq!(outcomes, vec![Some(Outcome::Duplicate); 6]);
    assert_eq!(stand.wallets.transfers(), 3);
}

#[tokio::test]
async fn a_batch_b_could_not_answer_leaves_each_payment_to_be_retried_alone() {
    let stand = Stand::start().await;
    let payer = Uuid::now_v7();
    let (from, to) = (
        stand.wallets.wallet_of(payer),
        stand.wallets.wallet_of(Uuid::now_v7()),
    );
    let one = stand
        .payment(payer, "transfer", Some(from), Some(to), "1.00", "PENDING")
        .await;
    let two = stand
        .payment(payer, "transfer", Some(from), Some(to), "2.00", "PENDING")
        .await;
    let events = [requested(one), requested(two)];
    let refs: Vec<&Event> = events.iter().collect();
    let worker = PaymentWorker {
        wallets: stand.client.clone(),
    };
    stand.wallets.set_down(true);
    let outcomes = apply_batch(&stand.pool, QUEUE, &worker, &refs)
        .await
        .unwrap();
    assert_eq!(outcomes, vec![None, None], "both given back");
    assert_eq!(stand.status_of(one).await, "PENDING");
    let recorded: i64 = db::scalar(&stand.pool, "SELECT count(*) FROM processed_events").await;
    assert_eq!(recorded, 0, "no dedupe record keeps a retry out");
    assert_eq!(announced(&stand, types::PAYMENT_COMPLETED).await, 0);

    // Retried alone (the consumer's path for a failed event): the single transfer route.
    stand.wallets.set_down(false);
    for event in &events {
        let outcome = apply_once(&stand.pool, QUEUE, &worker, event)
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Applied);
    }
    assert_eq!(stand.status_of(one).await, "COMPLETED");
    assert_eq!(stand.status_of(two).await, "COMPLETED");
    assert_eq!(stand.wallets.transfers(), 2);
}
