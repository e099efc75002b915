//! What B asks of a user before their money moves: a verification A holds now (not the
//! one their token or wallet creation saw), and tier limits per user across currencies,
//! valued in the reference currency.

mod common;

use common::{Stand, assert_forbidden};
use finflow_contracts::identity::KycStatus;
use finflow_contracts::wallet::InternalWallet;
use finflow_platform::db;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

fn assert_kyc_required((status, body): (u16, Value)) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "KYC_REQUIRED", "{body}");
}

/// Two verified bronze users with active wallets in `currency`, the first funded.
async fn pair(stand: &Stand, currency: &str, funds: &str) -> (Uuid, Uuid, Uuid, Uuid) {
    let (payer, payee) = (Uuid::now_v7(), Uuid::now_v7());
    stand.auth.set(payer, "verified", "bronze");
    stand.auth.set(payee, "verified", "bronze");
    let (from, to) = (
        stand.wallet_in(payer, currency).await,
        stand.wallet_in(payee, currency).await,
    );
    let (status, body) = stand.deposit(from, funds, currency).await;
    assert_eq!(status, 201, "{body}");
    (payer, payee, from, to)
}

#[tokio::test]
async fn a_user_whose_verification_was_revoked_can_no_longer_move_money() {
    let stand = Stand::start().await;
    let (payer, _, from, to) = pair(&stand, "USD", "500").await;

    // Compliance revoked it; A has been told (E tells A before it answers).
    stand.auth.set(payer, "rejected", "bronze");
    assert_kyc_required(stand.send(from, to, "10", "USD").await);
    assert_kyc_required(stand.deposit(from, "10", "USD").await);
    assert_kyc_required(
        stand
            .internal_transfer(
                "payment",
                &json!({"transfer_id": Uuid::now_v7(), "kind": "withdrawal",
                    "from_wallet_id": from, "amount": "10", "currency": "USD"}),
            )
            .await,
    );
    assert_eq!(stand.balance(from).await, "500.0000", "nothing moved");
    let (status, body) = stand
        .as_service(
            "payment",
            Method::GET,
            &format!("/internal/wallets/{from}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["owner_kyc_status"], "rejected");

    // Verified again, by a new document: money moves again.
    stand.auth.set(payer, "verified", "bronze");
    let (status, body) = stand.send(from, to, "10", "USD").await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_transfer_applied_before_its_payer_was_revoked_is_answered_as_applied_when_sent_again() {
    let stand = Stand::start().await;
    let (payer, _, from, to) = pair(&stand, "USD", "500").await;
    let transfer = |id: Uuid| {
        json!({"transfer_id": id, "kind": "transfer", "from_wallet_id": from,
            "to_wallet_id": to, "amount": "10", "currency": "USD"})
    };
    let applied = transfer(Uuid::now_v7());
    let (status, first) = stand.internal_transfer("payment", &applied).await;
    assert_eq!(status, 201, "{first}");

    // C lost B's answer (a timeout, a restart), and compliance revoked the payer before
    // C sent the transfer again: refused now, C would record FAILED a payment whose
    // money has moved, and nobody could reverse it.
    stand.auth.set(payer, "rejected", "bronze");
    let (status, again) = stand.internal_transfer("payment", &applied).await;
    assert_eq!(status, 200, "applied before, not refused: {again}");
    assert_eq!(again["data"], first["data"]);
    let (status, batch) = stand
        .as_service(
            "payment",
            Method::POST,
            "/internal/transfers/batch",
            Some(&json!({"transfers": [applied, transfer(Uuid::now_v7())]})),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    let results = &batch["data"]["results"];
    assert_eq!(results[0]["status"], 200, "{batch}");
    assert_eq!(results[0]["data"], first["data"], "{batch}");
    assert_eq!(results[1]["status"], 403, "a new one is refused: {batch}");
    assert_eq!(results[1]["error"]["code"], "KYC_REQUIRED", "{batch}");
    assert_kyc_required(
        stand
            .internal_transfer("payment", &transfer(Uuid::now_v7()))
            .await,
    );
    assert_eq!(stand.balance(from).await, "490.0000", "moved once");
}

/// C gave up on B's answer while the transfer waited on a wallet another batch held, and
/// sent it again after compliance revoked the payer: the retry was refused at once, C
/// recorded the payment failed, then the first attempt committed and the money moved.
#[tokio::test]
async fn a_transfer_sent_again_while_its_first_attempt_waits_is_answered_as_that_attempt_ends() {
    let stand = Stand::start().await;
    let (payer, _, from, to) = pair(&stand, "USD", "500").await;
    let transfer = json!({"transfer_id": Uuid::now_v7(), "kind": "transfer",
        "from_wallet_id": from, "to_wallet_id": to, "amount": "10", "currency": "USD"});
    let batch = json!({"transfers": [transfer]});
    let holder = stand.hold_wallet(to).await;

    let first = stand.internal_transfer("payment", &transfer);
    let retries = async {
        db::until_waiting_for_locks(&stand.pool, 1).await;
        stand.auth.set(payer, "rejected", "bronze");
        let again = stand.internal_transfer("payment", &transfer);
        let in_batch = stand.as_service(
            "payment",
            Method::POST,
            "/internal/transfers/batch",
            Some(&batch),
        );
        let both = async { tokio::join!(again, in_batch) };
        tokio::pin!(both);
        // Each retry waits for the first attempt to end, or is answered at once.
        let early = tokio::select! {
            answered = &mut both => Some(answered),
            () = db::until_waiting_for_locks(&stand.pool, 3) => None,
        };
        holder.commit().await.unwrap();
        match early {
            Some(answered) => answered,
            None => both.await,
        }
    };
    let ((status, first), ((again_status, again), (batch_status, batch))) =
        tokio::join!(first, retries);
    assert_eq!(status, 201, "{first}");
    assert_eq!(
        again_status, 200,
        "applied by the first attempt, not refused: {again}"
    );
    assert_eq!(again["data"], first["data"]);
    assert_eq!(batch_status, 200, "{batch}");
    assert_eq!(batch["data"]["results"][0]["status"], 200, "{batch}");
    assert_eq!(
        batch["data"]["results"][0]["data"], first["data"],
        "{batch}"
    );
    assert_eq!(stand.balance(from).await, "490.0000", "moved once");
    // A new transfer of the revoked payer is refused, as ever.
    let (status, body) = stand.send(from, to, "10", "USD").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "KYC_REQUIRED", "{body}");
}

/// A refused transfer is answered under its id's lock alone: in a batch, it waited for
/// (and held up) the wallets it would never move.
#[tokio::test]
async fn a_refused_transfer_in_a_batch_does_not_wait_for_its_wallets() {
    let stand = Stand::start().await;
    let (payer, _, from, to) = pair(&stand, "USD", "500").await;
    stand.auth.set(payer, "rejected", "bronze");
    let holder = stand.hold_wallet(from).await;
    let transfer = json!({"transfer_id": Uuid::now_v7(), "kind": "transfer",
        "from_wallet_id": from, "to_wallet_id": to, "amount": "10", "currency": "USD"});
    let transfers = json!({"transfers": [transfer]});
    let batch = stand.as_service(
        "payment",
        Method::POST,
        "/internal/transfers/batch",
        Some(&transfers),
    );
    let (status, body) = tokio::select! {
        answered = batch => answered,
        () = db::until_waiting_for_locks(&stand.pool, 1) => panic!("a refused transfer waited for its wallet"),
    };
    holder.commit().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["results"][0]["status"], 403, "{body}");
    assert_eq!(
        body["data"]["results"][0]["error"]["code"], "KYC_REQUIRED",
        "{body}"
    );
}

#[tokio::test]
async fn a_wallet_is_opened_only_for_a_user_a_says_is_verified_now() {
    let stand = Stand::start().await;
    let user = Uuid::now_v7();
    stand.auth.set(user, "pending", "bronze");
    let open = |currency: &'static str| stand.open(user, currency);
    // The token says verified (`x-kyc-status`); A says pending.
    assert_kyc_required(open("USD").await);
    stand.auth.set(user, "verified", "bronze");
    let (status, body) = open("USD").await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_currency_without_a_reference_rate_is_refused_before_anything_else() {
    let stand = Stand::start().await;
    let user = Uuid::now_v7();
    stand.auth.set(user, "verified", "bronze");
    // AFN is ISO 4217 with minor units, but no rate is configured for it.
    let (status, body) = stand.open(user, "AFN").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
    assert_eq!(body["error"]["details"]["reason"], "currency_not_supported");
}

#[tokio::test]
async fn a_unit_of_account_is_limited_by_what_it_is_worth_not_by_its_count() {
    let stand = Stand::start().await;
    let (_, _, from, to) = pair(&stand, "CLF", "100").await;
    // 30 CLF is about 1230 USD: over bronze's 1000 per payment, though 30 < 1000.
    let (status, body) = stand.send(from, to, "30", "CLF").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["details"]["reason"], "tier_limit");
    assert_eq!(body["error"]["details"]["limit"], "per-transaction");
    // 20 CLF (about 820 USD) is within it.
    let (status, body) = stand.send(from, to, "20", "CLF").await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn the_daily_limit_is_one_per_user_across_all_their_currencies() {
    let stand = Stand::start().await;
    let (payer, payee, usd_from, usd_to) = pair(&stand, "USD", "10000").await;
    let eur_from = stand.wallet_in(payer, "EUR").await;
    let eur_to = stand.wallet_in(payee, "EUR").await;
    let (status, body) = stand.deposit(eur_from, "10000", "EUR").await;
    assert_eq!(status, 201, "{body}");
    // The day is the database's UTC day; a run across midnight would split the sums.
    skip_near_midnight(&stand).await;

    for _ in 0..5 {
        let (status, body) = stand.send(usd_from, usd_to, "900", "USD").await;
        assert_eq!(status, 201, "{body}");
    }
    // 4500 USD sent; 500 EUR is 580 USD, which would make 5080 of bronze's 5000.
    let refused = stand.send(eur_from, eur_to, "500", "EUR").await;
    assert_eq!(
        refused.1["error"]["details"]["limit"], "daily",
        "{}",
        refused.1
    );
    assert_forbidden(refused, "tier_limit");
    // 400 EUR (464 USD) fits, and the refusal above did not count.
    let (status, body) = stand.send(eur_from, eur_to, "400", "EUR").await;
    assert_eq!(status, 201, "{body}");

    let (status, body) = stand
        .as_service(
            "payment",
            Method::GET,
            &format!("/internal/wallets/{eur_from}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["limits"]["currency"], "USD");
    assert_eq!(body["data"]["limits"]["remaining_today"], "36");
    assert_eq!(body["data"]["owner_kyc_status"], "verified");
}

#[tokio::test]
async fn two_wallets_of_one_user_sending_at_once_cannot_both_use_the_last_of_the_day() {
    let stand = Stand::start().await;
    let (payer, payee, usd_from, usd_to) = pair(&stand, "USD", "10000").await;
    let eur_from = stand.wallet_in(payer, "EUR").await;
    let eur_to = stand.wallet_in(payee, "EUR").await;
    stand.deposit(eur_from, "10000", "EUR").await;
    skip_near_midnight(&stand).await;
    for _ in 0..4 {
        stand.send(usd_from, usd_to, "1000", "USD").await;
    }
    // 1000 USD of the day is left; each of these is worth more than half of it.
    for _ in 0..5 {
        let (a, b) = tokio::join!(
            stand.send(usd_from, usd_to, "600", "USD"),
            stand.send(eur_from, eur_to, "520", "EUR"),
        );
        let passed = [&a, &b].iter().filter(|(s, _)| *s == 201).count();
        assert!(passed <= 1, "both passed: {a:?} {b:?}");
        let spent: String = db::scalar_of(
            &stand.pool,
            "SELECT spent::text FROM user_daily_spend WHERE user_id = $1",
            payer,
        )
        .await;
        let spent: f64 = spent.parse().unwrap();
        assert!(spent <= 5000.0, "the day's limit was passed: {spent}");
    }
}

/// Waits past the database's UTC midnight when it is less than a minute away.
async fn skip_near_midnight(stand: &Stand) {
    let left_ms: i64 = db::scalar(
        &stand.pool,
        "SELECT (EXTRACT(EPOCH FROM (date_trunc('day', now() AT TIME ZONE 'UTC') \
         + interval '1 day' - now() AT TIME ZONE 'UTC')) * 1000)::bigint",
    )
    .await;
    if left_ms < 60_000 {
        let wait = u64::try_from(left_ms + 1_000).unwrap_or(61_000);
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    }
}

#[tokio::test]
async fn c_reads_a_payer_s_standing_and_the_payee_s_wallet_in_one_call() {
    let stand = Stand::start().await;
    let (payer, payee, from, to) = pair(&stand, "USD", "500").await;
    let ask = |query: String| {
        let stand = &stand;
        async move {
            stand
                .as_service(
                    "payment",
                    Method::GET,
                    &format!("/internal/wallets/{query}"),
                    None,
                )
                .await
        }
    };
    let (status, body) = ask(format!("{from}?counterpart={to}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["user_id"], json!(payer), "{body}");
    assert_eq!(body["data"]["owner_kyc_status"], "verified", "{body}");
    assert_eq!(body["data"]["counterpart"]["id"], json!(to), "{body}");
    assert_eq!(
        body["data"]["counterpart"]["user_id"],
        json!(payee),
        "{body}"
    );
    assert!(
        body["data"]["counterpart"]
            .get("owner_kyc_status")
            .is_none()
            && body["data"]["counterpart"].get("limits").is_none(),
        "the payee's standing is not C's business: {body}"
    );
    // C reads this answer as the contract's type: the same wallets, standing and limits.
    let read = |body: &serde_json::Value| -> InternalWallet {
        serde_json::from_value(body["data"].clone()).expect("B's answer is the contract's")
    };
    let answer = read(&body);
    assert_eq!(answer.wallet.id, from);
    assert_eq!(answer.owner_kyc_status, Some(KycStatus::Verified));
    assert!(answer.limits.is_some(), "{body}");
    let counterpart = answer.counterpart.expect("asked").expect("found");
    assert_eq!((counterpart.id, counterpart.user_id), (to, payee));

    // A payee B does not have is `null`; the payer's wallet is still answered.
    let nowhere = Uuid::now_v7();
    let (status, body) = ask(format!("{from}?counterpart={nowhere}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"]["counterpart"].is_null(), "{body}");
    assert_eq!(body["data"]["id"], json!(from), "{body}");
    assert_eq!(
        read(&body).counterpart,
        Some(None),
        "asked, not found: {body}"
    );

    // Not asked: no field at all.
    let (status, body) = ask(from.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"].get("counterpart").is_none(), "{body}");
    assert_eq!(read(&body).counterpart, None, "not asked: {body}");

    // The payer's wallet missing is 404, whatever the counterpart.
    let (status, body) = ask(format!("{nowhere}?counterpart={to}")).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = ask(format!("{from}?counterpart=not-a-uuid")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["success"], false, "{body}");
}

#[tokio::test]
async fn a_batch_applies_each_transfer_once_refuses_only_what_cannot_be_paid_and_asks_a_once() {
    let stand = Stand::start().await;
    let (payer, payee, revoked) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for user in [payer, payee, revoked] {
        stand.auth.set(user, "verified", "bronze");
    }
    let (a, b, c) = (
        stand.wallet_in(payer, "USD").await,
        stand.wallet_in(payee, "USD").await,
        stand.wallet_in(revoked, "USD").await,
    );
    for w in [a, c] {
        let (status, body) = stand.deposit(w, "100", "USD").await;
        assert_eq!(status, 201, "{body}");
    }
    stand.auth.set(revoked, "rejected", "bronze");
    let lookups_before = stand.auth.lookups().len();
    let send = |id: Uuid, from: Uuid, amount: &str| {
        json!({"transfer_id": id, "kind": "transfer", "from_wallet_id": from, "to_wallet_id": b,
            "amount": amount, "currency": "USD"})
    };
    let (t1, t2, t3, t4) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    let batch = json!({"transfers": [
        send(t1, a, "30"),
        send(t2, a, "80"),
        send(t1, a, "30"),
        send(t3, c, "10"),
        {"transfer_id": t4, "kind": "deposit", "to_wallet_id": b, "amount": "5", "currency": "USD"},
    ]});
    let (status, body) = stand
        .as_service(
            "payment",
            Method::POST,
            "/internal/transfers/batch",
            Some(&batch),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["data"]["results"].as_array().expect("results").clone();
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![201, 400, 200, 403, 201], "{body}");
    assert_eq!(results[1]["error"]["code"], "INSUFFICIENT_FUNDS", "{body}");
    assert_eq!(results[3]["error"]["code"], "KYC_REQUIRED", "{body}");
    assert_eq!(results[0]["data"]["transfer_id"], json!(t1), "{body}");
    assert_eq!(
        results[2]["data"]["entry_id"], results[0]["data"]["entry_id"],
        "applied once"
    );
    assert_eq!(results[1]["success"], false, "{body}");

    // Money: 30 from a to b, 5 deposited into b; the refused moved nothing.
    assert_eq!(stand.balance(a).await, "70.0000");
    assert_eq!(stand.balance(b).await, "35.0000");
    assert_eq!(stand.balance(c).await, "100.0000");
    let balanced: bool = db::scalar(&stand.pool, "SELECT sum(balance) = 0 FROM wallets").await;
    assert!(
        balanced,
        "the books balance: user money is minus the system accounts'"
    );
    // One question to A for the whole batch (its senders and the deposit's owner).
    assert_eq!(stand.auth.lookups()[lookups_before..], [3]);

    // The same batch again changes nothing and answers the applied ones as before.
    let (status, again) = stand
        .as_service(
            "payment",
            Method::POST,
            "/internal/transfers/batch",
            Some(&batch),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["data"]["results"][0]["status"], 200, "{again}");
    assert_eq!(again["data"]["results"][4]["status"], 200, "{again}");
    assert_eq!(stand.balance(a).await, "70.0000");
    assert_eq!(stand.balance(b).await, "35.0000");
}

#[tokio::test]
async fn only_c_sends_a_batch_and_a_batch_is_one_to_a_hundred_transfers() {
    let stand = Stand::start().await;
    let payer = Uuid::now_v7();
    stand.auth.set(payer, "verified", "bronze");
    let a = stand.wallet_in(payer, "USD").await;
    let one = json!({"transfers": [{"transfer_id": Uuid::now_v7(), "kind": "deposit",
        "to_wallet_id": a, "amount": "5", "currency": "USD"}]});
    for service in ["wallet", "kyc", "auth"] {
        let (status, body) = stand
            .as_service(
                service,
                Method::POST,
                "/internal/transfers/batch",
                Some(&one),
            )
            .await;
        assert_eq!(status, 403, "{service}: {body}");
    }
    let (status, body) = stand
        .as_user(
            Method::POST,
            "/internal/transfers/batch",
            payer,
            "user",
            Some(&one),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let deposit = one["transfers"][0].clone();
    for transfers in [vec![], vec![deposit; 101]] {
        let (status, body) = stand
            .as_service(
                "payment",
                Method::POST,
                "/internal/transfers/batch",
                Some(&json!({ "transfers": transfers })),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR", "{body}");
    }
    assert_eq!(stand.balance(a).await, "0.0000", "nothing moved");
}
