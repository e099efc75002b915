//! Wallet journeys through the gateway: the KYC cascade (a verification opens wallet
//! creation for the same token), the ledger history with its cursor, and freezing by
//! `ops`.

use std::collections::HashSet;
use std::time::Duration;

use finflow_e2e::client::User;
use finflow_e2e::journey::{eventually, key, platform};
use finflow_e2e::launcher::{Options, Platform};
use finflow_platform::Amount;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn kyc_gates_wallet_creation_and_a_verification_opens_it_for_the_same_token() {
    let mut platform = Platform::start(Options::isolated())
        .await
        .unwrap_or_else(|e| panic!("the platform did not start: {e:#}"));
    let user = platform.client().new_user("kyc").await;

    // First half: not verified yet, refused with KYC_REQUIRED and nothing created.
    let refused = user
        .client
        .post("/api/v1/wallets", json!({"currency": "USD"}))
        .await;
    assert_eq!(refused.error(StatusCode::FORBIDDEN), "KYC_REQUIRED");
    let mine = user.client.get("/api/v1/wallets").await;
    assert_eq!(mine.data(StatusCode::OK), &json!([]));

    // Second half: E verifies, A learns it by event, B asks A: the same token now works.
    let submitted = user.submit_kyc().await;
    assert_eq!(submitted.data(StatusCode::CREATED)["status"], "verified");
    let wallet = user.open_wallet("USD", Duration::from_secs(30)).await;
    assert_eq!(wallet["currency"], "USD");
    assert_eq!(wallet["balance"], "0.00");
    let status = user.client.get("/api/v1/kyc/status").await;
    assert_eq!(status.data(StatusCode::OK)["kyc_status"], "verified");

    // Another user's wallet is 404, not 403.
    let stranger = platform.client().new_user("stranger").await;
    let id = wallet["id"].as_str().unwrap();
    let peek = stranger.client.get(&format!("/api/v1/wallets/{id}")).await;
    assert_eq!(peek.error(StatusCode::NOT_FOUND), "NOT_FOUND");
    platform.stop().await;
}

/// Pays with `Prefer: wait`, checks the payment completed and returns its id (which B
/// uses as the transfer id of the journal entry).
async fn completed(user: &User, kind: &str, body: Value) -> String {
    let answer = user.pay(kind, body, &key(), Some(20)).await;
    let payment = answer.data(StatusCode::OK);
    assert_eq!(payment["status"], "COMPLETED", "{payment}");
    payment["id"].as_str().unwrap().to_owned()
}

/// An amount as the API writes it (a JSON string, however many decimals).
fn amount(v: &Value) -> Amount {
    let s = v.as_str().unwrap_or_else(|| panic!("not an amount: {v}"));
    Amount::parse(s).unwrap_or_else(|e| panic!("not an amount {s}: {e}"))
}

fn usd(s: &str) -> Amount {
    Amount::parse(s).unwrap()
}

/// Every page of `wallet`'s history `limit` lines at a time, following `next_cursor`
/// until a page has none. A page with a next cursor must be full.
async fn pages(user: &User, wallet: &str, limit: u16) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/wallets/{wallet}/transactions?limit={limit}&cursor={c}"),
            None => format!("/api/v1/wallets/{wallet}/transactions?limit={limit}"),
        };
        let page = user.client.get(&path).await.data(StatusCode::OK).clone();
        let items = page["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no items: {page}"));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        match cursor {
            Some(_) => assert_eq!(items.len(), usize::from(limit), "a full page: {page}"),
            None => assert!(items.len() <= usize::from(limit), "{page}"),
        }
        pages.push(page);
        if cursor.is_none() {
            return pages;
        }
        assert!(pages.len() < 100, "the cursor never runs out");
    }
}

