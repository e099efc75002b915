//! Staff decisions on payments (release, reverse) on a real socket against real
//! PostgreSQL and Redis. Requests carry the identity headers a sidecar would set; B and
//! A's token endpoint are a stand-in that knows who owns which wallet and records the
//! transfers it is asked to apply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use finflow_payment::api::{AppState, Settings, router};
use finflow_payment::idempotency::Keys;
use finflow_payment::wallets::Wallets;
use finflow_platform::client::{ServiceClient, TokenSource};
use finflow_platform::db::TestDb;
use finflow_platform::{Amount, cache};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;
use uuid::Uuid;

/// What the stand-in for B knows: wallet owners, and the transfers it applied.
#[derive(Clone, Default)]
struct FakeWallets {
    owners: Arc<Mutex<HashMap<Uuid, Uuid>>>,
    transfers: Arc<Mutex<Vec<Value>>>,
}

impl FakeWallets {
    fn wallet_of(&self, owner: Uuid) -> Uuid {
        let id = Uuid::now_v7();
        self.owners.lock().unwrap().insert(id, owner);
        id
    }

    fn transfers(&self) -> usize {
        self.transfers.lock().unwrap().len()
    }
}

async fn fake_wallet(
    State(f): State<FakeWallets>,
    Path(id): Path<Uuid>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let owner = f.owners.lock().unwrap().get(&id).copied();
    match owner {
        Some(owner) => axum::Json(json!({ "success": true, "data": {
            "id": id, "user_id": owner, "currency": "USD", "balance": "100000.00",
            "status": "active",
            "limits": { "per_transaction": "100000.00", "remaining_today": "100000.00" },
        }}))
        .into_response(),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(json!({ "success": false,
                "error": { "code": "NOT_FOUND", "message": "wallet not found" } })),
        )
            .into_response(),
    }
}

async fn fake_transfer(State(f): State<FakeWallets>, body: axum::Json<Value>) -> axum::Json<Value> {
    f.transfers.lock().unwrap().push(body.0.clone());
    axum::Json(json!({ "success": true, "data": body.0 }))
}

async fn fake_token() -> axum::Json<Value> {
    axum::Json(json!({ "success": true, "data": {
        "access_token": "service-token",
        "expires_at": chrono::Utc::now() + chrono::Duration::hours(1),
    }}))
}

/// C's API on a socket, B (and A's token endpoint) faked on another.
struct Stand {
    base: String,
    wallets: FakeWallets,
    _db: TestDb,
    pool: PgPool,
}

impl Stand {
    async fn start() -> Self {
        let db = TestDb::new(Some(&finflow_payment::MIGRATIONS)).await;
        let wallets = FakeWallets::default();
        let fake = Router::new()
            .route("/api/v1/auth/token", post(fake_token))
            .route("/internal/wallets/{id}", get(fake_wallet))
            .route("/internal/transfers", post(fake_transfer))
            .with_state(wallets.clone());
        let fake_url = serve(fake).await;
        let http = ServiceClient::http_client();
        let tokens = TokenSource::new(
            &fake_url,
            "payment",
            "secret".to_owned().into(),
            http.clone(),
        );
        let redis = cache::connect(&cache::test_url()).await.unwrap();
        let api = router(AppState {
            pool: db.pool.clone(),
            keys: Keys::new(redis),
            wallets: Wallets::new(ServiceClient::new("wallet", &fake_url, tokens, http)),
            settings: Arc::new(Settings {
                aml_hold_threshold: Amount::parse("10000").unwrap(),
                max_wait: Duration::from_secs(1),
                duplicate_wait: Duration::from_secs(1),
            }),
            waiters: finflow_payment::waiters::Waiters::new(16),
        });
        Self {
            base: serve(api).await,
            wallets,
            pool: db.pool.clone(),
            _db: db,
        }
    }

