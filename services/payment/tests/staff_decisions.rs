//! Staff decisions on payments (release, reverse) on a real socket against real
//! PostgreSQL and Redis. Requests carry the identity headers a sidecar would set; B and
//! A's token endpoint are a stand-in that knows who owns which wallet and records the
//! transfers it is asked to apply.

mod common;

use std::time::Duration;

use axum::http::Method;
use common::Stand;
use finflow_payment::sweeper::Sweeper;
use finflow_platform::db;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

fn assert_own_payment_refused(answer: (u16, Value)) {
    assert_forbidden_because("own_payment", answer);
}

fn assert_refused_as_party(answer: (u16, Value)) {
    assert_forbidden_because("party", answer);
}

fn assert_forbidden_because(reason: &str, (status, body): (u16, Value)) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "FORBIDDEN", "{body}");
    assert_eq!(body["error"]["details"]["reason"], reason, "{body}");
}

#[tokio::test]
async fn staff_cannot_release_a_held_deposit_into_their_own_wallet() {
    let stand = Stand::start().await;
    let ops = Uuid::new_v4();
    let own = stand.wallets.wallet_of(ops);
    let held = stand
        .payment(ops, "deposit", None, Some(own), "10001.00", "ON_HOLD")
        .await;

    assert_own_payment_refused(stand.decide(ops, "compliance", held, "release").await);
    assert_eq!(stand.status_of(held).await, "ON_HOLD");
}

#[tokio::test]
async fn an_operator_cannot_release_a_payment_held_for_compliance_to_review() {
    let stand = Stand::start().await;
    let (payer, payee, ops) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let held = stand.transfer(payer, payee, "20000.00", "ON_HOLD").await;

    let (status, body) = stand.decide(ops, "ops", held, "release").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "FORBIDDEN", "{body}");
    assert_eq!(
        stand.status_of(held).await,
        "ON_HOLD",
        "still waiting for compliance"
    );
    assert_eq!(stand.wallets.transfers(), 0, "nothing moved");
}

#[tokio::test]
async fn staff_cannot_reverse_a_transfer_they_made() {
    let stand = Stand::start().await;
    let (ops, friend) = (Uuid::new_v4(), Uuid::new_v4());
    let paid = stand.transfer(ops, friend, "50.00", "COMPLETED").await;

    assert_own_payment_refused(stand.decide(ops, "ops", paid, "reverse").await);
    assert_eq!(stand.status_of(paid).await, "COMPLETED");
    assert_eq!(stand.wallets.transfers(), 0, "nothing was moved back");
}

#[tokio::test]
async fn staff_cannot_release_or_reverse_a_transfer_paid_to_them() {
    let stand = Stand::start().await;
    let (payer, staff) = (Uuid::new_v4(), Uuid::new_v4());
    let held = stand.transfer(payer, staff, "20000.00", "ON_HOLD").await;
    let paid = stand.transfer(payer, staff, "50.00", "COMPLETED").await;

    assert_own_payment_refused(stand.decide(staff, "compliance", held, "release").await);
    assert_own_payment_refused(stand.decide(staff, "ops", paid, "reverse").await);
    assert_eq!(stand.status_of(held).await, "ON_HOLD");
    assert_eq!(stand.status_of(paid).await, "COMPLETED");
    assert_eq!(stand.wallets.transfers(), 0);
}

#[tokio::test]
async fn another_staff_member_may_release_and_reverse_the_same_payments() {
    let stand = Stand::start().await;
    let (payer, payee, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let held = stand.transfer(payer, payee, "20000.00", "ON_HOLD").await;
    let paid = stand.transfer(payer, payee, "50.00", "COMPLETED").await;

    let (status, body) = stand.decide(other, "compliance", held, "release").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stand.status_of(held).await, "PENDING");
    let (status, body) = stand.decide(other, "ops", paid, "reverse").await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = stand.decide(Uuid::new_v4(), "ops", paid, "reverse").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stand.status_of(paid).await, "REVERSED");
    assert_eq!(stand.wallets.transfers(), 1);
}