/// The items of every page, in order.
fn lines(pages: &[Value]) -> Vec<Value> {
    pages
        .iter()
        .flat_map(|p| p["items"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn the_transaction_history_pages_through_every_ledger_line_once_newest_first() {
    let mut platform = platform().await;
    let client = platform.client();
    let (alice, a) = client.new_user("alice").await.with_wallet("USD").await;
    let (bob, b) = client.new_user("bob").await.with_wallet("USD").await;

    // Six movements of Alice's wallet, one after the other, each finished before the
    // next: (transfer id, kind, signed amount, whether Bob is the other side).
    let mut done: Vec<(String, &str, &str, bool)> = Vec::new();
    let id = completed(
        &alice,
        "deposit",
        json!({"to_wallet_id": a, "amount": "100.00", "currency": "USD"}),
    )
    .await;
    done.push((id, "deposit", "100.00", false));
    let id = completed(
        &alice,
        "deposit",
        json!({"to_wallet_id": a, "amount": "50.25", "currency": "USD"}),
    )
    .await;
    done.push((id, "deposit", "50.25", false));
    let a_to_b = completed(
        &alice,
        "transfer",
        json!({"from_wallet_id": a, "to_wallet_id": b, "amount": "30.10", "currency": "USD"}),
    )
    .await;
    done.push((a_to_b.clone(), "transfer", "-30.10", true));
    let bob_deposit = completed(
        &bob,
        "deposit",
        json!({"to_wallet_id": b, "amount": "20.00", "currency": "USD"}),
    )
    .await;
    let b_to_a = completed(
        &bob,
        "transfer",
        json!({"from_wallet_id": b, "to_wallet_id": a, "amount": "12.34", "currency": "USD"}),
    )
    .await;
    done.push((b_to_a.clone(), "transfer", "12.34", true));
    let id = completed(
        &alice,
        "withdrawal",
        json!({"from_wallet_id": a, "amount": "5.00", "currency": "USD"}),
    )
    .await;
    done.push((id, "withdrawal", "-5.00", false));
    let id = completed(
        &alice,
        "deposit",
        json!({"to_wallet_id": a, "amount": "7.07", "currency": "USD"}),
    )
    .await;
    done.push((id, "deposit", "7.07", false));
    assert_eq!(alice.balance(&a).await, "134.56");
    assert_eq!(bob.balance(&b).await, "37.76");

    // Two lines at a time, following the cursor: three pages, the last without a cursor.
    let two = pages(&alice, &a, 2).await;
    assert_eq!(two.len(), 3, "{two:?}");
    assert!(two[2]["next_cursor"].is_null(), "{}", two[2]);
    let history = lines(&two);

    // Every movement exactly once, newest first.
    let seen: Vec<&str> = history
        .iter()
        .map(|l| l["transfer_id"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = done.iter().rev().map(|(id, ..)| id.as_str()).collect();
    assert_eq!(seen, expected, "newest first, each once");
    let entries: HashSet<&str> = history
        .iter()
        .map(|l| l["entry_id"].as_str().unwrap())
        .collect();
    assert_eq!(entries.len(), done.len(), "one journal entry per line");

    // Kinds, signed amounts, counterparties and running balances match what was done.
    let mut system_account: Option<&str> = None;
    for (line, (_, kind, signed, with_bob)) in history.iter().zip(done.iter().rev()) {
        assert_eq!(line["kind"], *kind, "{line}");
        assert_eq!(amount(&line["amount"]), usd(signed), "{line}");
        let other = line["counterparty_wallet_id"].as_str().unwrap();
        if *with_bob {
            assert_eq!(other, b, "{line}");
        } else {
            // Deposits and withdrawals move money against the USD system account.
            assert_ne!(other, a, "{line}");
            assert_ne!(other, b, "{line}");
            assert_eq!(*system_account.get_or_insert(other), other, "{line}");
        }
    }
    assert_eq!(amount(&history[0]["balance_after"]), usd("134.56"));
    for pair in history.windows(2) {
        let before = amount(&pair[0]["balance_after"])
            .checked_sub(amount(&pair[0]["amount"]))
            .unwrap();
        assert_eq!(before, amount(&pair[1]["balance_after"]), "{pair:?}");
    }
    let oldest = &history[history.len() - 1];
    assert_eq!(
        amount(&oldest["balance_after"]),
        amount(&oldest["amount"]),
        "the first line starts from zero: {oldest}"
    );

    // Whatever the page size, the same lines in the same order, and no empty last page.
    for limit in [1_u16, 3, 4, 6, 7] {
        let paged = pages(&alice, &a, limit).await;
        assert_eq!(
            paged.len(),
            history.len().div_ceil(usize::from(limit)),
            "limit {limit}: {paged:?}"
        );
        assert_eq!(lines(&paged), history, "limit {limit}");
    }
    let all = alice
        .client
        .get(&format!("/api/v1/wallets/{a}/transactions"))
        .await;
    let all = all.data(StatusCode::OK);
    assert_eq!(all["items"].as_array().unwrap(), &history);
    assert!(all["next_cursor"].is_null(), "{all}");

    // Bob's side of the same transfers: his own history, mirrored amounts.
    let his = lines(&pages(&bob, &b, 2).await);
    let his: Vec<(&str, Amount)> = his
        .iter()
        .map(|l| (l["transfer_id"].as_str().unwrap(), amount(&l["amount"])))
        .collect();
    assert_eq!(
        his,
        vec![
            (b_to_a.as_str(), usd("-12.34")),
            (bob_deposit.as_str(), usd("20.00")),
            (a_to_b.as_str(), usd("30.10")),
        ],
        "newest first: Bob deposited after Alice's transfer and before his own"
    );

    // Bad paging parameters: 400 VALIDATION_ERROR in the envelope.
    for query in [
        "cursor=not-a-cursor",
        "cursor=AAAA",
        "limit=2&cursor=%21%21",
        "limit=lots",
    ] {
        let bad = alice
            .client
            .get(&format!("/api/v1/wallets/{a}/transactions?{query}"))
            .await;
        assert_eq!(
            bad.error(StatusCode::BAD_REQUEST),
            "VALIDATION_ERROR",
            "{query}"
        );
        assert!(bad.body["error"]["message"].is_string(), "{}", bad.body);
    }
    let bad = alice
        .client
        .get(&format!(
            "/api/v1/wallets/{a}/transactions?cursor=not-a-cursor"
        ))
        .await;
    assert_eq!(
        bad.body["error"]["details"]["field"], "cursor",
        "{}",
        bad.body
    );

    // Someone else's history is 404, with or without a cursor that works for the owner.
    let cursor = two[0]["next_cursor"].as_str().unwrap();
    for path in [
        format!("/api/v1/wallets/{a}/transactions"),
        format!("/api/v1/wallets/{a}/transactions?limit=2&cursor={cursor}"),
    ] {
        let peek = bob.client.get(&path).await;
        assert_eq!(peek.error(StatusCode::NOT_FOUND), "NOT_FOUND", "{path}");
    }
    let nowhere = alice
        .client
        .get(&format!(
            "/api/v1/wallets/{}/transactions",
            uuid::Uuid::new_v4()
        ))
        .await;
    assert_eq!(nowhere.error(StatusCode::NOT_FOUND), "NOT_FOUND");
    platform.stop().await;
}

/// The owner's in-app notification of a `wallet.status_changed` whose body says `change`
/// (like `from active to frozen`) for `wallet`.
async fn told(owner: &User, wallet: &str, change: &str) -> Value {
    eventually(change, async || {
        let n = owner.client.get("/api/v1/notifications").await;
        n.data(StatusCode::OK).as_array().and_then(|all| {
            all.iter()
                .find(|x| {
                    x["event_type"] == "wallet.status_changed"
                        && x["body"]
                            .as_str()
                            .is_some_and(|b| b.contains(wallet) && b.contains(change))
                })
                .cloned()
        })
    })
    .await
}

#[tokio::test]
async fn ops_can_freeze_and_reactivate_anyone_s_wallet_but_another_user_cannot() {
    let mut platform = platform().await;
    let client = platform.client();
    // The role is granted by the operator command, as in a deployment: no email
    // carries a role by itself.
    let ops = platform
        .staff_user(&client, "ops@finflow.local", "ops")
        .await
        .unwrap_or_else(|e| panic!("granting ops: {e:#}"));
    let (alice, a) = client.new_user("alice").await.with_wallet("USD").await;
    let mallory = client.new_user("mallory").await;
    let status = format!("/api/v1/wallets/{a}/status");
    let wallet = format!("/api/v1/wallets/{a}");

    // Ops freezes Alice's wallet; she sees it, she is told, and it takes no money.
    let frozen = ops.client.put(&status, json!({"status": "frozen"})).await;
    let frozen = frozen.data(StatusCode::OK);
    assert_eq!(frozen["id"], a.as_str());
    assert_eq!(frozen["user_id"], alice.id.as_str());
    assert_eq!(frozen["status"], "frozen");
    let seen = alice.client.get(&wallet).await;
    assert_eq!(seen.data(StatusCode::OK)["status"], "frozen");
    let seen = ops.client.get(&wallet).await;
    assert_eq!(seen.data(StatusCode::OK)["status"], "frozen");
    told(&alice, &a, "from active to frozen").await;
    let refused = alice
        .pay(
            "deposit",
            json!({"to_wallet_id": a, "amount": "10.00", "currency": "USD"}),
            &key(),
            None,
        )
        .await;
    assert_eq!(refused.error(StatusCode::BAD_REQUEST), "WALLET_NOT_ACTIVE");

    // A plain other user cannot touch it, and cannot even learn it exists.
    for body in [
        json!({"status": "active"}),
        json!({"status": "frozen"}),
        json!("active"),
    ] {
        let answer = mallory.client.put(&status, body.clone()).await;
        assert_eq!(answer.error(StatusCode::NOT_FOUND), "NOT_FOUND", "{body}");
    }
    let answer = mallory.client.get(&wallet).await;
    assert_eq!(answer.error(StatusCode::NOT_FOUND), "NOT_FOUND");
    assert_eq!(
        alice.client.get(&wallet).await.data(StatusCode::OK)["status"],
        "frozen",
        "unchanged by the stranger"
    );

    // Values outside active and frozen are 400 VALIDATION_ERROR, for ops and owner alike.
    for (who, body) in [
        (&ops, json!({"status": "closed"})),
        (&ops, json!({"status": "pending"})),
        (&ops, json!({})),
        (&alice, json!({"status": "FROZEN"})),
        (&alice, json!("deleted")),
        (&alice, json!({"status": 1})),
    ] {
        let answer = who.client.put(&status, body.clone()).await;
        assert_eq!(
            answer.error(StatusCode::BAD_REQUEST),
            "VALIDATION_ERROR",
            "{body}"
        );
    }
    assert_eq!(
        alice.client.get(&wallet).await.data(StatusCode::OK)["status"],
        "frozen"
    );
    // Ops too gets 404 for a wallet that does not exist.
    let missing = ops
        .client
        .put(
            &format!("/api/v1/wallets/{}/status", uuid::Uuid::new_v4()),
            json!({"status": "frozen"}),
        )
        .await;
    assert_eq!(missing.error(StatusCode::NOT_FOUND), "NOT_FOUND");

    // Ops reactivates it with a bare JSON string as the body (`"active"`, which the
    // status endpoint accepts beside `{"status": ...}`); money moves again.
    let active = ops.client.put(&status, json!("active")).await;
    assert_eq!(active.data(StatusCode::OK)["status"], "active");
    assert_eq!(
        alice.client.get(&wallet).await.data(StatusCode::OK)["status"],
        "active"
    );
    told(&alice, &a, "from frozen to active").await;
    let again = ops.client.put(&status, json!({"status": "active"})).await;
    assert_eq!(again.data(StatusCode::OK)["status"], "active", "no-op");
    completed(
        &alice,
        "deposit",
        json!({"to_wallet_id": a, "amount": "10.00", "currency": "USD"}),
    )
    .await;
    assert_eq!(alice.balance(&a).await, "10.00");
    platform.stop().await;
}
