//! B's API on a real socket against real PostgreSQL, with a stand-in for A.
//!
//! A is B's only dependency here, and what B needs of it is small: a service token and
//! `GET /internal/users/{id}` (or `POST /internal/users/lookup` for several). The stand-in refuses what A refuses (no token, an unknown
//! user) and answers what A would for the users a test declares; the real A behind its
//! sidecar is exercised end to end in e2e/.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use finflow_platform::db;
use finflow_platform::testing::TestService;
use finflow_wallet::Wallet;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;
use uuid::Uuid;

const TOKEN: &str = "stand-in-service-token";

/// Users as A would describe them: id to (kyc_status, account_tier).
#[derive(Clone, Default)]
pub struct FakeAuth {
    users: Arc<Mutex<HashMap<Uuid, (String, String)>>>,
    /// The size of each `POST /internal/users/lookup` B made.
    lookups: Arc<Mutex<Vec<usize>>>,
}

impl FakeAuth {
    pub fn set(&self, user: Uuid, kyc_status: &str, tier: &str) {
        self.users
            .lock()
            .unwrap()
            .insert(user, (kyc_status.to_owned(), tier.to_owned()));
    }

    /// How many users each of B's lookups asked for, in order.
    pub fn lookups(&self) -> Vec<usize> {
        self.lookups.lock().unwrap().clone()
    }

    async fn serve(self) -> String {
        type Answer = (StatusCode, axum::Json<Value>);
        fn error(status: StatusCode, code: &str) -> Answer {
            (
                status,
                axum::Json(json!({"success": false, "error": {"code": code, "message": code}})),
            )
        }
        // As A's sidecar: nothing without the service token.
        fn authorized(headers: &HeaderMap) -> Result<(), Answer> {
            if headers.get("authorization").and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {TOKEN}"))
            {
                Ok(())
            } else {
                Err(error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED"))
            }
        }
        async fn token() -> axum::Json<Value> {
            axum::Json(json!({"success": true, "data": {
                "access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600,
                "expires_at": chrono::Utc::now() + chrono::Duration::hours(1)}}))
        }
        async fn user(
            State(auth): State<FakeAuth>,
            headers: HeaderMap,
            Path(id): Path<Uuid>,
        ) -> (StatusCode, axum::Json<Value>) {
            if let Err(refused) = authorized(&headers) {
                return refused;
            }
            match auth.users.lock().unwrap().get(&id) {
                Some((kyc, tier)) => (
                    StatusCode::OK,
                    axum::Json(json!({"success": true, "data": {
                        "id": id, "kyc_status": kyc, "account_tier": tier}})),
                ),
                None => error(StatusCode::NOT_FOUND, "NOT_FOUND"),
            }
        }
        // `POST /internal/users/lookup`: as A, 1 to 100 ids, the known ones answered.
        async fn lookup(
            State(auth): State<FakeAuth>,
            headers: HeaderMap,
            axum::Json(body): axum::Json<Value>,
        ) -> (StatusCode, axum::Json<Value>) {
            if let Err(refused) = authorized(&headers) {
                return refused;
            }
            let Some(ids) = body["user_ids"]
                .as_array()
                .filter(|ids| (1..=100).contains(&ids.len()))
            else {
                return error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
            };
            auth.lookups.lock().unwrap().push(ids.len());
            let users = auth.users.lock().unwrap();
            let found: Vec<Value> = ids
                .iter()
                .filter_map(|id| id.as_str().and_then(|id| id.parse::<Uuid>().ok()))
                .filter_map(|id| {
                    users.get(&id).map(
                        |(kyc, tier)| json!({"id": id, "kyc_status": kyc, "account_tier": tier}),
                    )
                })
                .collect();
            (
                StatusCode::OK,
                axum::Json(json!({"success": true, "data": {"users": found}})),
            )
        }
        let app = Router::new()
            .route("/api/v1/auth/token", post(token))
            .route("/internal/users/lookup", post(lookup))
            .route("/internal/users/{id}", get(user))
            .with_state(self);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        base
    }
}

/// Service B as its binary runs, A faked on another socket.
pub struct Stand {
    pub base: String,
    pub pool: PgPool,
    pub auth: FakeAuth,
    _service: TestService,
}

impl Stand {
    /// Bronze may send 1000 per payment and 5000 a day, in USD.
    pub async fn start() -> Self {
        let auth = FakeAuth::default();
        let auth_url = auth.clone().serve().await;
        let service = TestService::spawn::<Wallet>(&[
            format!("--auth-url={auth_url}"),
            "--service-client-secret=secret".to_owned(),
            "--tier-limits=bronze=1000/5000,silver=10000/50000,gold=100000/500000".to_owned(),
        ])
        .await;
        Self {
            base: service.url(""),
            pool: service.db.pool.clone(),
            auth,
            _service: service,
        }
    }

