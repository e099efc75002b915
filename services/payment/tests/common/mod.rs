//! C's API on a real socket against real PostgreSQL and Redis, with a stand-in for B
//! (and A's token endpoint) that knows each wallet's owner, currency and owner's KYC
//! status, and records the transfers it is asked to apply. Requests carry the identity
//! headers a sidecar would set.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use finflow_payment::Payment;
use finflow_payment::wallets::Wallets;
use finflow_platform::Amount;
use finflow_platform::cache;
use finflow_platform::client::{ServiceClient, TokenSource};
use finflow_platform::db;
use finflow_platform::identity::KycStatus;
use finflow_platform::testing::TestService;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;
use uuid::Uuid;

/// A wallet as the stand-in for B describes it.
#[derive(Clone)]
pub struct FakeWallet {
    pub owner: Uuid,
    pub currency: &'static str,
    pub owner_kyc_status: &'static str,
}

/// What the stand-in for B knows: wallets, and the transfers it applied.
#[derive(Clone, Default)]
pub struct FakeWallets {
    wallets: Arc<Mutex<HashMap<Uuid, FakeWallet>>>,
    transfers: Arc<Mutex<Vec<Value>>>,
    /// The wallets whose owner's standing C asked for (B asks A for each).
    standings: Arc<Mutex<Vec<Uuid>>>,
    /// Every wallet lookup C made, as `<id>?<query>`.
    lookups: Arc<Mutex<Vec<String>>>,
    /// The size of each batch of transfers C sent.
    batches: Arc<Mutex<Vec<usize>>>,
    /// Wallets whose transfers B refuses for insufficient funds.
    poor: Arc<Mutex<Vec<Uuid>>>,
    /// While set, B answers a batch with 503.
    down: Arc<std::sync::atomic::AtomicBool>,
    /// B applies transfers but answers 503.
    late: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeWallets {
    /// An active USD wallet of a verified `owner`.
    pub fn wallet_of(&self, owner: Uuid) -> Uuid {
        self.add(FakeWallet {
            owner,
            currency: "USD",
            owner_kyc_status: "verified",
        })
    }

    pub fn add(&self, wallet: FakeWallet) -> Uuid {
        let id = Uuid::now_v7();
        self.wallets.lock().unwrap().insert(id, wallet);
        id
    }

    /// B forgets every wallet (asking it then answers 404).
    pub fn forget_all(&self) {
        self.wallets.lock().unwrap().clear();
    }

    /// The wallets whose owner's standing C asked for, in order.
    pub fn standings(&self) -> Vec<Uuid> {
        self.standings.lock().unwrap().clone()
    }

    /// The wallet lookups C made, in order.
    pub fn lookups(&self) -> Vec<String> {
        self.lookups.lock().unwrap().clone()
    }

    /// The size of each batch of transfers C sent, in order.
    pub fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }

    /// B refuses every transfer out of `wallet` (insufficient funds).
    pub fn refuse_from(&self, wallet: Uuid) {
        self.poor.lock().unwrap().push(wallet);
    }

    /// B applies transfers but answers 503 while `late`, as when its answer came after
    /// C gave up waiting.
    pub fn answer_late(&self, late: bool) {
        self.late.store(late, std::sync::atomic::Ordering::SeqCst);
    }