    /// A payment stored as C stores it, in `status`.
    async fn payment(
        &self,
        payer: Uuid,
        kind: &str,
        from: Option<Uuid>,
        to: Option<Uuid>,
        amount: &str,
        status: &str,
    ) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO payments (id, user_id, idempotency_key, request_hash, kind, from_wallet_id, \
               to_wallet_id, amount, currency, status) \
             VALUES ($1, $2, $3, '\\x00', $4, $5, $6, $7::numeric, 'USD', $8)",
        )
        .bind(id)
        .bind(payer)
        .bind(id.to_string())
        .bind(kind)
        .bind(from)
        .bind(to)
        .bind(amount)
        .bind(status)
        .execute(&self.pool)
        .await
        .unwrap();
        id
    }

    async fn status_of(&self, id: Uuid) -> String {
        sqlx::query_scalar("SELECT status FROM payments WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// `POST /api/v1/payments/{id}/{action}` as a staff member `who` with `roles`.
    async fn decide(&self, who: Uuid, roles: &str, id: Uuid, action: &str) -> (u16, Value) {
        let response = ServiceClient::http_client()
            .post(format!("{}/api/v1/payments/{id}/{action}", self.base))
            .header("x-user-id", who.to_string())
            .header(
                "x-user-email",
                format!("staff-{}@finflow.test", who.simple()),
            )
            .header("x-user-roles", format!("user,{roles}"))
            .header("x-kyc-status", "verified")
            .header("x-account-tier", "gold")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

async fn serve(app: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn assert_own_payment_refused((status, body): (u16, Value)) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "FORBIDDEN", "{body}");
    assert_eq!(body["error"]["details"]["reason"], "own_payment", "{body}");
}

#[tokio::test]
async fn staff_cannot_release_a_held_deposit_into_their_own_wallet() {
    let stand = Stand::start().await;
    let ops = Uuid::new_v4();
    let own = stand.wallets.wallet_of(ops);
    let held = stand
        .payment(ops, "deposit", None, Some(own), "10001.00", "ON_HOLD")
        .await;

    assert_own_payment_refused(stand.decide(ops, "ops", held, "release").await);
    assert_own_payment_refused(stand.decide(ops, "compliance", held, "release").await);
    assert_eq!(stand.status_of(held).await, "ON_HOLD");
}

#[tokio::test]
async fn staff_cannot_reverse_a_transfer_they_made() {
    let stand = Stand::start().await;
    let (ops, friend) = (Uuid::new_v4(), Uuid::new_v4());
    let from = stand.wallets.wallet_of(ops);
    let to = stand.wallets.wallet_of(friend);
    let paid = stand
        .payment(ops, "transfer", Some(from), Some(to), "50.00", "COMPLETED")
        .await;

    assert_own_payment_refused(stand.decide(ops, "ops", paid, "reverse").await);
    assert_eq!(stand.status_of(paid).await, "COMPLETED");
    assert_eq!(stand.wallets.transfers(), 0, "nothing was moved back");
}

#[tokio::test]
async fn staff_cannot_release_or_reverse_a_transfer_paid_to_them() {
    let stand = Stand::start().await;
    let (payer, staff) = (Uuid::new_v4(), Uuid::new_v4());
    let from = stand.wallets.wallet_of(payer);
    let theirs = stand.wallets.wallet_of(staff);
    let held = stand
        .payment(
            payer,
            "transfer",
            Some(from),
            Some(theirs),
            "20000.00",
            "ON_HOLD",
        )
        .await;
    let paid = stand
        .payment(
            payer,
            "transfer",
            Some(from),
            Some(theirs),
            "50.00",
            "COMPLETED",
        )
        .await;

    assert_own_payment_refused(stand.decide(staff, "compliance", held, "release").await);
    assert_own_payment_refused(stand.decide(staff, "ops", held, "release").await);
    assert_own_payment_refused(stand.decide(staff, "ops", paid, "reverse").await);
    assert_eq!(stand.status_of(held).await, "ON_HOLD");
    assert_eq!(stand.status_of(paid).await, "COMPLETED");
    assert_eq!(stand.wallets.transfers(), 0);
}

#[tokio::test]
async fn another_staff_member_may_release_and_reverse_the_same_payments() {
    let stand = Stand::start().await;
    let (payer, payee, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let from = stand.wallets.wallet_of(payer);
    let to = stand.wallets.wallet_of(payee);
    let held = stand
        .payment(
            payer,
            "transfer",
            Some(from),
            Some(to),
            "20000.00",
            "ON_HOLD",
        )
        .await;
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

    let (status, body) = stand.decide(other, "compliance", held, "release").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stand.status_of(held).await, "PENDING");
    let (status, body) = stand.decide(other, "ops", paid, "reverse").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stand.status_of(paid).await, "REVERSED");
    assert_eq!(stand.wallets.transfers(), 1);
}

/// The payee C names in a payment's events, for E's four eyes.
async fn announced_payee(pool: &PgPool, payment: &str) -> Value {
    sqlx::query_scalar::<_, Option<Value>>(
        "SELECT payload->'data'->'payee_user_id' FROM outbox \
         WHERE payload->'data'->>'payment_id' = $1",
    )
    .bind(payment)
    .fetch_one(pool)
    .await
    .unwrap()
    .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_held_transfer_names_its_payee_so_the_payee_cannot_review_it() {
    let stand = Stand::start().await;
    let (payer, payee) = (Uuid::new_v4(), Uuid::new_v4());
    let from = stand.wallets.wallet_of(payer);
    let to = stand.wallets.wallet_of(payee);
    let response = ServiceClient::http_client()
        .post(format!("{}/api/v1/payments/transfer", stand.base))
        .header("x-user-id", payer.to_string())
        .header("x-user-roles", "user")
        .header("x-kyc-status", "verified")
        .header("x-account-tier", "gold")
        .header("idempotency-key", Uuid::new_v4().to_string())
        .json(&json!({"from_wallet_id": from, "to_wallet_id": to,
            "amount": "20000.00", "currency": "USD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["status"], "ON_HOLD", "{body}");
    let id = body["data"]["id"].as_str().unwrap();
    assert_eq!(announced_payee(&stand.pool, id).await, json!(payee));

    // Paid to the staff member: C refuses without asking B who owns the wallet.
    let id: Uuid = id.parse().unwrap();
    stand.wallets.owners.lock().unwrap().clear();
    assert_own_payment_refused(stand.decide(payee, "compliance", id, "release").await);
}
