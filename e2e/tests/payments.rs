//! Payment journeys through the gateway: deposit, transfer and withdrawal with an
//! overdraft refused, a frozen wallet, a double click (one key sent twenty times), a
//! worker that keeps getting killed, the broker and B out of reach, and a payment API
//! killed holding a key.

use std::collections::HashMap;
use std::time::Duration;

use finflow_e2e::client::{Client, User};
use finflow_e2e::journey::{key, platform};
use finflow_e2e::launcher::{Options, Platform};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn funded(client: &Client, prefix: &str, amount: &str) -> (User, String) {
    let (user, wallet) = client.new_user(prefix).await.with_wallet("USD").await;
    let deposit = user
        .pay(
            "deposit",
            json!({"to_wallet_id": wallet, "amount": amount, "currency": "USD"}),
            &key(),
            Some(20),
        )
        .await;
    assert_eq!(deposit.data(StatusCode::OK)["status"], "COMPLETED");
    (user, wallet)
}

#[tokio::test]
async fn deposit_transfer_and_withdrawal_move_money_and_an_overdraft_is_insufficient_funds() {
    let mut platform = platform().await;
    let client = platform.client();

    // Flow 3: deposit.
    let (alice, a_wallet) = client.new_user("alice").await.with_wallet("USD").await;
    let accepted = alice
        .pay(
            "deposit",
            json!({"to_wallet_id": a_wallet, "amount": "5000.00", "currency": "USD", "description": "Initial deposit"}),
            &key(),
            None,
        )
        .await;
    let pending = accepted.data(StatusCode::ACCEPTED);
    assert_eq!(pending["status"], "PENDING");
    let id = pending["id"].as_str().unwrap().to_owned();
    let mut status = String::new();
    for _ in 0..200 {
        let a = alice.client.get(&format!("/api/v1/payments/{id}")).await;
        status = a.data(StatusCode::OK)["status"]
            .as_str()
            .unwrap()
            .to_owned();
        if status != "PENDING" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "COMPLETED");
    assert_eq!(alice.balance(&a_wallet).await, "5000.00");

    // Flow 4: transfer to another user.
    let (bob, b_wallet) = client.new_user("bob").await.with_wallet("USD").await;
    let transfer = alice
        .pay(
            "transfer",
            json!({"from_wallet_id": a_wallet, "to_wallet_id": b_wallet, "amount": "1500.00", "currency": "USD"}),
            &key(),
            Some(20),
        )
        .await;
    assert_eq!(transfer.data(StatusCode::OK)["status"], "COMPLETED");
    assert_eq!(alice.balance(&a_wallet).await, "3500.00");
    assert_eq!(bob.balance(&b_wallet).await, "1500.00");

    // Flow 5: withdrawal, and one beyond the balance.
    let withdrawal = alice
        .pay(
            "withdrawal",
            json!({"from_wallet_id": a_wallet, "amount": "500.00", "currency": "USD"}),
            &key(),
            Some(20),
        )
        .await;
    assert_eq!(withdrawal.data(StatusCode::OK)["status"], "COMPLETED");
    let overdraft = alice
        .pay(
            "withdrawal",
            json!({"from_wallet_id": a_wallet, "amount": "3000.01", "currency": "USD"}),
            &key(),
            None,
        )
        .await;
    assert_eq!(
        overdraft.error(StatusCode::BAD_REQUEST),
        "INSUFFICIENT_FUNDS"
    );
    assert_eq!(alice.balance(&a_wallet).await, "3000.00");

    // Someone else's wallet cannot be the source.
    let theft = bob
        .pay(
            "transfer",
            json!({"from_wallet_id": a_wallet, "to_wallet_id": b_wallet, "amount": "1.00", "currency": "USD"}),
            &key(),
            None,
        )
        .await;
    assert_eq!(theft.error(StatusCode::NOT_FOUND), "NOT_FOUND");

    let history = alice.client.get("/api/v1/payments?status=COMPLETED").await;
    assert_eq!(
        history.data(StatusCode::OK)["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    platform.stop().await;
}

#[tokio::test]
async fn a_frozen_wallet_makes_the_payment_fail() {
    let mut platform = platform().await;
    let client = platform.client();
    let (alice, a_wallet) = funded(&client, "alice", "100.00").await;
    let (bob, b_wallet) = client.new_user("bob").await.with_wallet("USD").await;

    let frozen = bob
        .client
        .put(
            &format!("/api/v1/wallets/{b_wallet}/status"),
            json!("frozen"),
        )
        .await;
    assert_eq!(frozen.data(StatusCode::OK)["status"], "frozen");
    let refused = alice
        .pay(
            "transfer",
            json!({"from_wallet_id": a_wallet, "to_wallet_id": b_wallet, "amount": "10.00", "currency": "USD"}),
            &key(),
            None,
        )
        .await;
    assert_eq!(refused.error(StatusCode::BAD_REQUEST), "WALLET_NOT_ACTIVE");
    // Whether bob's wallet is frozen (by bob, or by an investigation) is not alice's
    // to know: only that it cannot receive.
    let error = &refused.body["error"];
    assert_eq!(
        error["details"]["reason"], "payee_cannot_receive",
        "{error}"
    );
    assert!(error["details"].get("status").is_none(), "{error}");
    assert!(
        !error["message"].as_str().unwrap().contains("frozen"),
        "{error}"
    );

    let own_frozen = alice
        .client
        .put(
            &format!("/api/v1/wallets/{a_wallet}/status"),
            json!({"status": "frozen"}),
        )
        .await;
    own_frozen.data(StatusCode::OK);
    let refused = alice
        .pay(
            "withdrawal",
            json!({"from_wallet_id": a_wallet, "amount": "1.00", "currency": "USD"}),
            &key(),
            None,
        )
        .await;
    assert_eq!(refused.error(StatusCode::BAD_REQUEST), "WALLET_NOT_ACTIVE");
    assert_eq!(
        refused.body["error"]["details"]["status"], "frozen",
        "of her own wallet, all"
    );
    assert_eq!(alice.balance(&a_wallet).await, "100.00", "no money moved");
    assert_eq!(bob.balance(&b_wallet).await, "0.00");
    platform.stop().await;
}

#[tokio::test]
async fn one_idempotency_key_sent_twenty_times_at_once_gives_one_payment_and_identical_responses() {
    let mut platform = platform().await;
    let client = platform.client();
    let (alice, a_wallet) = funded(&client, "alice", "100.00").await;
    let (_bob, b_wallet) = client.new_user("bob").await.with_wallet("USD").await;
    let body = json!({"from_wallet_id": a_wallet, "to_wallet_id": b_wallet, "amount": "7.00", "currency": "USD"});
    let k = key();
    let clicks: Vec<_> = (0..20)
        .map(|_| {
            let alice = alice.clone();
            let body = body.clone();
            let k = k.clone();
            tokio::spawn(async move {
                // A duplicate waits a while for the first request, then answers 409
                // "still in progress"; a client asks again with the same key. (On a
                // loaded machine the first can outlast that wait.)
                let mut asked = 0;
                loop {
                    let answer = alice.pay("transfer", body.clone(), &k, None).await;
                    let in_progress = answer.status == StatusCode::CONFLICT
                        && answer.body["error"]["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("still in progress"));
                    asked += 1;
                    if !in_progress || asked == 150 {
                        return answer;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            })
        })
        .collect();
    let mut answers = Vec::new();
    for c in clicks {
        answers.push(c.await.unwrap());
    }
    let first = &answers[0];
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    for a in &answers {
        assert_eq!(
            (a.status, &a.body),
            (first.status, &first.body),
            "identical responses"
        );
    }
    let id = first.body["data"]["id"].as_str().unwrap();
    // One listing, whatever the status: two filtered listings would race the
    // worker (PENDING in the first, COMPLETED by the second) and count it twice.
    let mine = alice.client.get("/api/v1/payments").await;
    let sevens: Vec<_> = mine.data(StatusCode::OK)["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["amount"] == "7.00")
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sevens, vec![id.to_owned()], "one payment ({id})");

    let reused = alice
        .pay("transfer", json!({"from_wallet_id": a_wallet, "to_wallet_id": b_wallet, "amount": "8.00", "currency": "USD"}), &k, None)
        .await;
    assert_eq!(
        reused.error(StatusCode::UNPROCESSABLE_ENTITY),
        "IDEMPOTENCY_KEY_REUSED"
    );
    platform.stop().await;
}

/// Sums of cents from payment amounts like "12.34".
fn cents(amount: &Value) -> i64 {
    let s = amount.as_str().unwrap_or("0");
    let (units, frac) = s.split_once('.').unwrap_or((s, "0"));
    units.parse::<i64>().unwrap_or(0) * 100 + format!("{frac:0<2}")[..2].parse::<i64>().unwrap_or(0)
}

#[tokio::test]
async fn killing_the_worker_during_500_transfers_loses_nothing_and_applies_each_once() {
    let mut platform = platform().await;
    let client = platform.client();
    let mut wallets = Vec::new();
    for i in 0..10 {
        wallets.push(funded(&client, &format!("crash{i}"), "500.00").await);
    }

    // 500 transfers between random wallets, 10 at a time, while the worker is killed
    // and restarted at random moments.
    let plan: Vec<(usize, usize, String)> = (0..500)
        .map(|_| {
            let from = rand::random_range(0..10);
            let to = (from + rand::random_range(1..10)) % 10;
            let c: u32 = rand::random_range(1..3000);
            (from, to, format!("{}.{:02}", c / 100, c % 100))
        })
        .collect();
    let submit = {
        let wallets = wallets.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for chunk in plan.chunks(10) {
                let batch: Vec<_> = chunk
                    .iter()
                    .map(|(from, to, amount)| {
                        let (user, from_wallet) = wallets[*from].clone();
                        let to_wallet = wallets[*to].1.clone();
                        let body = json!({"from_wallet_id": from_wallet, "to_wallet_id": to_wallet, "amount": amount, "currency": "USD"});
                        tokio::spawn(async move {
                            // A well-behaved client: on 429 it waits and retries with the
                            // same key, which the idempotency layer makes safe.
                            let k = key();
                            loop {
                                let answer = user.pay("transfer", body.clone(), &k, None).await;
                                if answer.status != StatusCode::TOO_MANY_REQUESTS {
                                    return (answer, user);
                                }
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        })
                    })
                    .collect();
                for b in batch {
                    let (answer, user) = b.await.unwrap();
                    match answer.status {
                        StatusCode::ACCEPTED => {
                            ids.push((user, answer.body["data"]["id"].as_str().unwrap().to_owned()))
                        }
                        // Refused at the door: the source looked short of funds. Nothing accepted.
                        StatusCode::BAD_REQUEST => {
                            assert_eq!(answer.body["error"]["code"], "INSUFFICIENT_FUNDS")
                        }
                        other => panic!("unexpected {other}: {}", answer.body),
                    }
                }
            }
            ids
        })
    };
    let mut kills = 0;
    while !submit.is_finished() {
        tokio::time::sleep(Duration::from_millis(rand::random_range(300..1500))).await;
        platform.kill("payment-worker").await.unwrap();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
        platform.restart("payment-worker").await.unwrap();
    }
    let accepted = submit.await.unwrap();
    assert!(kills >= 1);

    // Every accepted payment reaches a terminal state.
    let mut outcomes: HashMap<String, Value> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    for (user, id) in &accepted {
        loop {
            let p = user.client.get(&format!("/api/v1/payments/{id}")).await;
            let data = p.data(StatusCode::OK).clone();
            if data["status"] != "PENDING" {
                outcomes.insert(id.clone(), data);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "payment {id} stayed PENDING"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Each completed payment applied exactly once: balances equal the start plus what
    // completed payments moved, and the total is conserved.
    let mut expected: HashMap<String, i64> =
        wallets.iter().map(|(_, w)| (w.clone(), 50_000)).collect();
    for p in outcomes.values() {
        match p["status"].as_str().unwrap() {
            "COMPLETED" => {
                *expected
                    .get_mut(p["from_wallet_id"].as_str().unwrap())
                    .unwrap() -= cents(&p["amount"]);
                *expected
                    .get_mut(p["to_wallet_id"].as_str().unwrap())
                    .unwrap() += cents(&p["amount"]);
            }
            "FAILED" => assert_eq!(p["failure"]["code"], "INSUFFICIENT_FUNDS", "{p}"),
            other => panic!("unexpected terminal status {other}"),
        }
    }
    let mut total = 0;
    for (user, wallet) in &wallets {
        let actual = cents(&json!(user.balance(wallet).await));
        assert_eq!(actual, expected[wallet], "wallet {wallet}");
        total += actual;
    }
    assert_eq!(total, 500_000, "money is conserved");
    eprintln!(
        "{} accepted, {} completed, worker killed {kills} times",
        accepted.len(),
        outcomes
            .values()
            .filter(|p| p["status"] == "COMPLETED")
            .count()
    );
    platform.stop().await;
}

#[tokio::test]
async fn payments_accepted_while_rabbitmq_is_unreachable_complete_after_it_returns() {
    let mut options = Options::isolated();
    options.amqp_proxy = true;
    let mut platform = Platform::start(options)
        .await
        .unwrap_or_else(|e| panic!("the platform did not start: {e:#}"));
    let client = platform.client();
    let (alice, a_wallet) = funded(&client, "alice", "100.00").await;
    let (bob, b_wallet) = client.new_user("bob").await.with_wallet("USD").await;

    platform.broker_outage(true).unwrap();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let a = alice
            .pay(
                "transfer",
                json!({"from_wallet_id": a_wallet, "to_wallet_id": b_wallet, "amount": "1.00", "currency": "USD"}),
                &key(),
                None,
            )
            .await;
        ids.push(
            a.data(StatusCode::ACCEPTED)["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in &ids {
        let p = alice.client.get(&format!("/api/v1/payments/{id}")).await;
        assert_eq!(
            p.data(StatusCode::OK)["status"],
            "PENDING",
            "nothing moves without the broker"
        );
    }
    assert_eq!(bob.balance(&b_wallet).await, "0.00");

    platform.broker_outage(false).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    for id in &ids {
        loop {
            let p = alice.client.get(&format!("/api/v1/payments/{id}")).await;
            let status = p.data(StatusCode::OK)["status"]
                .as_str()
                .unwrap()
                .to_owned();
            if status != "PENDING" {
                assert_eq!(status, "COMPLETED");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "payment {id} never completed"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(alice.balance(&a_wallet).await, "95.00");
    assert_eq!(bob.balance(&b_wallet).await, "5.00");
    platform.stop().await;
}

#[tokio::test]
async fn a_payment_stuck_while_the_wallet_service_is_down_is_settled_by_the_sweeper_once() {
    let mut options = Options::isolated();
    for (key, value) in [
        ("SWEEP_REPUBLISH_AFTER_SECS", "1"),
        ("SWEEP_FAIL_AFTER_SECS", "4"),
        ("SWEEP_INTERVAL_SECS", "1"),
    ] {
        options.env_overrides.push((
            "payment-worker".to_owned(),
            key.to_owned(),
            value.to_owned(),
        ));
    }
    let mut platform = Platform::start(options)
        .await
        .unwrap_or_else(|e| panic!("the platform did not start: {e:#}"));
    let client = platform.client();
    let (alice, a_wallet) = funded(&client, "alice", "100.00").await;
    let (bob, b_wallet) = client.new_user("bob").await.with_wallet("USD").await;

    // Accepted while B answers, then B goes away before the worker can apply it.
    platform.kill("payment-worker").await.unwrap();
    let accepted = alice
        .pay(
            "transfer",
            json!({"from_wallet_id": a_wallet, "to_wallet_id": b_wallet, "amount": "10.00", "currency": "USD"}),
            &key(),
            None,
        )
        .await;
    let id = accepted.data(StatusCode::ACCEPTED)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    platform.kill("wallet").await.unwrap();
    platform.restart("payment-worker").await.unwrap();
    // Past the fail-after age, with B still down: nothing can settle it yet.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let p = alice.client.get(&format!("/api/v1/payments/{id}")).await;
    assert_eq!(p.data(StatusCode::OK)["status"], "PENDING");

    platform.restart("wallet").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let settled = loop {
        let p = alice.client.get(&format!("/api/v1/payments/{id}")).await;
        let data = p.data(StatusCode::OK).clone();
        if data["status"] != "PENDING" {
            break data;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweeper never settled {id}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Either outcome is right; what must hold is that the money agrees with it.
    let (a, b) = (alice.balance(&a_wallet).await, bob.balance(&b_wallet).await);
    match settled["status"].as_str().unwrap() {
        "FAILED" => {
            assert_eq!(settled["failure"]["code"], "TIMED_OUT", "{settled}");
            assert_eq!((a.as_str(), b.as_str()), ("100.00", "0.00"));
        }
        "COMPLETED" => assert_eq!((a.as_str(), b.as_str()), ("90.00", "10.00")),
        other => panic!("unexpected {other}"),
    }
    platform.stop().await;
}

#[tokio::test]
async fn a_payment_api_killed_after_claiming_a_key_lets_the_retry_pay_once_within_ten_seconds() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let mut platform = Platform::start(Options::isolated())
        .await
        .unwrap_or_else(|e| panic!("the platform did not start: {e:#}"));
    let client = platform.client();
    let (alice, a_wallet) = funded(&client, "alice", "100.00").await;
    let (bob, b_wallet) = client.new_user("bob").await.with_wallet("USD").await;
    let body = json!({"from_wallet_id": a_wallet, "to_wallet_id": b_wallet, "amount": "10.00", "currency": "USD"});
    let k = key();

    // B stopped (not dead: its sidecar still takes connections), so C's check at B
    // hangs after C has claimed the key.
    let wallet = Pid::from_raw(i32::try_from(platform.pid("wallet").unwrap()).unwrap());
    kill(wallet, Signal::SIGSTOP).unwrap();
    let first = {
        let (alice, body, k) = (alice.clone(), body.clone(), k.clone());
        tokio::spawn(async move { alice.pay("transfer", body, &k, None).await })
    };
    // The key is claimed: the same key again, a second later, is a duplicate in flight
    // (answered once C has waited its while for the first to finish).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let duplicate = alice.pay("transfer", body.clone(), &k, None).await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT, "{}", duplicate.body);

    // The API dies holding the claim; it comes back, and so does B.
    platform.kill("payment").await.unwrap();
    let first = first.await.unwrap();
    assert!(
        !first.status.is_success(),
        "the killed request answered {}",
        first.status
    );
    platform.restart("payment").await.unwrap();
    kill(wallet, Signal::SIGCONT).unwrap();

    // The client retries with the same key until it is answered: the dead request's
    // claim lapses within seconds, and the payment is made and completes.
    let retried = tokio::time::Instant::now();
    let paid = loop {
        let answer = alice.pay("transfer", body.clone(), &k, Some(10)).await;
        if answer.status.is_success() {
            break answer;
        }
        assert!(
            [
                StatusCode::CONFLICT,
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE
            ]
            .contains(&answer.status),
            "{}: {}",
            answer.status,
            answer.body
        );
        assert!(
            retried.elapsed() < Duration::from_secs(10),
            "still {} after {:?}",
            answer.status,
            retried.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let id = paid.body["data"]["id"].as_str().unwrap().to_owned();
    loop {
        let p = alice.client.get(&format!("/api/v1/payments/{id}")).await;
        if p.data(StatusCode::OK)["status"] == "COMPLETED" {
            break;
        }
        assert!(
            retried.elapsed() < Duration::from_secs(10),
            "payment {id} not completed {:?} after the retry",
            retried.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("completed {:?} after the first retry", retried.elapsed());

    // Once: the key answers with the same payment, and the money moved once.
    let again = alice.pay("transfer", body.clone(), &k, None).await;
    assert!(again.status.is_success(), "{}", again.body);
    assert_eq!(again.body["data"]["id"], id.as_str());
    assert_eq!(alice.balance(&a_wallet).await, "90.00");
    assert_eq!(bob.balance(&b_wallet).await, "10.00");
    platform.stop().await;
}
