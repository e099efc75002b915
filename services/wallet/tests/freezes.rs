//! Who may change a wallet, on a real socket against real PostgreSQL: who may freeze
//! and unfreeze it (`PUT /api/v1/wallets/{id}/status`), and which service may move its
//! money (`/internal/transfers`). Requests carry the identity headers a sidecar would set.

use std::sync::Arc;

use finflow_platform::client::{ServiceClient, TokenSource};
use finflow_platform::db::TestDb;
use finflow_wallet::api::{AppState, router};
use finflow_wallet::users::Users;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;
use uuid::Uuid;

/// B's API on a socket. A is never asked: changing a status needs nothing from it.
struct Stand {
    base: String,
    pool: PgPool,
    _db: TestDb,
}

impl Stand {
    async fn start() -> Self {
        let db = TestDb::new(Some(&finflow_wallet::MIGRATIONS)).await;
        let http = ServiceClient::http_client();
        let nowhere = "http://127.0.0.1:9";
        let tokens = TokenSource::new(nowhere, "wallet", "secret".to_owned().into(), http.clone());
        let api = router(AppState {
            pool: db.pool.clone(),
            users: Users::new(ServiceClient::new("auth", nowhere, tokens, http)),
            limits: Arc::new(
                "bronze=1000/5000,silver=10000/50000,gold=100000/500000"
                    .parse()
                    .unwrap(),
            ),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, api).await.unwrap() });
        Self {
            base,
            pool: db.pool.clone(),
            _db: db,
        }
    }

    /// An active USD wallet of `owner`.
    async fn wallet(&self, owner: Uuid) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO wallets (id, user_id, kind, currency, status) VALUES ($1, $2, 'user', 'USD', 'active')",
        )
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await
        .unwrap();
        id
    }

    async fn status_of(&self, id: Uuid) -> String {
        sqlx::query_scalar("SELECT status FROM wallets WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// `PUT /api/v1/wallets/{id}/status` as `who` with `roles`.
    async fn set(&self, who: Uuid, roles: &str, id: Uuid, status: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .put(format!("{}/api/v1/wallets/{id}/status", self.base))
            .header("x-user-id", who.to_string())
            .header("x-user-email", format!("u-{}@finflow.test", who.simple()))
            .header("x-user-roles", roles)
            .header("x-kyc-status", "verified")
            .header("x-account-tier", "bronze")
            .json(&json!({ "status": status }))
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        (code, response.json().await.unwrap())
    }
}

impl Stand {
    /// `POST /internal/transfers` with the token of `service`.
    async fn internal_transfer(&self, service: &str, body: &Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/internal/transfers", self.base))
            .header("x-user-id", format!("service:{service}"))
            .header("x-user-roles", format!("service:{service}"))
            .json(body)
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        (code, response.json().await.unwrap())
    }

    async fn balance(&self, id: Uuid) -> String {
        sqlx::query_scalar("SELECT balance::text FROM wallets WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_service_other_than_payment_cannot_mint_money_through_internal_transfers() {
    let stand = Stand::start().await;
    let wallet = stand.wallet(Uuid::now_v7()).await;
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

fn assert_forbidden((status, body): (u16, Value), reason: &str) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "FORBIDDEN", "{body}");
    assert_eq!(body["error"]["details"]["reason"], reason, "{body}");
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
    let (ops, colleague) = (Uuid::new_v4(), Uuid::new_v4());
    let wallet = stand.wallet(ops).await;

    // A colleague freezes it; the staff member cannot lift it, nor touch it at all.
    let (status, _) = stand.set(colleague, "user,ops", wallet, "frozen").await;
    assert_eq!(status, 200);
    assert_forbidden(
        stand.set(ops, "user,ops", wallet, "active").await,
        "own_wallet",
    );
    assert_eq!(stand.status_of(wallet).await, "frozen");

    let (status, _) = stand.set(colleague, "user,ops", wallet, "active").await;
    assert_eq!(status, 200);
    assert_forbidden(
        stand.set(ops, "user,ops", wallet, "frozen").await,
        "own_wallet",
    );
    assert_eq!(stand.status_of(wallet).await, "active");
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