/// A transfer through C's API, recorded with its payee as C records one today.
async fn paid(stand: &Stand, payer: Uuid, payee: Uuid, amount: &str) -> Uuid {
    let body = json!({"from_wallet_id": stand.wallets.wallet_of(payer),
        "to_wallet_id": stand.wallets.wallet_of(payee), "amount": amount, "currency": "USD"});
    let (status, body) = stand.pay(payer, "transfer", &body).await;
    assert!(status == 202 || status == 200, "{status} {body}");
    body["data"]["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn an_officer_who_exchanged_money_with_either_party_cannot_release_the_held_payment() {
    let stand = Stand::start().await;
    let (payer, payee) = (Uuid::new_v4(), Uuid::new_v4());
    let [paid_by_payer, paid_by_payee, paid_the_payee, uninvolved] =
        std::array::from_fn(|_| Uuid::new_v4());
    // A dollar to be noticed, from either end, or the officer's own to the payee.
    paid(&stand, payer, paid_by_payer, "1.00").await;
    paid(&stand, payee, paid_by_payee, "1.00").await;
    paid(&stand, paid_the_payee, payee, "1.00").await;
    let held = paid(&stand, payer, payee, "20000.00").await;
    assert_eq!(stand.status_of(held).await, "ON_HOLD");

    for officer in [paid_by_payer, paid_by_payee, paid_the_payee] {
        assert_refused_as_party(stand.decide(officer, "compliance", held, "release").await);
        assert_eq!(stand.status_of(held).await, "ON_HOLD");
    }
    let (status, body) = stand
        .decide(uninvolved, "compliance", held, "release")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stand.status_of(held).await, "PENDING");
}

#[tokio::test]
async fn an_operator_who_exchanged_money_with_a_party_can_neither_ask_for_nor_make_its_reversal() {
    let stand = Stand::start().await;
    let [payer, payee, accomplice] = std::array::from_fn(|_| Uuid::new_v4());
    paid(&stand, payer, accomplice, "1.00").await;
    let completed = stand.transfer(payer, payee, "50.00", "COMPLETED").await;

    assert_refused_as_party(stand.decide(accomplice, "ops", completed, "reverse").await);
    let (status, body) = stand
        .decide(Uuid::new_v4(), "ops", completed, "reverse")
        .await;
    assert_eq!(status, 202, "{body}");
    assert_refused_as_party(stand.decide(accomplice, "ops", completed, "reverse").await);
    assert_eq!(
        stand.status_of(completed).await,
        "COMPLETED",
        "not reversed"
    );
}

/// A payment's reversal requests, oldest first: who asked, how it was closed, by whom.
async fn reversal_requests(
    pool: &PgPool,
    payment: Uuid,
) -> Vec<(Uuid, Option<String>, Option<Uuid>)> {
    sqlx::query_as(
        "SELECT requested_by, outcome, closed_by FROM reversal_requests \
         WHERE payment_id = $1 ORDER BY id",
    )
    .bind(payment)
    .fetch_all(pool)
    .await
    .unwrap()
}

const REVERSALS: &str = "/api/v1/payments/reversals";

