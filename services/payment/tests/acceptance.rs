//! What C checks before it accepts a payment: the payer's verification as A holds it
//! now (through B), and the payment's worth in the reference currency for the AML hold
//! and the tier limits, whatever currency it is in.

mod common;

use common::{FakeWallet, Stand};
use finflow_platform::db;
use serde_json::{Value, json};
use uuid::Uuid;

fn wallet(stand: &Stand, owner: Uuid, currency: &'static str) -> Uuid {
    stand.wallets.add(FakeWallet {
        owner,
        currency,
        owner_kyc_status: "verified",
    })
}

async fn transfer(
    stand: &Stand,
    payer: Uuid,
    (from, to): (Uuid, Uuid),
    amount: &str,
    currency: &str,
) -> (u16, Value) {
    stand
        .pay(
            payer,
            "transfer",
            &json!({"from_wallet_id": from, "to_wallet_id": to, "amount": amount, "currency": currency}),
        )
        .await
}

async fn deposit(stand: &Stand, who: Uuid, to: Uuid, amount: &str, currency: &str) -> (u16, Value) {
    stand
        .pay(
            who,
            "deposit",
            &json!({"to_wallet_id": to, "amount": amount, "currency": currency}),
        )
        .await
}

#[tokio::test]
async fn a_deposit_in_a_unit_of_account_is_held_by_what_it_is_worth() {
    let stand = Stand::start().await;
    let user = Uuid::now_v7();
    let clf = wallet(&stand, user, "CLF");
    // 300 CLF is about 12,300 USD: above the 10,000 threshold though 300 < 10,000.
    let (status, body) = deposit(&stand, user, clf, "300", "CLF").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"]["status"], "ON_HOLD", "{body}");
    // 200 CLF (about 8,200 USD) is not held.
    let (status, body) = deposit(&stand, user, clf, "200", "CLF").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"]["status"], "PENDING", "{body}");

    // 15,000 JPY is about 96 USD: far below the threshold it passes when counted raw.
    let jpy = wallet(&stand, user, "JPY");
    let (status, body) = deposit(&stand, user, jpy, "15000", "JPY").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"]["status"], "PENDING", "{body}");
}

#[tokio::test]
async fn limits_compare_what_a_payment_is_worth() {
    let stand = Stand::start().await;
    let (payer, payee) = (Uuid::now_v7(), Uuid::now_v7());
    let (from, to) = (wallet(&stand, payer, "CLF"), wallet(&stand, payee, "CLF"));
    // B says 20,000 USD per payment; 500 CLF is about 20,500 USD.
    let (status, body) = transfer(&stand, payer, (from, to), "500", "CLF").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["details"]["reason"], "tier_limit", "{body}");
    assert_eq!(
        body["error"]["details"]["limit"], "per-transaction",
        "{body}"
    );
    assert_eq!(stand.wallets.transfers(), 0);
}

#[tokio::test]
async fn a_payer_whose_verification_was_revoked_is_refused_at_once() {
    let stand = Stand::start().await;
    let (payer, payee) = (Uuid::now_v7(), Uuid::now_v7());
    let from = stand.wallets.add(FakeWallet {
        owner: payer,
        currency: "USD",
        owner_kyc_status: "rejected",
    });
    let to = wallet(&stand, payee, "USD");
    // The token still says verified; B (asking A) says otherwise.
    let (status, body) = transfer(&stand, payer, (from, to), "5.00", "USD").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "KYC_REQUIRED", "{body}");
    let (status, body) = deposit(&stand, payer, from, "5.00", "USD").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "KYC_REQUIRED", "{body}");
    assert_eq!(
        stand.payments_recorded().await,
        0,
        "no payment was recorded"
    );
}

#[tokio::test]
async fn a_currency_without_a_reference_rate_is_refused() {
    let stand = Stand::start().await;
    let user = Uuid::now_v7();
    let afn = wallet(&stand, user, "AFN");
    let (status, body) = deposit(&stand, user, afn, "5.00", "AFN").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["details"]["reason"], "currency_not_supported",
        "{body}"
    );
}

#[tokio::test]
async fn only_the_payer_s_standing_is_asked_for_not_the_payee_s() {
    let stand = Stand::start().await;
    let (payer, payee) = (Uuid::now_v7(), Uuid::now_v7());
    let (from, to) = (wallet(&stand, payer, "USD"), wallet(&stand, payee, "USD"));
    let (status, body) = transfer(&stand, payer, (from, to), "5.00", "USD").await;
    assert_eq!(status, 202, "{body}");
    // Each standing costs B a call to A: the payee's KYC is not C's to check.
    assert_eq!(stand.wallets.standings(), vec![from]);
    assert_eq!(body["data"]["status"], "PENDING", "{body}");
}