    /// The transfer ids B was asked to apply, in order.
    pub fn transfer_ids(&self) -> Vec<String> {
        let transfers = self.transfers.lock().unwrap();
        transfers
            .iter()
            .map(|t| t["transfer_id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// B's batch route answers 503 while `down`.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// B's answer to one transfer: its status and envelope.
    fn apply(&self, transfer: &Value) -> (u16, Value) {
        self.transfers.lock().unwrap().push(transfer.clone());
        let from = transfer["from_wallet_id"]
            .as_str()
            .and_then(|w| w.parse::<Uuid>().ok());
        if from.is_some_and(|w| self.poor.lock().unwrap().contains(&w)) {
            return (
                400,
                json!({ "success": false,
                "error": { "code": "INSUFFICIENT_FUNDS", "message": "insufficient funds" } }),
            );
        }
        if self.late.load(std::sync::atomic::Ordering::SeqCst) {
            return (
                503,
                json!({ "success": false,
                "error": { "code": "DEPENDENCY_UNAVAILABLE", "message": "no answer in time" } }),
            );
        }
        (201, json!({ "success": true, "data": transfer }))
    }

    pub fn transfers(&self) -> usize {
        self.transfers.lock().unwrap().len()
    }
}

async fn fake_wallet(
    State(f): State<FakeWallets>,
    Path(id): Path<Uuid>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let refuse = |status: axum::http::StatusCode, code: &str, message: &str| {
        (
            status,
            axum::Json(json!({ "success": false, "error": { "code": code, "message": message } })),
        )
            .into_response()
    };
    let mut asked: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    asked.sort();
    f.lookups
        .lock()
        .unwrap()
        .push(format!("{id}?{}", asked.join("&")));
    // B's query refuses what it does not know.
    if query.keys().any(|k| k != "standing" && k != "counterpart") {
        return refuse(
            axum::http::StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "unknown query parameter",
        );
    }
    let counterpart = match query.get("counterpart").map(|c| c.parse::<Uuid>()) {
        None => None,
        Some(Ok(other)) => Some(other),
        Some(Err(_)) => {
            return refuse(
                axum::http::StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "counterpart is not a UUID",
            );
        }
    };
    let wallets = f.wallets.lock().unwrap().clone();
    // Answers are the contract's types, so this B cannot say what the real one cannot.
    let alone = |id: Uuid, w: &FakeWallet| finflow_contracts::wallet::Wallet {
        id,
        user_id: w.owner,
        currency: w.currency.to_owned(),
        balance: "100000".to_owned(),
        status: "active".to_owned(),
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    };
    let standing = query.get("standing").map(String::as_str) != Some("false");
    if standing {
        f.standings.lock().unwrap().push(id);
    }
    let Some(w) = wallets.get(&id) else {
        return refuse(
            axum::http::StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "wallet not found",
        );
    };
    // Limits as B states them: in the reference currency, USD. Without standing, as B
    // answers then: the wallet alone.
    let data = finflow_contracts::wallet::InternalWallet {
        wallet: alone(id, w),
        owner_kyc_status: standing.then(|| KycStatus::parse(w.owner_kyc_status).unwrap()),
        limits: standing.then(|| finflow_contracts::wallet::RemainingLimits {
            currency: "USD".to_owned(),
            per_transaction: Amount::parse("20000").unwrap(),
            remaining_today: Amount::parse("50000").unwrap(),
        }),
        // Read with it, alone; `null` when B has no such wallet.
        counterpart: counterpart.map(|other| wallets.get(&other).map(|o| alone(other, o))),
    };
    axum::Json(json!({ "success": true, "data": data })).into_response()
}

async fn fake_transfer(
    State(f): State<FakeWallets>,
    body: axum::Json<Value>,
) -> (axum::http::StatusCode, axum::Json<Value>) {
    let (status, envelope) = f.apply(&body.0);
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        axum::Json(envelope),
    )
}

/// `POST /internal/transfers/batch` as B answers it: 1 to 100 transfers, each with its
/// own status and envelope.
async fn fake_batch(
    State(f): State<FakeWallets>,
    body: axum::Json<Value>,
) -> (axum::http::StatusCode, axum::Json<Value>) {
    use axum::http::StatusCode;
    if f.down.load(std::sync::atomic::Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "success": false,
                "error": { "code": "DEPENDENCY_UNAVAILABLE", "message": "auth is down" } })),
        );
    }
    let Some(transfers) = body.0["transfers"]
        .as_array()
        .filter(|t| (1..=100).contains(&t.len()))
    else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "success": false,
                "error": { "code": "VALIDATION_ERROR", "message": "1 to 100 transfers" } })),
        );
    };
    f.batches.lock().unwrap().push(transfers.len());
    let results: Vec<Value> = transfers
        .iter()
        .map(|t| {
            let (status, mut envelope) = f.apply(t);
            envelope["status"] = json!(status);
            envelope
        })
        .collect();
    (
        StatusCode::OK,
        axum::Json(json!({ "success": true, "data": { "results": results } })),
    )
}

async fn fake_token() -> axum::Json<Value> {
    axum::Json(json!({ "success": true, "data": {
        "access_token": "service-token",
        "expires_at": chrono::Utc::now() + chrono::Duration::hours(1),
    }}))
}