/// One operator alone used to reverse a completed payment, and reversing a withdrawal
/// credits the wallet with money that has already left: one insider and one customer
/// could have it paid out twice. One operator asks, another makes it.
#[tokio::test]
async fn a_reversal_one_operator_asks_for_is_made_only_once_another_approves_it() {
    let stand = Stand::start().await;
    let (payer, first, second) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let wallet = stand.wallets.wallet_of(payer);
    let paid_out = stand
        .payment(
            payer,
            "withdrawal",
            Some(wallet),
            None,
            "500.00",
            "COMPLETED",
        )
        .await;

    let (status, asked) = stand.decide(first, "ops", paid_out, "reverse").await;
    assert_eq!(status, 202, "{asked}");
    assert_eq!(asked["data"]["requested_by"], json!(first), "{asked}");
    assert_eq!(asked["data"]["payment"]["id"], json!(paid_out));
    assert_eq!(asked["data"]["payment"]["status"], "COMPLETED");
    assert!(asked["data"].get("outcome").is_none(), "waiting: {asked}");
    // The same operator again: the same request, not a second pair of eyes.
    let (status, again) = stand.decide(first, "ops", paid_out, "reverse").await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["data"], asked["data"]);
    assert_eq!(stand.status_of(paid_out).await, "COMPLETED");
    assert_eq!(stand.wallets.transfers(), 0, "nothing moved on one word");

    let (status, listed) = stand.as_staff(second, "ops", Method::GET, REVERSALS).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["data"]["items"],
        json!([asked["data"]]),
        "what waits"
    );

    let (status, made) = stand.decide(second, "ops", paid_out, "reverse").await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(made["data"]["status"], "REVERSED");
    assert_eq!(stand.wallets.transfers(), 1, "one compensating transfer");
    assert_eq!(
        reversal_requests(&stand.pool, paid_out).await,
        [(first, Some("approved".to_owned()), Some(second))]
    );
    let (_, listed) = stand.as_staff(first, "ops", Method::GET, REVERSALS).await;
    assert_eq!(listed["data"]["items"], json!([]), "{listed}");
    let (status, body) = stand
        .decide(Uuid::new_v4(), "ops", paid_out, "reverse")
        .await;
    assert_eq!(status, 409, "reversed once: {body}");
    assert_eq!(stand.wallets.transfers(), 1);
}

#[tokio::test]
async fn a_party_to_the_payment_can_neither_ask_for_nor_approve_nor_withdraw_its_reversal() {
    let stand = Stand::start().await;
    let (payer, payee, ops) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let paid = stand.transfer(payer, payee, "50.00", "COMPLETED").await;
    for party in [payer, payee] {
        assert_own_payment_refused(stand.decide(party, "ops", paid, "reverse").await);
    }

    let (status, body) = stand.decide(ops, "ops", paid, "reverse").await;
    assert_eq!(status, 202, "{body}");
    let path = format!("/api/v1/payments/{paid}/reverse");
    for party in [payer, payee] {
        assert_own_payment_refused(stand.decide(party, "ops", paid, "reverse").await);
        assert_own_payment_refused(stand.as_staff(party, "ops", Method::DELETE, &path).await);
    }
    assert_eq!(stand.status_of(paid).await, "COMPLETED");
    assert_eq!(stand.wallets.transfers(), 0);
    assert_eq!(
        reversal_requests(&stand.pool, paid).await,
        [(ops, None, None)]
    );
}

#[tokio::test]
async fn a_withdrawn_request_reverses_nothing_and_anyone_may_ask_again() {
    let stand = Stand::start().await;
    let (payer, payee) = (Uuid::new_v4(), Uuid::new_v4());
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let paid = stand.transfer(payer, payee, "50.00", "COMPLETED").await;
    let path = format!("/api/v1/payments/{paid}/reverse");
    let (status, body) = stand.as_staff(second, "ops", Method::DELETE, &path).await;
    assert_eq!(status, 404, "nothing waits: {body}");

    let (status, _) = stand.decide(first, "ops", paid, "reverse").await;
    assert_eq!(status, 202);
    // The second operator declines it.
    let (status, declined) = stand.as_staff(second, "ops", Method::DELETE, &path).await;
    assert_eq!(status, 200, "{declined}");
    assert_eq!(declined["data"]["outcome"], "withdrawn");
    assert_eq!(declined["data"]["closed_by"], json!(second));
    assert_eq!(declined["data"]["payment"]["status"], "COMPLETED");
    let (_, listed) = stand.as_staff(first, "ops", Method::GET, REVERSALS).await;
    assert_eq!(listed["data"]["items"], json!([]), "{listed}");

    // The second operator's request now waits for another, the first.
    let (status, asked) = stand.decide(second, "ops", paid, "reverse").await;
    assert_eq!(status, 202, "{asked}");
    assert_eq!(asked["data"]["requested_by"], json!(second));
    assert_eq!(stand.wallets.transfers(), 0);
    let (status, made) = stand.decide(first, "ops", paid, "reverse").await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(stand.wallets.transfers(), 1);
    assert_eq!(
        reversal_requests(&stand.pool, paid).await,
        [
            (first, Some("withdrawn".to_owned()), Some(second)),
            (second, Some("approved".to_owned()), Some(first)),
        ]
    );
}

