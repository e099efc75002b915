//! Attacks through the gateway by people with a staff role, or by the owner of a wallet
//! staff froze: staff never decide on their own money, one operator alone reverses
//! nothing, and an owner cannot undo a staff freeze. And by anyone: a sign-up with someone else's address tells nothing and
//! takes nothing; a verification compliance revoked stops the money; a sum counts by
//! what it is worth, not by its number of units.

use std::collections::BTreeSet;

use finflow_e2e::client::{Answer, User};
use finflow_e2e::journey::{eventually, key, platform};
use finflow_e2e::mail::{self, MAIL_PATIENCE};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A 403 `FORBIDDEN` that gives `reason`.
fn refused_because(answer: &finflow_e2e::client::Answer, reason: &str) {
    assert_eq!(answer.error(StatusCode::FORBIDDEN), "FORBIDDEN");
    assert_eq!(
        answer.body["error"]["details"]["reason"], reason,
        "{}",
        answer.body
    );
}

async fn payment(user: &User, id: &str) -> Value {
    user.client
        .get(&format!("/api/v1/payments/{id}"))
        .await
        .data(StatusCode::OK)
        .clone()
}

#[tokio::test]
async fn staff_can_neither_release_nor_reverse_their_own_payments() {
    let mut platform = platform().await;
    let client = platform.client();
    // Staff roles are granted out of band, as an operator grants them.
    let (ops, own) = platform
        .staff_user(&client, "ops@finflow.local", "ops")
        .await
        .unwrap_or_else(|e| panic!("granting ops: {e:#}"))
        .with_wallet("USD")
        .await;
    let (officer, officers) = platform
        .staff_user(&client, "compliance@finflow.local", "compliance")
        .await
        .unwrap_or_else(|e| panic!("granting compliance: {e:#}"))
        .with_wallet("USD")
        .await;
    let (bob, bobs) = client.new_user("bob").await.with_wallet("USD").await;

    // Over the AML threshold into their own wallet: held, and not theirs to release
    // (nor, for ops, any held payment: a hold waits for compliance).
    for (who, wallet, may_release) in [(&ops, &own, false), (&officer, &officers, true)] {
        let held = who
            .pay(
                "deposit",
                json!({"to_wallet_id": wallet, "amount": "10001.00", "currency": "USD"}),
                &key(),
                None,
            )
            .await;
        let id = held.data(StatusCode::ACCEPTED)["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let release = who
            .client
            .post(&format!("/api/v1/payments/{id}/release"), json!({}))
            .await;
        if may_release {
            refused_because(&release, "own_payment");
        } else {
            assert_eq!(release.error(StatusCode::FORBIDDEN), "FORBIDDEN");
        }
        assert_eq!(payment(who, &id).await["status"], "ON_HOLD");
    }

    // A transfer the ops user made is not theirs to reverse.
    let deposit = json!({"to_wallet_id": own, "amount": "100.00", "currency": "USD"});
    ops.completed("deposit", deposit).await;
    let transfer = json!({"from_wallet_id": own, "to_wallet_id": bobs,
        "amount": "50.00", "currency": "USD"});
    let paid = ops.completed("transfer", transfer).await;
    let id = paid["id"].as_str().unwrap();
    let reverse = ops
        .client
        .post(&format!("/api/v1/payments/{id}/reverse"), json!({}))
        .await;
    refused_because(&reverse, "own_payment");
    assert_eq!(payment(&ops, id).await["status"], "COMPLETED");
    assert_eq!(
        bob.balance(&bobs).await,
        "50.00",
        "the recipient keeps the money"
    );
    platform.stop().await;
}

/// A reversal is asked for by one operator and made by another; until then no money
/// moves, and once made it moves back through B's ledger.
#[tokio::test]
async fn a_reversal_one_operator_asks_for_moves_the_money_back_once_another_approves() {
    let mut platform = platform().await;
    let client = platform.client();
    let mut operators = Vec::new();
    for email in ["ops-asks@finflow.local", "ops-approves@finflow.local"] {
        let operator = platform
            .staff_user(&client, email, "ops")
            .await
            .unwrap_or_else(|e| panic!("granting ops: {e:#}"));
        operators.push(operator);
    }
    let (alice, alices) = client.new_user("alice").await.with_wallet("USD").await;
    let (bob, bobs) = client.new_user("bob").await.with_wallet("USD").await;
    let deposit = json!({"to_wallet_id": alices, "amount": "100.00", "currency": "USD"});
    alice.completed("deposit", deposit).await;
    let transfer = json!({"from_wallet_id": alices, "to_wallet_id": bobs,
        "amount": "30.00", "currency": "USD"});
    let paid = alice.completed("transfer", transfer).await;
    let id = paid["id"].as_str().unwrap().to_owned();
    let reverse = format!("/api/v1/payments/{id}/reverse");

    let asked = operators[0].client.post(&reverse, json!({})).await;
    assert_eq!(
        asked.data(StatusCode::ACCEPTED)["payment"]["status"],
        "COMPLETED"
    );
    let again = operators[0].client.post(&reverse, json!({})).await;
    assert_eq!(
        again.data(StatusCode::ACCEPTED),
        asked.data(StatusCode::ACCEPTED)
    );
    assert_eq!(
        bob.balance(&bobs).await,
        "30.00",
        "one operator moved nothing"
    );
    let waiting = operators[1].client.get("/api/v1/payments/reversals").await;
    assert_eq!(
        waiting.data(StatusCode::OK)["items"][0]["payment"]["id"],
        id.as_str(),
        "{}",
        waiting.body
    );

    let made = operators[1].client.post(&reverse, json!({})).await;
    assert_eq!(made.data(StatusCode::OK)["status"], "REVERSED");
    assert_eq!(alice.balance(&alices).await, "100.00");
    assert_eq!(bob.balance(&bobs).await, "0.00");
    let twice = operators[0].client.post(&reverse, json!({})).await;
    assert_eq!(twice.error(StatusCode::CONFLICT), "CONFLICT");
    assert_eq!(alice.balance(&alices).await, "100.00", "reversed once");
    platform.stop().await;
}

#[tokio::test]
async fn an_owner_cannot_lift_a_staff_freeze_and_staff_cannot_touch_their_own_wallet() {
    let mut platform = platform().await;
    let client = platform.client();
    let (ops, own) = platform
        .staff_user(&client, "ops@finflow.local", "ops")
        .await
        .unwrap_or_else(|e| panic!("granting ops: {e:#}"))
        .with_wallet("USD")
        .await;
    let (alice, a) = client.new_user("alice").await.with_wallet("USD").await;
    let status = format!("/api/v1/wallets/{a}/status");

    let frozen = ops.client.put(&status, json!({"status": "frozen"})).await;
    assert_eq!(frozen.data(StatusCode::OK)["status"], "frozen");
    for body in [json!({"status": "active"}), json!("active")] {
        let lifted = alice.client.put(&status, body).await;
        refused_because(&lifted, "staff_freeze");
    }
    let refused = alice
        .pay(
            "deposit",
            json!({"to_wallet_id": a, "amount": "10.00", "currency": "USD"}),
            &key(),
            None,
        )
        .await;
    assert_eq!(refused.error(StatusCode::BAD_REQUEST), "WALLET_NOT_ACTIVE");

    // Staff lift it; the owner may then freeze and unfreeze it themselves.
    let lifted = ops.client.put(&status, json!({"status": "active"})).await;
    assert_eq!(lifted.data(StatusCode::OK)["status"], "active");
    for to in ["frozen", "active"] {
        let changed = alice.client.put(&status, json!({"status": to})).await;
        assert_eq!(changed.data(StatusCode::OK)["status"], to);
    }

    // The ops user's own wallet is not theirs to change as staff.
    let own_status = format!("/api/v1/wallets/{own}/status");
    let touched = ops
        .client
        .put(&own_status, json!({"status": "frozen"}))
        .await;
    refused_because(&touched, "own_wallet");
    platform.stop().await;
}

/// A 400 `VALIDATION_ERROR` in the envelope that gives `reason`.
fn invalid_because(answer: &finflow_e2e::client::Answer, reason: &str) {
    assert_eq!(answer.error(StatusCode::BAD_REQUEST), "VALIDATION_ERROR");
    assert_eq!(
        answer.body["error"]["details"]["reason"], reason,
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn nul_characters_and_array_bodies_get_a_400_in_the_envelope_never_a_500_or_a_change() {
    let mut platform = platform().await;
    let client = platform.client();
    let ops = platform
        .staff_user(&client, "ops@finflow.local", "ops")
        .await
        .unwrap_or_else(|e| panic!("granting ops: {e:#}"));
    let (alice, a) = client.new_user("alice").await.with_wallet("USD").await;

    // PostgreSQL cannot store NUL in text: each of these answered 500.
    for query in ["currency=%00", "status=%00"] {
        let answer = ops
            .client
            .get(&format!("/api/v1/reports/transactions?{query}"))
            .await;
        invalid_because(&answer, "nul_character");
    }
    let webhook = alice
        .client
        .post(
            "/api/v1/webhooks",
            json!({"url": "https://hooks.example.com/\u{0}"}),
        )
        .await;
    invalid_because(&webhook, "nul_character");
    let deposit = alice
        .pay(
            "deposit",
            json!({"to_wallet_id": a, "amount": "10.00", "currency": "USD",
                   "description": "rent\u{0}"}),
            &key(),
            None,
        )
        .await;
    invalid_because(&deposit, "nul_character");
    let bob = client.new_user("bob").await;
    let kyc = bob
        .client
        .post(
            "/api/v1/kyc/submit",
            json!({"document_type": "passport", "document_number": "X1234567",
                   "document_url": "https://documents.example.com/\u{0}.pdf"}),
        )
        .await;
    invalid_because(&kyc, "nul_character");

    // serde reads a struct from an array, field by field: this changed the profile.
    let before = alice.client.get("/api/v1/users/me").await;
    let before = before.data(StatusCode::OK).clone();
    let array = alice
        .client
        .put("/api/v1/users/me", json!(["Array Name", "+14155550199"]))
        .await;
    invalid_because(&array, "array_body");
    let after = alice.client.get("/api/v1/users/me").await;
    assert_eq!(
        after.data(StatusCode::OK),
        &before,
        "the profile is unchanged"
    );
    platform.stop().await;
}

#[tokio::test]
async fn a_client_that_stalls_its_headers_is_cut_off_and_an_oversized_head_gets_the_envelope() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let mut platform = platform().await;
    let address = platform
        .gateway_url
        .trim_start_matches("http://")
        .to_owned();

    // Slowloris: a request line and one header, then nothing. The gateway's default
    // head timeout is 10 s; these stayed open past 42 s.
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
        tcp.write_all(b"GET /api/v1/wallets HTTP/1.1\r\nHost: finflow\r\n")
            .await
            .unwrap();
        stalled.push(tcp);
    }
    let started = tokio::time::Instant::now();
    for tcp in &mut stalled {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout_at(
            started + std::time::Duration::from_secs(20),
            tcp.read(&mut byte),
        )
        .await
        .expect("a stalled connection is closed within 20 s");
        assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer");
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(8),
        "closed by the head timeout, not at once"
    );

    // A 1 MiB header: 431, in the envelope like every other answer.
    let big = finflow_platform::client::default_client()
        .get(format!("{}/api/v1/wallets", platform.gateway_url))
        .header("x-padding", "a".repeat(1 << 20))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let body: Value = big.json().await.expect("a JSON body");
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "HEADERS_TOO_LARGE");
    platform.stop().await;
}