/// Service C's API as its binary runs it (`--role api`), B (and A's token endpoint)
/// faked on another socket.
pub struct Stand {
    pub base: String,
    pub wallets: FakeWallets,
    /// C's client of the stand-in, as the API and the worker use it.
    pub client: Wallets,
    _service: TestService,
    pub pool: PgPool,
}

impl Stand {
    pub async fn start() -> Self {
        let wallets = FakeWallets::default();
        let fake = Router::new()
            .route("/api/v1/auth/token", post(fake_token))
            .route("/internal/wallets/{id}", get(fake_wallet))
            .route("/internal/transfers", post(fake_transfer))
            .route("/internal/transfers/batch", post(fake_batch))
            .with_state(wallets.clone());
        let fake_url = serve(fake).await;
        let http = ServiceClient::http_client();
        let tokens = TokenSource::new(
            &fake_url,
            "payment",
            "secret".to_owned().into(),
            http.clone(),
        );
        let client = Wallets::new(ServiceClient::new("wallet", &fake_url, tokens, http));
        let service = TestService::spawn::<Payment>(&[
            "--role=api".to_owned(),
            format!("--wallet-url={fake_url}"),
            format!("--auth-url={fake_url}"),
            "--service-client-secret=secret".to_owned(),
            format!("--redis-url={}", cache::test_url().expose_secret()),
            "--aml-hold-threshold=10000".to_owned(),
            "--max-prefer-wait-secs=1".to_owned(),
            "--max-prefer-waiters=16".to_owned(),
        ])
        .await;
        Self {
            base: service.url(""),
            wallets,
            client,
            pool: service.db.pool.clone(),
            _service: service,
        }
    }

    /// A transfer of `amount` from `payer`'s wallet to `payee`'s, stored as C stores it,
    /// in `status`.
    pub async fn transfer(&self, payer: Uuid, payee: Uuid, amount: &str, status: &str) -> Uuid {
        let (from, to) = (self.wallets.wallet_of(payer), self.wallets.wallet_of(payee));
        self.payment(payer, "transfer", Some(from), Some(to), amount, status)
            .await
    }

    /// A payment stored as C stores it, in `status`.
    pub async fn payment(
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

    /// How many payments C has recorded, whatever their state.
    pub async fn payments_recorded(&self) -> i64 {
        db::scalar(&self.pool, "SELECT count(*) FROM payments").await
    }

    pub async fn status_of(&self, id: Uuid) -> String {
        db::scalar_of(&self.pool, "SELECT status FROM payments WHERE id = $1", id).await
    }

    /// `POST /api/v1/payments/{id}/{action}` as a staff member `who` with `roles`.
    pub async fn decide(&self, who: Uuid, roles: &str, id: Uuid, action: &str) -> (u16, Value) {
        let path = format!("/api/v1/payments/{id}/{action}");
        self.as_staff(who, roles, axum::http::Method::POST, &path)
            .await
    }

    /// A request to C as the staff member `who` with `roles`, as their sidecar forwards it.
    pub async fn as_staff(
        &self,
        who: Uuid,
        roles: &str,
        method: axum::http::Method,
        path: &str,
    ) -> (u16, Value) {
        let response = ServiceClient::http_client()
            .request(method, format!("{}{path}", self.base))
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

    /// `POST /api/v1/payments/{kind}` with `body` as the user `who`, under a new key.
    pub async fn pay(&self, who: Uuid, kind: &str, body: &Value) -> (u16, Value) {
        self.pay_keyed(who, kind, body, &Uuid::now_v7().to_string())
            .await
    }

    /// [`Stand::pay`] under the Idempotency-Key `key`.
    pub async fn pay_keyed(&self, who: Uuid, kind: &str, body: &Value, key: &str) -> (u16, Value) {
        let response = ServiceClient::http_client()
            .post(format!("{}/api/v1/payments/{kind}", self.base))
            .header("x-user-id", who.to_string())
            .header("x-user-email", format!("u-{}@finflow.test", who.simple()))
            .header("x-user-roles", "user")
            // What the token says; C goes by what B answers for the wallet.
            .header("x-kyc-status", "verified")
            .header("x-account-tier", "bronze")
            .header("idempotency-key", key)
            .json(body)
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