/// The operator who asked was checked only as they asked: one the payer paid afterwards
/// (for the money back) was still one of the two who made the reversal.
#[tokio::test]
async fn a_reversal_whose_asker_has_since_exchanged_money_with_a_party_is_asked_for_anew() {
    let stand = Stand::start().await;
    let [payer, payee, first, second, third] = std::array::from_fn(|_| Uuid::new_v4());
    let completed = stand.transfer(payer, payee, "50.00", "COMPLETED").await;
    let (status, body) = stand.decide(first, "ops", completed, "reverse").await;
    assert_eq!(status, 202, "{body}");
    paid(&stand, payer, first, "1.00").await;

    let (status, asked) = stand.decide(second, "ops", completed, "reverse").await;
    assert_eq!(status, 202, "asked anew, not made: {asked}");
    assert_eq!(asked["data"]["requested_by"], json!(second));
    assert_eq!(stand.status_of(completed).await, "COMPLETED");
    assert_eq!(stand.wallets.transfers(), 0, "nothing moved");
    assert_eq!(
        reversal_requests(&stand.pool, completed).await,
        [
            (first, Some("withdrawn".to_owned()), Some(second)),
            (second, None, None),
        ]
    );
    // Nor does the first make the second's.
    assert_refused_as_party(stand.decide(first, "ops", completed, "reverse").await);
    let (status, made) = stand.decide(third, "ops", completed, "reverse").await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(made["data"]["status"], "REVERSED");
}

/// An approval a day late would act on what the first operator saw a day before.
#[tokio::test]
async fn a_request_nobody_approved_within_a_day_expires_and_the_next_operator_asks_anew() {
    let stand = Stand::start().await;
    let (payer, payee) = (Uuid::new_v4(), Uuid::new_v4());
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let paid = stand.transfer(payer, payee, "50.00", "COMPLETED").await;
    let (status, _) = stand.decide(first, "ops", paid, "reverse").await;
    assert_eq!(status, 202);
    sqlx::query("UPDATE reversal_requests SET requested_at = now() - interval '25 hours'")
        .execute(&stand.pool)
        .await
        .unwrap();
    let (_, listed) = stand.as_staff(second, "ops", Method::GET, REVERSALS).await;
    assert_eq!(listed["data"]["items"], json!([]), "{listed}");

    let (status, asked) = stand.decide(second, "ops", paid, "reverse").await;
    assert_eq!(status, 202, "not approved: {asked}");
    assert_eq!(asked["data"]["requested_by"], json!(second));
    assert_eq!(stand.status_of(paid).await, "COMPLETED");
    assert_eq!(stand.wallets.transfers(), 0);
    assert_eq!(
        reversal_requests(&stand.pool, paid).await,
        [
            (first, Some("expired".to_owned()), None),
            (second, None, None),
        ]
    );
}

#[tokio::test]
async fn an_approval_b_refuses_moves_nothing_and_asking_again_starts_over() {
    let stand = Stand::start().await;
    let (payer, payee) = (Uuid::new_v4(), Uuid::new_v4());
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let (from, to) = (
        stand.wallets.wallet_of(payer),
        stand.wallets.wallet_of(payee),
    );
    let paid = stand
        .payment(
            payer,
            "transfer",
            Some(from),
            Some(to),
            "50.00",
            "COMPLETED",
        )
        .await;
    let (status, _) = stand.decide(first, "ops", paid, "reverse").await;
    assert_eq!(status, 202);
    // The payee has spent the money.
    stand.wallets.refuse_from(to);
    let (status, body) = stand.decide(second, "ops", paid, "reverse").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "INSUFFICIENT_FUNDS", "{body}");
    assert_eq!(stand.status_of(paid).await, "COMPLETED");
    assert_eq!(
        reversal_requests(&stand.pool, paid).await,
        [(first, Some("refused".to_owned()), Some(second))]
    );
    let (status, asked) = stand.decide(second, "ops", paid, "reverse").await;
    assert_eq!(
        status, 202,
        "a new request, not the refused approval: {asked}"
    );
    assert_eq!(asked["data"]["requested_by"], json!(second));
}

