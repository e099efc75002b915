//! `Prefer: wait` against real PostgreSQL: the settlement trigger's notification wakes
//! a waiting request at once, whichever code path settled the payment.

use std::time::Duration;

use finflow_payment::waiters::Waiters;
use finflow_platform::db::TestDb;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn pending_payment(db: &TestDb) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO payments (id, user_id, idempotency_key, request_hash, kind, to_wallet_id, \
           amount, currency, status) \
         VALUES ($1, $2, $3, '\\x00', 'deposit', $2, 10, 'USD', 'PENDING')",
    )
    .bind(id)
    .bind(Uuid::now_v7())
    .bind(id.to_string())
    .execute(&db.pool)
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn a_payment_settling_wakes_its_waiting_request_at_once() {
    let db = TestDb::new(Some(&finflow_payment::MIGRATIONS)).await;
    let waiters = Waiters::new(8);
    let stop = CancellationToken::new();
    tokio::spawn(waiters.clone().listen(db.pool.clone(), stop.clone()));
    let held = pending_payment(&db).await;
    let settled = pending_payment(&db).await;

    // Once it listens, a wait wakes only for a notification or at its deadline.
    for _ in 0..200 {
        if waiters.is_listening() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(waiters.is_listening(), "listening within 10 s");
    let mut held_wait = waiters.watch(held).unwrap();
    let mut wait = waiters.watch(settled).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    sqlx::query("UPDATE payments SET status = 'ON_HOLD' WHERE id = $1")
        .bind(held)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE payments SET status = 'COMPLETED', completed_at = now() WHERE id = $1")
        .bind(settled)
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(!wait.next(deadline).await, "woken by the notification");
    // A hold is no settlement: that wait sleeps on (to a short deadline here).
    let short = tokio::time::Instant::now() + Duration::from_millis(500);
    assert!(
        held_wait.next(short).await,
        "a held payment does not wake its wait"
    );
    stop.cancel();
}
