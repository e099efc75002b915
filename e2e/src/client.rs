//! A typed client of the platform that knows only the gateway, like a real one.

use std::time::Duration;

use finflow_platform::testing::Mailbox;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::mail;

/// The password every test user gets.
pub const PASSWORD: &str = "correct horse battery staple";

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    /// The `data` of a success envelope, after checking the status.
    pub fn data(&self, expected: StatusCode) -> &Value {
        assert_eq!(self.status, expected, "{}", self.body);
        assert_eq!(self.body["success"], true, "{}", self.body);
        &self.body["data"]
    }

    /// The error code of a failure envelope, after checking the status.
    pub fn error(&self, expected: StatusCode) -> &str {
        assert_eq!(self.status, expected, "{}", self.body);
        assert_eq!(self.body["success"], false, "{}", self.body);
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

/// A client of the gateway, optionally logged in.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
    /// The platform's mail, where signing up finds its verification token
    /// ([`Client::with_mailbox`]; `Platform::client` sets it).
    pub mailbox: Option<Mailbox>,
}

/// A registered, logged-in user.
#[derive(Clone)]
pub struct User {
    pub client: Client,
    pub id: String,
    pub email: String,
    pub session: Value,
}

impl Client {
    pub fn new(gateway_url: &str) -> Self {
        Self {
            base: gateway_url.to_owned(),
            http: finflow_platform::client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
            token: None,
            mailbox: None,
        }
    }

    /// The same client, reading verification mails from `mailbox` (the launcher's
    /// SMTP sink) when it signs up.
    #[must_use]
    pub fn with_mailbox(&self, mailbox: Mailbox) -> Self {
        Self {
            mailbox: Some(mailbox),
            ..self.clone()
        }
    }

    #[must_use]
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    pub async fn send(&self, mut req: reqwest::RequestBuilder) -> Answer {
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("the gateway answers");
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        let body =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        Answer {
            status,
            body,
            headers,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Answer {
        self.send(self.http.put(self.url(path)).json(&body)).await
    }

    /// Registers and logs in a new user with a unique email under `prefix`.
    pub async fn new_user(&self, prefix: &str) -> User {
        let email = format!("{prefix}-{}@example.com", uuid::Uuid::new_v4().simple());
        self.user_with_email(&email).await
    }

    /// Registers and logs in the user `email`.
    pub async fn user_with_email(&self, email: &str) -> User {
        let id = self.register(email).await;
        self.sign_in(email, &id).await
    }

    /// Registers `email` with [`PASSWORD`] as a person does: signs up (202), takes the
    /// token from the verification mail in the platform's mailbox and verifies the
    /// address; its user id.
    pub async fn register(&self, email: &str) -> String {
        let mailbox = self.mailbox.as_ref().unwrap_or_else(|| {
            panic!(
                "registering {email} needs the platform's mailbox for the verification mail: \
                 make the client with Platform::client() or Client::with_mailbox"
            )
        });
        let since = mail::mark(mailbox);
        let signed_up = self
            .post(
                "/api/v1/auth/register",
                json!({"email": email, "password": PASSWORD, "full_name": "Test User", "phone": "+14155550123"}),
            )
            .await;
        assert_eq!(
            signed_up.data(StatusCode::ACCEPTED)["status"],
            "verification_sent",
            "{}",
            signed_up.body
        );
        let token = mail::verification_token_for(mailbox, email, since).await;
        let verified = self.verify(&token).await;
        verified.data(StatusCode::OK)["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// `POST /api/v1/auth/verify` with `token` and the password every sign-up here
    /// chooses.
    pub async fn verify(&self, token: &str) -> Answer {
        self.post(
            "/api/v1/auth/verify",
            json!({"token": token, "password": PASSWORD}),
        )
        .await
    }

    /// Logs in the registered user `email` (id `id`).
    pub async fn sign_in(&self, email: &str, id: &str) -> User {
        let login = self
            .post(
                "/api/v1/auth/login",
                json!({"email": email, "password": PASSWORD}),
            )
            .await;
        let session = login.data(StatusCode::OK).clone();
        let token = session["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        User {
            client: self.with_token(&token),
            id: id.to_owned(),
            email: email.to_owned(),
            session,
        }
    }
}

impl User {
    /// Submits a well-formed passport of the user's own (approved automatically in a
    /// local platform; E leaves a passport another account holds to a reviewer).
    pub async fn submit_kyc(&self) -> Answer {
        self.submit_passport(&self.passport_number()).await
    }

    /// The number of the user's own passport: `X` and the last eight hex digits of
    /// the id (its random part; a v7 id begins with the time).
    pub fn passport_number(&self) -> String {
        let digits: Vec<char> = self.id.chars().filter(char::is_ascii_hexdigit).collect();
        let tail: String = digits[digits.len().saturating_sub(8)..].iter().collect();
        format!("X{}", tail.to_ascii_uppercase())
    }

    /// Submits a well-formed passport numbered `number`.
    pub async fn submit_passport(&self, number: &str) -> Answer {
        self.client
            .post(
                "/api/v1/kyc/submit",
                json!({"document_type": "passport", "document_number": number,
                       "document_url": "https://documents.example.com/passport.pdf"}),
            )
            .await
    }

    /// Opens a wallet, retrying while KYC_REQUIRED (the verification travels as an
    /// event from E to A) for up to `patience`.
    pub async fn open_wallet(&self, currency: &str, patience: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let a = self
                .client
                .post("/api/v1/wallets", json!({"currency": currency}))
                .await;
            if a.status == StatusCode::CREATED {
                let wallet = a.body["data"].clone();
                let id = wallet["id"].as_str().unwrap_or_default().to_owned();
                self.client
                    .post(&format!("/api/v1/wallets/{id}/activate"), json!({}))
                    .await
                    .data(StatusCode::OK);
                return wallet;
            }
            assert_eq!(a.error(StatusCode::FORBIDDEN), "KYC_REQUIRED");
            assert!(
                tokio::time::Instant::now() < deadline,
                "KYC verification never reached the wallet service"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A verified user with an active wallet in `currency`, opened right after E said
    /// "verified" (E tells A before it answers: no waiting).
    pub async fn with_wallet(self, currency: &str) -> (Self, String) {
        self.submit_kyc().await.data(StatusCode::CREATED);
        let wallet = self.open_wallet(currency, Duration::ZERO).await;
        let id = wallet["id"].as_str().unwrap_or_default().to_owned();
        (self, id)
    }

    /// Posts a payment with an idempotency key, optionally waiting for its outcome.
    pub async fn pay(&self, kind: &str, body: Value, key: &str, wait_secs: Option<u64>) -> Answer {
        let mut req = self
            .client
            .http
            .post(self.client.url(&format!("/api/v1/payments/{kind}")))
            .header("idempotency-key", key)
            .json(&body);
        if let Some(w) = wait_secs {
            req = req.header("prefer", format!("wait={w}"));
        }
        self.client.send(req).await
    }

    /// Posts a payment under a new key that must complete within 20 seconds; its data.
    pub async fn completed(&self, kind: &str, body: Value) -> Value {
        let key = uuid::Uuid::new_v4().to_string();
        let answer = self.pay(kind, body, &key, Some(20)).await;
        let payment = answer.data(StatusCode::OK).clone();
        assert_eq!(payment["status"], "COMPLETED", "{payment}");
        payment
    }

    pub async fn balance(&self, wallet: &str) -> String {
        let a = self
            .client
            .get(&format!("/api/v1/wallets/{wallet}/balance"))
            .await;
        a.data(StatusCode::OK)["balance"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}