/// B applied a reversal but its answer never reached C (a timeout, a lost connection).
/// C used to roll the approval back with the rest, and a withdrawal or the day's expiry
/// then left the payment COMPLETED for good while the money had gone back.
#[tokio::test]
async fn a_reversal_b_applied_but_answered_late_is_recorded_reversed() {
    let stand = Stand::start().await;
    let (first, second, third) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut paid = Vec::new();
    for _ in 0..2 {
        let payment = stand
            .transfer(Uuid::new_v4(), Uuid::new_v4(), "50.00", "COMPLETED")
            .await;
        let (status, _) = stand.decide(first, "ops", payment, "reverse").await;
        assert_eq!(status, 202);
        paid.push(payment);
    }
    stand.wallets.answer_late(true);
    for &payment in &paid {
        let (status, body) = stand.decide(second, "ops", payment, "reverse").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(stand.status_of(payment).await, "COMPLETED");
        assert_eq!(
            reversal_requests(&stand.pool, payment).await,
            [(first, Some("approved".to_owned()), Some(second))],
            "the approval stands"
        );
        let path = format!("/api/v1/payments/{payment}/reverse");
        let (status, body) = stand.as_staff(third, "ops", Method::DELETE, &path).await;
        assert_eq!(status, 409, "not withdrawn while it is applied: {body}");
    }
    stand.wallets.answer_late(false);

    // The next operator's POST drives the first; the sweeper the second.
    let (status, body) = stand.decide(third, "ops", paid[0], "reverse").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "REVERSED");
    let sweeper = Sweeper {
        pool: stand.pool.clone(),
        wallets: stand.client.clone(),
        republish_after: Duration::ZERO,
        fail_after: Duration::from_secs(15 * 60),
        interval: Duration::from_secs(1),
    };
    assert_eq!(sweeper.resume_reversals().await.unwrap(), 1);
    assert_eq!(sweeper.resume_reversals().await.unwrap(), 0, "nothing left");
    for &payment in &paid {
        assert_eq!(stand.status_of(payment).await, "REVERSED");
    }
    let ids = stand.wallets.transfer_ids();
    assert_eq!(ids.len(), 4, "each asked twice: {ids:?}");
    assert_eq!(
        ids[0], ids[2],
        "the same transfer id each time, applied once at B"
    );
    assert_eq!(ids[1], ids[3]);
}

#[tokio::test]
async fn two_operators_approving_at_once_reverse_the_payment_once() {
    let stand = Stand::start().await;
    let (payer, payee, first) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let paid = stand.transfer(payer, payee, "50.00", "COMPLETED").await;
    let (status, _) = stand.decide(first, "ops", paid, "reverse").await;
    assert_eq!(status, 202);

    let (a, b) = tokio::join!(
        stand.decide(Uuid::new_v4(), "ops", paid, "reverse"),
        stand.decide(Uuid::new_v4(), "ops", paid, "reverse"),
    );
    // The second either finds it reversed (409) or finds it approved and applies it
    // again (200): one transfer id either way, which B applies at most once.
    let statuses = [a.0, b.0];
    assert!(statuses.contains(&200), "{} {}", a.1, b.1);
    assert!(
        statuses.iter().all(|s| [200, 409].contains(s)),
        "{} {}",
        a.1,
        b.1
    );
    let ids = stand.wallets.transfer_ids();
    assert!(
        !ids.is_empty() && ids.iter().all(|id| *id == ids[0]),
        "{ids:?}"
    );
    assert_eq!(stand.status_of(paid).await, "REVERSED");
    assert_eq!(
        reversal_requests(&stand.pool, paid).await.len(),
        1,
        "one request, approved once"
    );
}

#[tokio::test]
async fn only_operators_see_the_reversals_waiting_for_approval() {
    let stand = Stand::start().await;
    for roles in ["compliance", "user"] {
        let (status, body) = stand
            .as_staff(Uuid::new_v4(), roles, Method::GET, REVERSALS)
            .await;
        assert_eq!(status, 403, "{roles}: {body}");
        assert_eq!(body["error"]["code"], "FORBIDDEN");
    }
}