#[tokio::test]
async fn a_transfer_is_accepted_after_one_call_to_b_that_reads_both_wallets() {
    let stand = Stand::start().await;
    let (payer, payee) = (Uuid::now_v7(), Uuid::now_v7());
    let (from, to) = (wallet(&stand, payer, "USD"), wallet(&stand, payee, "USD"));
    let (status, body) = transfer(&stand, payer, (from, to), "5.00", "USD").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        stand.wallets.lookups(),
        vec![format!("{from}?counterpart={to}")]
    );
    let recorded: Option<Uuid> =
        db::scalar(&stand.pool, "SELECT payee_user_id FROM payments").await;
    assert_eq!(
        recorded,
        Some(payee),
        "the payee is whom B says owns the wallet"
    );
}

#[tokio::test]
async fn a_transfer_to_a_wallet_b_does_not_have_is_refused_naming_that_wallet() {
    let stand = Stand::start().await;
    let payer = Uuid::now_v7();
    let from = wallet(&stand, payer, "USD");
    let nowhere = Uuid::now_v7();
    let (status, body) = transfer(&stand, payer, (from, nowhere), "5.00", "USD").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "NOT_FOUND", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&nowhere.to_string()), "{body}");
    assert_eq!(
        stand.payments_recorded().await,
        0,
        "no payment was recorded"
    );
}

#[tokio::test]
async fn money_moves_only_from_or_into_the_caller_s_own_wallet_else_404() {
    let stand = Stand::start().await;
    let (owner, thief) = (Uuid::now_v7(), Uuid::now_v7());
    let victims = wallet(&stand, owner, "USD");
    let thiefs = wallet(&stand, thief, "USD");
    // Taking from it, as a transfer or a withdrawal, or paying into it as a deposit (a
    // deposit names the wallet it credits as the caller's own).
    let attempts = [
        (
            "transfer",
            json!({"from_wallet_id": victims, "to_wallet_id": thiefs, "amount": "5.00", "currency": "USD"}),
        ),
        (
            "withdrawal",
            json!({"from_wallet_id": victims, "amount": "5.00", "currency": "USD"}),
        ),
        (
            "deposit",
            json!({"to_wallet_id": victims, "amount": "5.00", "currency": "USD"}),
        ),
    ];
    for (kind, body) in attempts {
        let (status, answer) = stand.pay(thief, kind, &body).await;
        assert_eq!(status, 404, "{kind}: {answer}");
        assert_eq!(answer["error"]["code"], "NOT_FOUND", "{kind}: {answer}");
    }
    assert_eq!(
        stand.payments_recorded().await,
        0,
        "no payment was recorded"
    );
}

#[tokio::test]
async fn one_user_cannot_bury_compliance_under_held_payments() {
    let stand = Stand::start().await;
    let (user, other) = (Uuid::now_v7(), Uuid::now_v7());
    let to = wallet(&stand, user, "USD");
    // Deposits above the threshold are held and cost nothing until compliance decides
    // them: without a bound one account raises an alert per request.
    let held = finflow_payment::api::MAX_HELD_PER_USER;
    let attempts = (0..held + 3).map(|_| deposit(&stand, user, to, "10000.01", "USD"));
    let answers = futures_util::future::join_all(attempts).await;
    let accepted = answers.iter().filter(|(status, _)| *status == 202).count();
    assert_eq!(accepted, held, "{answers:?}");
    for (status, body) in answers.iter().filter(|(status, _)| *status != 202) {
        assert_eq!(*status, 409, "{body}");
        assert_eq!(
            body["error"]["details"]["reason"], "too_many_held",
            "{body}"
        );
    }
    // A payment already made and sent again after Redis forgot its key is answered
    // with the payment, not refused as one too many.
    let key = "held-retried";
    let user_two = Uuid::now_v7();
    let theirs_to = wallet(&stand, user_two, "USD");
    let body_two = json!({"to_wallet_id": theirs_to, "amount": "10000.01", "currency": "USD"});
    for _ in 0..held - 1 {
        let (status, answer) = stand.pay(user_two, "deposit", &body_two).await;
        assert_eq!(status, 202, "{answer}");
    }
    let (status, first) = stand.pay_keyed(user_two, "deposit", &body_two, key).await;
    assert_eq!(status, 202, "{first}");
    finflow_payment::idempotency::Keys::new(
        finflow_platform::cache::connect(&finflow_platform::cache::test_url(), None)
            .await
            .unwrap(),
    )
    .release(user_two, key)
    .await;
    let (status, again) = stand.pay_keyed(user_two, "deposit", &body_two, key).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["data"]["id"], first["data"]["id"]);

    // Payments under the threshold, and another user's held ones, go on.
    let (status, body) = deposit(&stand, user, to, "100.00", "USD").await;
    assert_eq!(
        (status, body["data"]["status"].clone()),
        (202, json!("PENDING")),
        "{body}"
    );
    let theirs = wallet(&stand, other, "USD");
    let (status, body) = deposit(&stand, other, theirs, "10000.01", "USD").await;
    assert_eq!(
        (status, body["data"]["status"].clone()),
        (202, json!("ON_HOLD")),
        "{body}"
    );
}