    /// An active USD wallet of `owner`.
    pub async fn wallet(&self, owner: Uuid) -> Uuid {
        self.wallet_in(owner, "USD").await
    }

    /// An active wallet of `owner` in `currency`.
    pub async fn wallet_in(&self, owner: Uuid, currency: &str) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO wallets (id, user_id, kind, currency, status) VALUES ($1, $2, 'user', $3, 'active')",
        )
        .bind(id)
        .bind(owner)
        .bind(currency)
        .execute(&self.pool)
        .await
        .unwrap();
        id
    }

    /// `wallet`'s row locked, as another transfer applying holds it, until the
    /// transaction is committed or dropped.
    pub async fn hold_wallet(&self, wallet: Uuid) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut holder = self.pool.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE")
            .bind(wallet)
            .execute(&mut *holder)
            .await
            .unwrap();
        holder
    }

    pub async fn status_of(&self, id: Uuid) -> String {
        db::scalar_of(&self.pool, "SELECT status FROM wallets WHERE id = $1", id).await
    }

    pub async fn balance(&self, id: Uuid) -> String {
        db::scalar_of(
            &self.pool,
            "SELECT balance::text FROM wallets WHERE id = $1",
            id,
        )
        .await
    }

    /// A request to B as the user `who` with `roles`, as their sidecar would send it.
    pub async fn as_user(
        &self,
        method: reqwest::Method,
        path: &str,
        who: Uuid,
        roles: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = finflow_platform::client::default_client()
            .request(method, format!("{}{path}", self.base))
            .header("x-user-id", who.to_string())
            .header("x-user-email", format!("u-{}@finflow.test", who.simple()))
            .header("x-user-roles", roles)
            // What a token says; B asks A instead.
            .header("x-kyc-status", "verified")
            .header("x-account-tier", "bronze");
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let code = response.status().as_u16();
        (code, response.json().await.unwrap())
    }

    /// `POST /api/v1/wallets` as `owner`: a wallet in `currency`, pending until its
    /// owner activates it.
    pub async fn open(&self, owner: Uuid, currency: &str) -> (u16, Value) {
        self.as_user(
            reqwest::Method::POST,
            "/api/v1/wallets",
            owner,
            "user",
            Some(&json!({ "currency": currency })),
        )
        .await
    }

    /// `PUT /api/v1/wallets/{id}/status` as `who` with `roles`.
    pub async fn set(&self, who: Uuid, roles: &str, id: Uuid, status: &str) -> (u16, Value) {
        self.as_user(
            reqwest::Method::PUT,
            &format!("/api/v1/wallets/{id}/status"),
            who,
            roles,
            Some(&json!({ "status": status })),
        )
        .await
    }

    /// A request to B as service `service` (its sidecar's headers for a service token).
    pub async fn as_service(
        &self,
        service: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = finflow_platform::client::default_client()
            .request(method, format!("{}{path}", self.base))
            .header("x-user-id", format!("service:{service}"))
            .header("x-user-roles", format!("service:{service}"));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let code = response.status().as_u16();
        (code, response.json().await.unwrap())
    }

    /// `POST /internal/transfers` with the token of `service`.
    pub async fn internal_transfer(&self, service: &str, body: &Value) -> (u16, Value) {
        self.as_service(
            service,
            reqwest::Method::POST,
            "/internal/transfers",
            Some(body),
        )
        .await
    }

    /// C's deposit of `amount` `currency` into `wallet`.
    pub async fn deposit(&self, wallet: Uuid, amount: &str, currency: &str) -> (u16, Value) {
        self.internal_transfer(
            "payment",
            &json!({"transfer_id": Uuid::now_v7(), "kind": "deposit",
                "to_wallet_id": wallet, "amount": amount, "currency": currency}),
        )
        .await
    }

    /// C's transfer of `amount` `currency` from `from` to `to`.
    pub async fn send(&self, from: Uuid, to: Uuid, amount: &str, currency: &str) -> (u16, Value) {
        self.internal_transfer(
            "payment",
            &json!({"transfer_id": Uuid::now_v7(), "kind": "transfer",
                "from_wallet_id": from, "to_wallet_id": to, "amount": amount, "currency": currency}),
        )
        .await
    }
}

pub fn assert_forbidden((status, body): (u16, Value), reason: &str) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "FORBIDDEN", "{body}");
    assert_eq!(body["error"]["details"]["reason"], reason, "{body}");
}