#[tokio::test]
async fn the_waiting_reversals_come_in_pages_oldest_first() {
    let stand = Stand::start().await;
    let ops = Uuid::new_v4();
    let mut asked = Vec::new();
    for _ in 0..3 {
        let paid = stand
            .transfer(Uuid::new_v4(), Uuid::new_v4(), "5.00", "COMPLETED")
            .await;
        let (status, _) = stand.decide(ops, "ops", paid, "reverse").await;
        assert_eq!(status, 202);
        asked.push(json!(paid));
    }
    let (status, first) = stand
        .as_staff(ops, "ops", Method::GET, &format!("{REVERSALS}?limit=2"))
        .await;
    assert_eq!(status, 200, "{first}");
    let cursor = first["data"]["next_cursor"].as_str().unwrap();
    let (_, rest) = stand
        .as_staff(
            ops,
            "ops",
            Method::GET,
            &format!("{REVERSALS}?limit=2&cursor={cursor}"),
        )
        .await;
    assert!(rest["data"]["next_cursor"].is_null(), "{rest}");
    let listed: Vec<Value> = [&first, &rest]
        .iter()
        .flat_map(|page| page["data"]["items"].as_array().unwrap().clone())
        .map(|request| request["payment"]["id"].clone())
        .collect();
    assert_eq!(listed, asked);
    let (status, body) = stand
        .as_staff(ops, "ops", Method::GET, &format!("{REVERSALS}?page=2"))
        .await;
    assert_eq!(status, 400, "an unknown parameter: {body}");
}

/// The payee C names in a payment's events, for E's four eyes.
async fn announced_payee(pool: &PgPool, payment: &str) -> Value {
    db::scalar_of::<Option<Value>, _>(
        pool,
        "SELECT payload->'data'->'payee_user_id' FROM outbox \
         WHERE payload->'data'->>'payment_id' = $1",
        payment,
    )
    .await
    .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_held_transfer_names_its_payee_so_the_payee_cannot_review_it() {
    let stand = Stand::start().await;
    let (payer, payee) = (Uuid::new_v4(), Uuid::new_v4());
    let from = stand.wallets.wallet_of(payer);
    let to = stand.wallets.wallet_of(payee);
    let (status, body) = stand
        .pay(
            payer,
            "transfer",
            &json!({"from_wallet_id": from, "to_wallet_id": to,
                "amount": "20000.00", "currency": "USD"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"]["status"], "ON_HOLD", "{body}");
    let id = body["data"]["id"].as_str().unwrap();
    assert_eq!(announced_payee(&stand.pool, id).await, json!(payee));

    // Paid to the staff member: C refuses without asking B who owns the wallet.
    let id: Uuid = id.parse().unwrap();
    stand.wallets.forget_all();
    assert_own_payment_refused(stand.decide(payee, "compliance", id, "release").await);
}

#[tokio::test]
async fn a_hold_reviewed_for_longer_than_the_sweepers_deadline_is_not_failed_once_released() {
    let stand = Stand::start().await;
    let (payer, payee, officer) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let held = stand.transfer(payer, payee, "20000.00", "ON_HOLD").await;
    // Accepted an hour ago; the review took that long.
    sqlx::query("UPDATE payments SET created_at = now() - interval '1 hour' WHERE id = $1")
        .bind(held)
        .execute(&stand.pool)
        .await
        .unwrap();
    let (status, body) = stand.decide(officer, "compliance", held, "release").await;
    assert_eq!(status, 200, "{body}");

    let sweeper = Sweeper {
        pool: stand.pool.clone(),
        wallets: stand.client.clone(),
        republish_after: Duration::from_secs(60),
        fail_after: Duration::from_secs(15 * 60),
        interval: Duration::from_secs(1),
    };
    // Its deadline runs from the release: nothing to republish or settle yet (the
    // stand-in has no void route, so settling it would be an error here).
    assert_eq!(sweeper.sweep().await.unwrap(), (0, 0));
    assert_eq!(stand.status_of(held).await, "PENDING");
    assert_eq!(
        stand.wallets.transfers(),
        0,
        "the worker pays it, not the sweeper"
    );
}
