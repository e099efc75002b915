//! Who may change a wallet, on a real socket against real PostgreSQL: who may freeze
//! and unfreeze it (`PUT /api/v1/wallets/{id}/status`), and which service may move its
//! money (`/internal/transfers`). Requests carry the identity headers a sidecar would set.

mod common;

use common::{Stand, assert_forbidden};
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn a_service_other_than_payment_cannot_mint_money_through_internal_transfers() {
    let stand = Stand::start().await;
    let owner = Uuid::now_v7();
    stand.auth.set(owner, "verified", "bronze");
    let wallet = stand.wallet(owner).await;
    let before = stand.balance(wallet).await;
    let deposit = json!({"transfer_id": Uuid::now_v7(), "kind": "deposit",
        "to_wallet_id": wallet, "amount": "1000000.00", "currency": "USD"});
    for leaked in ["notification", "kyc", "reporting", "auth", "wallet"] {
        let answer = stand.internal_transfer(leaked, &deposit).await;
        assert_forbidden(answer, "service_not_allowed");
    }
    assert_eq!(stand.balance(wallet).await, before, "no money was made");
    let (status, body) = stand.internal_transfer("payment", &deposit).await;
    assert!(
        status < 300,
        "payment's own transfer goes through: {status} {body}"
    );
}

#[tokio::test]
async fn an_owner_cannot_lift_a_freeze_that_staff_put_on_their_wallet() {
    let stand = Stand::start().await;
    let (owner, ops) = (Uuid::new_v4(), Uuid::new_v4());
    let wallet = stand.wallet(owner).await;

    let (status, body) = stand.set(ops, "user,ops", wallet, "frozen").await;
    assert_eq!(status, 200, "{body}");
    assert_forbidden(
        stand.set(owner, "user", wallet, "active").await,
        "staff_freeze",
    );
    assert_eq!(stand.status_of(wallet).await, "frozen");

    // Staff lift it.
    let (status, body) = stand.set(ops, "user,ops", wallet, "active").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stand.status_of(wallet).await, "active");
}

#[tokio::test]
async fn an_owner_may_freeze_and_unfreeze_their_own_wallet() {
    let stand = Stand::start().await;
    let owner = Uuid::new_v4();
    let wallet = stand.wallet(owner).await;

    let (status, body) = stand.set(owner, "user", wallet, "frozen").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "frozen");
    let (status, body) = stand.set(owner, "user", wallet, "active").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stand.status_of(wallet).await, "active");
}

#[tokio::test]
async fn a_staff_freeze_over_an_owner_freeze_is_a_staff_freeze() {
    let stand = Stand::start().await;
    let (owner, ops) = (Uuid::new_v4(), Uuid::new_v4());
    let wallet = stand.wallet(owner).await;

    let (status, _) = stand.set(owner, "user", wallet, "frozen").await;
    assert_eq!(status, 200);
    let (status, body) = stand.set(ops, "user,ops", wallet, "frozen").await;
    assert_eq!(status, 200, "{body}");
    assert_forbidden(
        stand.set(owner, "user", wallet, "active").await,
        "staff_freeze",
    );
    assert_eq!(stand.status_of(wallet).await, "frozen");
}

#[tokio::test]
async fn staff_cannot_change_the_status_of_their_own_wallet() {
    let stand = Stand::start().await;
    for roles in ["user,ops", "user,compliance"] {
        let (staff, colleague) = (Uuid::new_v4(), Uuid::new_v4());
        let wallet = stand.wallet(staff).await;

        // A colleague freezes it; the staff member cannot lift it, nor touch it at all.
        let (status, _) = stand.set(colleague, "user,ops", wallet, "frozen").await;
        assert_eq!(status, 200);
        assert_forbidden(
            stand.set(staff, roles, wallet, "active").await,
            "own_wallet",
        );
        assert_eq!(stand.status_of(wallet).await, "frozen", "{roles}");

        let (status, _) = stand.set(colleague, "user,ops", wallet, "active").await;
        assert_eq!(status, 200);
        assert_forbidden(
            stand.set(staff, roles, wallet, "frozen").await,
            "own_wallet",
        );
        assert_eq!(stand.status_of(wallet).await, "active", "{roles}");
    }
}

#[tokio::test]
async fn a_wallet_frozen_before_freezes_were_attributed_stays_frozen_for_its_owner() {
    let stand = Stand::start().await;
    let owner = Uuid::new_v4();
    let wallet = stand.wallet(owner).await;
    // Frozen as the previous release froze wallets: nobody recorded who did it.
    sqlx::query("UPDATE wallets SET status = 'frozen' WHERE id = $1")
        .bind(wallet)
        .execute(&stand.pool)
        .await
        .unwrap();

    assert_forbidden(
        stand.set(owner, "user", wallet, "active").await,
        "staff_freeze",
    );
    assert_eq!(stand.status_of(wallet).await, "frozen");
}