#[tokio::test]
async fn a_sign_up_with_someone_s_address_answers_as_a_new_one_and_only_its_owner_hears_of_it() {
    let mut platform = platform().await;
    let anonymous = platform.client();
    let victim = anonymous.new_user("victim").await;
    let fresh = format!("fresh-{}@example.com", key());
    let attacker_password = "the attacker's own password";
    let sign_up = |email: String| {
        let c = anonymous.clone();
        async move {
            c.post(
                "/api/v1/auth/register",
                json!({"email": email, "password": attacker_password,
                       "full_name": "Mallory", "phone": "+14155550123"}),
            )
            .await
        }
    };
    let since = mail::mark(&platform.mailbox);
    let taken = sign_up(victim.email.clone()).await;
    let new = sign_up(fresh.clone()).await;

    // The same answer: status, body (but the address it names), headers.
    assert_eq!(taken.status, StatusCode::ACCEPTED, "{}", taken.body);
    assert_eq!(taken.status, new.status);
    let accepted = |email: &str| json!({"success": true, "data": {"email": email, "status": "verification_sent"}});
    assert_eq!(taken.body, accepted(&victim.email));
    assert_eq!(new.body, accepted(&fresh));
    let names = |a: &Answer| {
        a.headers
            .keys()
            .map(|k| k.as_str().to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(names(&taken), names(&new));

    // The owner is told that someone tried (and given no token); the new address gets
    // its token.
    let notice = mail::next_mail_to(
        &platform.mailbox,
        &victim.email,
        since,
        MAIL_PATIENCE,
        |m| m.contains("Subject: Someone tried to sign up with your address"),
    )
    .await
    .expect("the owner is told that someone tried to sign up with their address");
    assert_eq!(mail::mailed_token(&notice), None, "{notice}");
    mail::next_mail_to(&platform.mailbox, &fresh, since, MAIL_PATIENCE, |m| {
        mail::mailed_token(m).is_some()
    })
    .await
    .expect("the new address gets its verification mail");
    let to_victim = platform
        .mailbox
        .lock()
        .unwrap()
        .iter()
        .skip(since)
        .filter(|(to, data)| to.contains(&victim.email) && mail::mailed_token(data).is_some())
        .count();
    assert_eq!(to_victim, 0, "no new token for the victim's account");

    // The attacker's password opens nothing; the owner's still does.
    let login = anonymous
        .post(
            "/api/v1/auth/login",
            json!({"email": victim.email, "password": attacker_password}),
        )
        .await;
    assert_eq!(login.error(StatusCode::UNAUTHORIZED), "UNAUTHORIZED");
    let owner = anonymous.sign_in(&victim.email, &victim.id).await;
    let me = owner.client.get("/api/v1/users/me").await;
    assert_eq!(
        me.data(StatusCode::OK)["full_name"],
        "Test User",
        "unchanged"
    );
    platform.stop().await;
}

#[tokio::test]
async fn a_client_told_it_is_verified_opens_a_wallet_at_once() {
    let mut platform = platform().await;
    let client = platform.client();
    // E used to tell the client "verified" 20 to 160 ms before A (and so B) knew.
    for n in 0..10 {
        let user = client.new_user("prompt").await;
        assert_eq!(
            user.submit_kyc().await.data(StatusCode::CREATED)["status"],
            "verified"
        );
        let opened = user
            .client
            .post("/api/v1/wallets", json!({"currency": "USD"}))
            .await;
        assert_eq!(
            opened.status,
            StatusCode::CREATED,
            "user {n}: E said verified, B answered {}",
            opened.body
        );
    }
    platform.stop().await;
}

#[tokio::test]
async fn a_user_whose_verification_compliance_revoked_can_no_longer_move_money() {
    let mut platform = platform().await;
    let client = platform.client();
    let officer = platform
        .staff_user(&client, "compliance@finflow.local", "compliance")
        .await
        .unwrap_or_else(|e| panic!("granting compliance: {e:#}"));
    let (alice, alices) = client.new_user("alice").await.with_wallet("USD").await;
    let (_, bobs) = client.new_user("bob").await.with_wallet("USD").await;
    let funded = alice
        .pay(
            "deposit",
            json!({"to_wallet_id": alices, "amount": "100.00", "currency": "USD"}),
            &key(),
            Some(20),
        )
        .await;
    assert_eq!(funded.data(StatusCode::OK)["status"], "COMPLETED");
    // Held for review before the revocation, released after it.
    let held = alice
        .pay(
            "deposit",
            json!({"to_wallet_id": alices, "amount": "10001.00", "currency": "USD"}),
            &key(),
            None,
        )
        .await;
    let held = held.data(StatusCode::ACCEPTED)["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let revoke = |whom: &str| format!("/api/v1/kyc/users/{whom}/revoke");
    let why = json!({"reason": "the passport was reported stolen"});
    // Not by the user, and an officer never revokes (or shields) their own.
    assert_eq!(
        alice
            .client
            .post(&revoke(&alice.id), why.clone())
            .await
            .error(StatusCode::FORBIDDEN),
        "FORBIDDEN"
    );
    assert_eq!(
        officer
            .client
            .post(&revoke(&officer.id), why.clone())
            .await
            .error(StatusCode::FORBIDDEN),
        "FORBIDDEN"
    );
    let revoked = officer.client.post(&revoke(&alice.id), why).await;
    assert_eq!(revoked.data(StatusCode::OK)["status"], "revoked");

    // At once: no new payment, no deposit, no new wallet.
    let transfer = alice
        .pay(
            "transfer",
            json!({"from_wallet_id": alices, "to_wallet_id": bobs, "amount": "10.00", "currency": "USD"}),
            &key(),
            None,
        )
        .await;
    assert_eq!(transfer.error(StatusCode::FORBIDDEN), "KYC_REQUIRED");
    let deposit = alice
        .pay(
            "deposit",
            json!({"to_wallet_id": alices, "amount": "10.00", "currency": "USD"}),
            &key(),
            None,
        )
        .await;
    assert_eq!(deposit.error(StatusCode::FORBIDDEN), "KYC_REQUIRED");
    let wallet = alice
        .client
        .post("/api/v1/wallets", json!({"currency": "EUR"}))
        .await;
    assert_eq!(wallet.error(StatusCode::FORBIDDEN), "KYC_REQUIRED");

    // The held deposit, released now, fails when it is applied: B asks A then too.
    let release = officer
        .client
        .post(&format!("/api/v1/payments/{held}/release"), json!({}))
        .await;
    release.data(StatusCode::OK);
    let failed = eventually("the released deposit to settle", async || {
        let p = payment(&alice, &held).await;
        (p["status"] != "PENDING").then_some(p)
    })
    .await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(failed["failure"]["code"], "KYC_REQUIRED", "{failed}");
    assert_eq!(alice.balance(&alices).await, "100.00");

    // A new document verifies her again (the revoked one would not), and she pays again.
    let renewed = format!("Z{}", &alice.passport_number()[1..]);
    assert_eq!(
        alice
            .submit_passport(&renewed)
            .await
            .data(StatusCode::CREATED)["status"],
        "verified"
    );
    let again = alice
        .pay(
            "transfer",
            json!({"from_wallet_id": alices, "to_wallet_id": bobs, "amount": "10.00", "currency": "USD"}),
            &key(),
            Some(20),
        )
        .await;
    assert_eq!(again.data(StatusCode::OK)["status"], "COMPLETED");
    platform.stop().await;
}

#[tokio::test]
async fn a_deposit_in_a_unit_of_account_is_held_by_what_it_is_worth() {
    let mut platform = platform().await;
    let client = platform.client();
    let (user, clf) = client.new_user("clf").await.with_wallet("CLF").await;
    // 300 CLF is about 12,300 USD: over the 10,000 hold threshold, however few units.
    let deposit = user
        .pay(
            "deposit",
            json!({"to_wallet_id": clf, "amount": "300", "currency": "CLF"}),
            &key(),
            None,
        )
        .await;
    assert_eq!(deposit.data(StatusCode::ACCEPTED)["status"], "ON_HOLD");

    // A currency FinFlow cannot value is not one it holds money in.
    let afn = user
        .client
        .post("/api/v1/wallets", json!({"currency": "AFN"}))
        .await;
    invalid_because(&afn, "currency_not_supported");
    platform.stop().await;
}