/// Staff may freeze a pending wallet (to stop its owner activating it), but lifting
/// that freeze is not an activation: the wallet is pending again, and active only once
/// its owner activates it. After that, a freeze lifts back to active.
#[tokio::test]
async fn a_pending_wallet_frozen_and_unfrozen_by_staff_stays_pending_until_its_owner_activates_it()
{
    let stand = Stand::start().await;
    let (owner, ops) = (Uuid::new_v4(), Uuid::new_v4());
    stand.auth.set(owner, "verified", "bronze");
    let (status, body) = stand.open(owner, "USD").await;
    assert_eq!(status, 201, "{body}");
    let wallet: Uuid = body["data"]["id"].as_str().unwrap().parse().unwrap();

    for (to, expected) in [("frozen", "frozen"), ("active", "pending")] {
        let (status, body) = stand.set(ops, "user,ops", wallet, to).await;
        assert_eq!(status, 200, "{to}: {body}");
        assert_eq!(body["data"]["status"], expected, "{body}");
        assert_eq!(stand.status_of(wallet).await, expected);
    }
    let activate = format!("/api/v1/wallets/{wallet}/activate");
    let (status, body) = stand
        .as_user(reqwest::Method::POST, &activate, owner, "user", None)
        .await;
    assert_eq!(status, 200, "{body}");
    for to in ["frozen", "active"] {
        let (status, body) = stand.set(ops, "user,ops", wallet, to).await;
        assert_eq!(
            (status, stand.status_of(wallet).await.as_str()),
            (200, to),
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_pending_wallet_is_activated_by_its_owner_alone_not_through_its_status() {
    let stand = Stand::start().await;
    let (owner, ops) = (Uuid::new_v4(), Uuid::new_v4());
    let wallet = stand.wallet(owner).await;
    sqlx::query("UPDATE wallets SET status = 'pending' WHERE id = $1")
        .bind(wallet)
        .execute(&stand.pool)
        .await
        .unwrap();

    for (who, roles) in [(ops, "user,ops"), (owner, "user")] {
        let (status, body) = stand.set(who, roles, wallet, "active").await;
        assert_eq!(status, 409, "{roles}: {body}");
        assert_eq!(body["error"]["code"], "CONFLICT", "{body}");
        assert_eq!(body["error"]["details"]["reason"], "pending", "{body}");
        assert_eq!(stand.status_of(wallet).await, "pending");
    }
    let (status, body) = stand
        .as_user(
            reqwest::Method::POST,
            &format!("/api/v1/wallets/{wallet}/activate"),
            owner,
            "user",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stand.status_of(wallet).await, "active");
}

#[tokio::test]
async fn a_reversal_claws_money_back_out_of_a_frozen_wallet_and_into_a_frozen_one() {
    let stand = Stand::start().await;
    let (payer, payee, ops) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    stand.auth.set(payer, "verified", "bronze");
    stand.auth.set(payee, "verified", "bronze");
    let (from, to) = (stand.wallet(payer).await, stand.wallet(payee).await);
    let (status, body) = stand.deposit(from, "500", "USD").await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = stand.send(from, to, "500", "USD").await;
    assert_eq!(status, 201, "{body}");

    // The money was stolen: staff freeze the thief's wallet so it stays, and the
    // victim's wallet is frozen too (by its owner, after the takeover).
    let (status, body) = stand.set(ops, "user,ops", to, "frozen").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = stand.set(payer, "user", from, "frozen").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = stand.send(to, from, "500", "USD").await;
    assert_eq!(status, 400, "the thief moves nothing: {body}");
    assert_eq!(body["error"]["code"], "WALLET_NOT_ACTIVE", "{body}");

    // Two operators approved the reversal at C: neither freeze stands in its way (had
    // it, the wallet would have to be unfrozen first, and its owner could race it).
    let reversal = json!({"transfer_id": Uuid::now_v7(), "kind": "reversal",
        "from_wallet_id": to, "to_wallet_id": from, "amount": "500", "currency": "USD"});
    let (status, body) = stand.internal_transfer("payment", &reversal).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(stand.balance(to).await, "0.0000");
    assert_eq!(stand.balance(from).await, "500.0000");
    assert_eq!(stand.status_of(to).await, "frozen", "and both stay frozen");
    assert_eq!(stand.status_of(from).await, "frozen");
}

#[tokio::test]
async fn a_user_whose_wallet_staff_froze_can_neither_open_nor_activate_another() {
    let stand = Stand::start().await;
    let (owner, ops) = (Uuid::new_v4(), Uuid::new_v4());
    stand.auth.set(owner, "verified", "bronze");
    let usd = stand.wallet(owner).await;
    // Opened before the freeze, activated after it.
    let (status, body) = stand.open(owner, "GBP").await;
    assert_eq!(status, 201, "{body}");
    let gbp: Uuid = body["data"]["id"].as_str().unwrap().parse().unwrap();
    let (status, body) = stand.set(ops, "user,ops", usd, "frozen").await;
    assert_eq!(status, 200, "{body}");

    assert_forbidden(stand.open(owner, "EUR").await, "staff_freeze");
    let activate = stand
        .as_user(
            reqwest::Method::POST,
            &format!("/api/v1/wallets/{gbp}/activate"),
            owner,
            "user",
            None,
        )
        .await;
    assert_forbidden(activate, "staff_freeze");
    assert_eq!(stand.status_of(gbp).await, "pending");

    // A freeze of their own stops nothing else.
    let (status, body) = stand.set(ops, "user,ops", usd, "active").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = stand.set(owner, "user", usd, "frozen").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = stand.open(owner, "EUR").await;
    assert_eq!(status, 201, "{body}");
}

/// A wallet its owner froze, then a staff freeze of another: lifting their own freeze
/// made a wallet live again, and the money left through it while staff believed the
/// user stopped (both read "frozen").
#[tokio::test]
async fn a_user_whose_wallet_staff_froze_cannot_lift_their_own_freeze_of_another() {
    let stand = Stand::start().await;
    let (owner, ops) = (Uuid::new_v4(), Uuid::new_v4());
    stand.auth.set(owner, "verified", "bronze");
    let usd = stand.wallet(owner).await;
    let (status, body) = stand.open(owner, "EUR").await;
    assert_eq!(status, 201, "{body}");
    let eur: Uuid = body["data"]["id"].as_str().unwrap().parse().unwrap();
    let activate = stand
        .as_user(
            reqwest::Method::POST,
            &format!("/api/v1/wallets/{eur}/activate"),
            owner,
            "user",
            None,
        )
        .await;
    assert_eq!(activate.0, 200, "{}", activate.1);
    let (status, body) = stand.set(owner, "user", eur, "frozen").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = stand.set(ops, "user,ops", usd, "frozen").await;
    assert_eq!(status, 200, "{body}");

    assert_forbidden(
        stand.set(owner, "user", eur, "active").await,
        "staff_freeze",
    );
    assert_eq!(stand.status_of(eur).await, "frozen");
    // Staff lifting it decide that themselves.
    let (status, body) = stand.set(ops, "user,ops", eur, "active").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = stand.set(owner, "user", eur, "frozen").await;
    assert_eq!(status, 200, "{body}");

    // Once staff lift theirs, the owner's own freeze is theirs to lift again.
    let (status, body) = stand.set(ops, "user,ops", usd, "active").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = stand.set(owner, "user", eur, "active").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stand.status_of(eur).await, "active");
}

/// An operator who paid a user, or was paid by them, is a party: their freeze or
/// unfreeze of that user's wallet would be a dispute settled by one side (or an
/// accomplice's freeze lifted). Another operator decides.
#[tokio::test]
async fn an_operator_who_exchanged_money_with_a_user_cannot_freeze_or_unfreeze_their_wallet() {
    let stand = Stand::start().await;
    let (customer, ops, other_ops) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for user in [customer, ops] {
        stand.auth.set(user, "verified", "bronze");
    }
    let theirs = stand.wallet(customer).await;
    let mine = stand.wallet(ops).await;
    let (status, body) = stand.deposit(mine, "50.00", "USD").await;
    assert!(status < 300, "{status} {body}");
    let (status, body) = stand.send(mine, theirs, "20.00", "USD").await;
    assert!(status < 300, "{status} {body}");

    assert_forbidden(stand.set(ops, "user,ops", theirs, "frozen").await, "party");
    assert_eq!(stand.status_of(theirs).await, "active");
    let (status, body) = stand.set(other_ops, "user,ops", theirs, "frozen").await;
    assert_eq!(status, 200, "{body}");
    assert_forbidden(stand.set(ops, "user,ops", theirs, "active").await, "party");
    assert_eq!(stand.status_of(theirs).await, "frozen");
    let (status, body) = stand.set(other_ops, "user,ops", theirs, "active").await;
    assert_eq!(status, 200, "{body}");
}
