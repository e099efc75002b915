//! Service A on a real socket against real PostgreSQL, Redis and RabbitMQ. Requests
//! carry the identity headers a sidecar would set; the sidecar itself is tested in its
//! own crate and the whole chain in e2e.

use std::time::Duration;

use finflow_auth::Auth;
use finflow_platform::db;
use finflow_platform::events::{self, Event, Publisher, outbox, types};
use finflow_platform::testing::TestService;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";

/// A on a fresh database and vhost, with a key directory of its own, and the mail D
/// would be sent.
#[derive(derive_more::Deref)]
struct TestAuth {
    #[deref]
    service: TestService,
    keys_dir: std::path::PathBuf,
    mail: Mail,
}

/// The queue D's mail consumer would read, bound before A can publish: the only place
/// a mailed token is left once A's relay has published it.
struct Mail {
    channel: lapin::Channel,
    /// The type and data of every event carrying a token taken so far, in order, its
    /// token opened as D opens it; and the token as it crossed the bus.
    taken: tokio::sync::Mutex<Vec<(String, Value, String)>>,
    _connection: lapin::Connection,
}

impl Mail {
    const QUEUE: &str = "auth-test.mail";
    /// The events whose mail carries a token.
    const TYPES: [&str; 2] = [
        types::USER_VERIFICATION_REQUESTED,
        types::USER_PASSWORD_RESET_REQUESTED,
    ];

    async fn bind(vhost: &events::TestVhost) -> Self {
        let connection = vhost.broker().connect("auth-test").await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let spec = events::QueueSpec::new(Self::QUEUE, &Self::TYPES);
        events::declare_queue(&channel, &spec).await.unwrap();
        Self {
            channel,
            taken: Default::default(),
            _connection: connection,
        }
    }

    /// The data of every `event_type` event A has published so far: waits until A's
    /// outbox has no token-carrying event left to publish, then takes what the queue
    /// holds.
    async fn sent(&self, pool: &sqlx::PgPool, event_type: &str) -> Vec<Value> {
        let mut taken = self.taken.lock().await;
        for _ in 0..400 {
            let unpublished: i64 = db::scalar_of(
                pool,
                "SELECT count(*) FROM outbox WHERE event_type = ANY($1) AND published_at IS NULL",
                &Self::TYPES[..],
            )
            .await;
            if unpublished == 0 {
                let get = lapin::options::BasicGetOptions { no_ack: true };
                while let Some(message) = self
                    .channel
                    .basic_get(Self::QUEUE.into(), get)
                    .await
                    .unwrap()
                {
                    let bundle = events::decode(&message.delivery.data).unwrap();
                    // Opened as D opens them: on the bus they are sealed.
                    taken.extend(bundle.into_iter().map(|e| {
                        let seen = e.data["token"].as_str().unwrap_or_default().to_owned();
                        let data = opened(&e.event_type, e.data);
                        (e.event_type, data, seen)
                    }));
                }
                return taken
                    .iter()
                    .filter(|(t, ..)| t == event_type)
                    .map(|(_, data, _)| data.clone())
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("A's outbox still holds unpublished events that carry a token");
    }
}

/// The secret A and D share in these tests.
const MAIL_SEAL_KEY: &str = "a-secret-only-a-and-d-are-given-0123";

/// `data` of a token-carrying event with its token opened, as D opens it; panics if it
/// is not sealed for the event's addressee.
fn opened(event_type: &str, mut data: Value) -> Value {
    let key = finflow_contracts::sealed::SealKey::parse(MAIL_SEAL_KEY).unwrap();
    let to = finflow_contracts::sealed::Addressee {
        event_type,
        user_id: data["user_id"].as_str().unwrap().parse().unwrap(),
        email: data["email"].as_str().unwrap(),
    };
    let sealed = data["token"].as_str().unwrap();
    let token = key
        .open(sealed, &to)
        .unwrap_or_else(|e| panic!("{event_type}'s token: {e}"));
    data["token"] = Value::String(token);
    data
}

impl Mail {
    /// The tokens of every `event_type` event as they crossed the bus, oldest first.
    async fn seen(&self, pool: &sqlx::PgPool, event_type: &str) -> Vec<String> {
        let _ = self.sent(pool, event_type).await;
        let taken = self.taken.lock().await;
        taken
            .iter()
            .filter(|(t, ..)| t == event_type)
            .map(|(.., seen)| seen.clone())
            .collect()
    }
}

impl TestAuth {
    async fn spawn(extra: &[&str]) -> Self {
        let keys_dir = std::env::temp_dir().join(format!("finflow-auth-test-{}", Uuid::new_v4()));
        let redis = finflow_platform::cache::test_url();
        let mut args = vec![
            "--redis-url".to_owned(),
            secrecy::ExposeSecret::expose_secret(&redis).to_owned(),
            "--jwt-keys-dir".into(),
            keys_dir.display().to_string(),
            "--jwt-keys-generate".into(),
            "--service-clients".into(),
            "payment=payment-secret-0123456789".into(),
            "--mail-seal-key".into(),
            MAIL_SEAL_KEY.into(),
        ];
        // Every test client is 127.0.0.1: no per-address limit unless the test sets one.
        for limit in [
            "--login-limit-per-address",
            "--register-limit-per-address",
            "--refresh-limit-per-address",
            "--service-token-failures-per-address",
        ] {
            if !extra.contains(&limit) {
                args.extend([limit.into(), "100000".into()]);
            }
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let db = db::TestDb::new(Some(&finflow_auth::MIGRATIONS)).await;
        let vhost = events::TestVhost::new();
        let mail = Mail::bind(&vhost).await;
        Self {
            service: TestService::start::<Auth>(db, vhost, &args).await,
            keys_dir,
            mail,
        }
    }

    async fn post(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> (StatusCode, Value) {
        self.service.post(path, &body, headers).await
    }

    /// A sign-up with `password` and `full_name`: its status and body.
    async fn sign_up(&self, email: &str, password: &str, full_name: &str) -> (StatusCode, Value) {
        self.post(
            "/api/v1/auth/register",
            json!({"email": email, "password": password, "full_name": full_name, "phone": "+44 20 7946 0958"}),
            &[],
        )
        .await
    }

    /// A sign-up of a new address from the client address `ip` (as a sidecar names it):
    /// its status and `Retry-After`.
    async fn sign_up_from(&self, ip: &str) -> (StatusCode, Option<reqwest::header::HeaderValue>) {
        let r = self
            .http
            .post(self.url("/api/v1/auth/register"))
            .header("x-real-ip", ip)
            .json(
                &json!({"email": email(), "password": "correct horse battery",
                          "full_name": "Test User", "phone": "+14155550123"}),
            )
            .send()
            .await
            .unwrap();
        (r.status(), r.headers().get("retry-after").cloned())
    }

    /// The token of the newest `user.verification_requested` for `email`, as D would
    /// be sent it (no D runs here to mail it).
    async fn verification_token(&self, email: &str) -> String {
        let email = email.trim().to_lowercase();
        let requested = self
            .mail
            .sent(&self.db.pool, types::USER_VERIFICATION_REQUESTED)
            .await;
        let newest = requested
            .iter()
            .rev()
            .find(|r| r["email"] == email.as_str());
        let token = newest.and_then(|r| r["token"].as_str());
        token
            .unwrap_or_else(|| panic!("no user.verification_requested for {email}"))
            .to_owned()
    }

    /// Verifies with `token` and [`PASSWORD`], the password of every sign-up here but
    /// the squatters'.
    async fn verify(&self, token: &str) -> (StatusCode, Value) {
        self.verify_with(token, PASSWORD).await
    }

    async fn verify_with(&self, token: &str, password: &str) -> (StatusCode, Value) {
        self.post(
            "/api/v1/auth/verify",
            json!({"token": token, "password": password}),
            &[],
        )
        .await
    }

    /// Signs `email` up with [`PASSWORD`] and verifies it with the mailed token: the user.
    async fn register(&self, email: &str) -> Value {
        let (status, body) = self.sign_up(email, PASSWORD, "Ada Lovelace").await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let (status, body) = self.verify(&self.verification_token(email).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"].clone()
    }

    async fn login_with(&self, email: &str, password: &str) -> (StatusCode, Value) {
        self.post(
            "/api/v1/auth/login",
            json!({"email": email, "password": password}),
            &[],
        )
        .await
    }

    async fn login(&self, email: &str) -> Value {
        let (status, body) = self.login_with(email, PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"].clone()
    }

    /// The outbox's events of `event_type`, oldest first (their data).
    async fn events(&self, event_type: &str) -> Vec<Value> {
        let written = outbox::written(&self.db.pool, event_type).await;
        written.into_iter().map(|e| e["data"].clone()).collect()
    }

    async fn refresh(&self, token: &Value) -> (StatusCode, Value) {
        self.post("/api/v1/auth/refresh", json!({"refresh_token": token}), &[])
            .await
    }

    async fn logout(&self, token: &Value) -> (StatusCode, Value) {
        self.post("/api/v1/auth/logout", json!({"refresh_token": token}), &[])
            .await
    }

    async fn decode(&self, token: &str) -> Value {
        let (_, jwks) = self.get("/.well-known/jwks.json", &[]).await;
        let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .expect("the token's kid is published");
        let key = DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&["finflow-auth"]);
        validation.set_audience(&["finflow"]);
        jsonwebtoken::decode::<Value>(token, &key, &validation)
            .unwrap()
            .claims
    }
}

impl Drop for TestAuth {
    fn drop(&mut self) {
        self.service.stop();
        let _ = std::fs::remove_dir_all(&self.keys_dir);
    }
}

fn email() -> String {
    format!("ada-{}@example.com", Uuid::new_v4().simple())
}

/// What every sign-up answers, whatever the address: `email` as compared, and that a
/// mail is on its way.
fn accepted(email: &str) -> Value {
    json!({"success": true, "data": {"email": email, "status": "verification_sent"}})
}

#[tokio::test]
async fn signing_up_mails_a_token_and_only_verifying_it_creates_a_pending_bronze_user() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    let (status, body) = app
        .sign_up(
            &format!("  {}", address.to_uppercase()),
            PASSWORD,
            "Ada Lovelace",
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, accepted(&address), "emails are compared lower-cased");
    assert!(app.events("user.created").await.is_empty(), "no user yet");
    let requested = app
        .mail
        .sent(&app.db.pool, types::USER_VERIFICATION_REQUESTED)
        .await;
    assert_eq!(requested.len(), 1, "{requested:?}");
    let request = &requested[0];
    assert_eq!(request["email"], address);
    assert_eq!(request["full_name"], "Ada Lovelace");
    assert!(request["expires_at"].is_string(), "{request}");
    let token = request["token"].as_str().unwrap();
    assert_eq!(token.len(), 43, "32 bytes, URL-safe base64: {token}");
    // A's outbox kept the token only until the broker had it: a reader of A's database,
    // or of a backup, cannot verify this sign-up in the mailbox owner's place.
    let kept = app.events("user.verification_requested").await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["email"], address);
    assert!(
        kept[0].get("token").is_none(),
        "the token is still in the outbox: {kept:?}"
    );
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM email_verifications")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(
        stored,
        [finflow_auth::tokens::hash_opaque_token(token)],
        "only the token's hash is stored"
    );

    let (status, body) = app.verify(token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let user = &body["data"];
    assert_eq!(user["id"], request["user_id"]);
    assert_eq!(user["email"], address, "emails are stored lower-cased");
    assert_eq!(user["kyc_status"], "pending");
    assert_eq!(user["account_tier"], "bronze");
    assert_eq!(user["roles"], json!(["user"]));
    assert_eq!(user["phone"], "+442079460958");
    assert!(user.get("password_hash").is_none());

    let created = app.events("user.created").await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["user_id"], user["id"]);
    assert_eq!(created[0]["email"], address);
    assert_eq!(created[0]["full_name"], "Ada Lovelace");
    let source: String = db::scalar(
        &app.db.pool,
        "SELECT payload->>'source' FROM outbox WHERE event_type = 'user.created'",
    )
    .await;
    assert_eq!(source, "auth");
    app.login(&address).await;
}

#[tokio::test]
async fn registering_a_verified_email_answers_as_a_new_one_does_and_emits_registration_repeated() {
    let app = TestAuth::spawn(&[]).await;
    let (taken, fresh) = (email(), email());
    let owner = app.register(&taken).await;

    let attacker_password = "attacker's own password";
    let (taken_status, taken_body) = app.sign_up(&taken, attacker_password, "Mallory").await;
    let (fresh_status, fresh_body) = app.sign_up(&fresh, attacker_password, "Mallory").await;
    assert_eq!(taken_status, StatusCode::ACCEPTED, "{taken_body}");
    assert_eq!(taken_status, fresh_status);
    assert_eq!(taken_body, accepted(&taken));
    assert_eq!(fresh_body, accepted(&fresh));
    let mut same = taken_body.clone();
    same["data"]["email"] = fresh_body["data"]["email"].clone();
    assert_eq!(same, fresh_body, "nothing but the address differs");

    let repeated = app.events("user.registration_repeated").await;
    assert_eq!(
        repeated,
        [json!({"user_id": owner["id"], "email": taken})],
        "the owner is told, and the event carries no token"
    );
    let requested = app
        .mail
        .sent(&app.db.pool, types::USER_VERIFICATION_REQUESTED)
        .await;
    assert_eq!(
        requested
            .iter()
            .filter(|r| r["user_id"] == owner["id"])
            .count(),
        1,
        "no new token for the verified account, only the one it was verified with: {requested:?}"
    );
    // The account is as it was: its password, its name.
    let (status, _) = app.login_with(&taken, attacker_password).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let session = app.login(&taken).await;
    assert_eq!(session["user"]["full_name"], "Ada Lovelace");
    assert_eq!(
        app.events("user.created").await.len(),
        1,
        "only the owner's"
    );
}

/// Anyone could have FinFlow mail any address as often as they could sign up: ten
/// times a minute from each client address, more from many.
#[tokio::test]
async fn an_address_is_mailed_at_most_three_sign_up_mails_an_hour_from_any_number_of_clients() {
    let app = TestAuth::spawn(&[]).await;
    let (verified, unverified) = (email(), email());
    let owner = app.register(&verified).await;
    for address in [&verified, &unverified] {
        for _ in 0..5 {
            let sign_up = json!({"email": address, "password": "a squatter's password",
                "full_name": "Mallory", "phone": "+14155550123"});
            let ip = random_ip();
            let (status, body) = app
                .post("/api/v1/auth/register", sign_up, &[("x-real-ip", &ip)])
                .await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            assert_eq!(body, accepted(address), "the same answer, mailed or not");
        }
    }
    let mailed =
        |events: Vec<Value>, address: &str| events.iter().filter(|e| e["email"] == address).count();
    let repeated = app.events(types::USER_REGISTRATION_REPEATED).await;
    let requested = app.events(types::USER_VERIFICATION_REQUESTED).await;
    assert_eq!(
        mailed(requested.clone(), &verified) + mailed(repeated, &verified),
        3,
        "its own verification, then two notices"
    );
    assert_eq!(mailed(requested, &unverified), 3);
    let tokens: i64 = db::scalar_of(
        &app.db.pool,
        "SELECT count(*) FROM email_verifications v JOIN users u ON u.id = v.user_id \
         WHERE u.email = $1",
        unverified.as_str(),
    )
    .await;
    assert_eq!(tokens, 3, "no token issued that no mail carries");
    assert_eq!(app.login(&verified).await["user"]["id"], owner["id"]);
}

#[tokio::test]
async fn an_unverified_account_cannot_log_in_and_gets_the_same_401_as_a_wrong_password() {
    let app = TestAuth::spawn(&[]).await;
    let (verified, unverified) = (email(), email());
    app.register(&verified).await;
    let (status, _) = app.sign_up(&unverified, PASSWORD, "Ada Lovelace").await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let (s1, wrong_password) = app.login_with(&verified, "wrong password!").await;
    let (s2, not_verified) = app.login_with(&unverified, PASSWORD).await;
    let (s3, unknown) = app.login_with(&email(), PASSWORD).await;
    assert_eq!(
        (s1, s2, s3),
        (
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED
        )
    );
    assert_eq!(
        not_verified, wrong_password,
        "no way to tell an unverified account"
    );
    assert_eq!(unknown, wrong_password);

    let (status, body) = app.verify(&app.verification_token(&unverified).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.login(&unverified).await;
}

#[tokio::test]
async fn a_verification_token_verifies_once() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    let (status, _) = app.sign_up(&address, PASSWORD, "Ada Lovelace").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let token = app.verification_token(&address).await;
    let (status, body) = app.verify(&token).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, again) = app.verify(&token).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{again}");
    assert_eq!(again["success"], false);
    assert_eq!(again["error"]["code"], "NOT_FOUND");
    assert_eq!(again["error"]["details"]["reason"], "invalid_token");
    let (status, made_up) = app
        .verify("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        made_up, again,
        "a used token and an unknown one get one answer"
    );
    assert_eq!(app.events("user.created").await.len(), 1, "created once");
    app.login(&address).await;
}

#[tokio::test]
async fn an_expired_verification_token_is_refused() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    let (status, _) = app.sign_up(&address, PASSWORD, "Ada Lovelace").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let token = app.verification_token(&address).await;
    sqlx::query("UPDATE email_verifications SET expires_at = now() - interval '1 second'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let (status, body) = app.verify(&token).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["details"]["reason"], "invalid_token");
    let (status, body) = app.verify("not a token").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["details"]["field"], "token");
    let (status, _) = app.login_with(&address, PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "still unverified");
    assert!(app.events("user.created").await.is_empty());

    // Signing up again mails a new token, which works.
    let (status, _) = app.sign_up(&address, PASSWORD, "Ada Lovelace").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = app.verify(&app.verification_token(&address).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn another_sign_up_of_an_unverified_address_before_or_after_the_owners_cannot_take_it() {
    let app = TestAuth::spawn(&[]).await;
    let owner = (PASSWORD, "Ada Lovelace");
    let other = ("the other sign-up's password", "Mallory");
    for owner_first in [false, true] {
        let address = email();
        let mut tokens = Vec::new();
        for (password, name) in if owner_first {
            [owner, other]
        } else {
            [other, owner]
        } {
            let (status, body) = app.sign_up(&address, password, name).await;
            assert_eq!(status, StatusCode::ACCEPTED);
            assert_eq!(body, accepted(&address), "the same answer either way");
            tokens.push(app.verification_token(&address).await);
        }
        let (owner_token, other_token) = if owner_first {
            (&tokens[0], &tokens[1])
        } else {
            (&tokens[1], &tokens[0])
        };

        // Both mails reach the owner (the other sign-up never sees a token). The other
        // one's, followed with the owner's password, is refused and verifies nothing.
        let (status, body) = app.verify(other_token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{body}");
        let (status, _) = app.login_with(&address, other.0).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "owner first: {owner_first}"
        );
        // The owner's own still works, with their details.
        let (status, body) = app.verify(owner_token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["data"]["full_name"], owner.1);
        let (status, body) = app.verify_with(other_token, other.0).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "revoked: {body}");
        let (status, _) = app.login_with(&address, other.0).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "owner first: {owner_first}"
        );
        app.login(&address).await;
    }
}

#[tokio::test]
async fn verifying_without_a_password_is_a_400_naming_it() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    let (status, _) = app.sign_up(&address, PASSWORD, "Ada Lovelace").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let token = app.verification_token(&address).await;
    let (status, body) = app
        .post("/api/v1/auth/verify", json!({ "token": token }), &[])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR", "{body}");
    assert!(body.to_string().contains("password"), "{body}");
    let (status, body) = app.verify(&token).await;
    assert_eq!(status, StatusCode::OK, "the token is still usable: {body}");
}

#[tokio::test]
async fn each_invalid_registration_field_is_named_in_a_400() {
    let app = TestAuth::spawn(&[]).await;
    let valid = json!({"email": email(), "password": PASSWORD, "full_name": "Ada", "phone": "+14155550123"});
    for (field, bad) in [
        ("email", json!("not-an-email")),
        ("password", json!("short")),
        ("full_name", json!("   ")),
        ("phone", json!("0123")),
    ] {
        let mut body = valid.clone();
        body[field] = bad;
        let (status, answer) = app.post("/api/v1/auth/register", body, &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {answer}");
        assert_eq!(answer["error"]["code"], "VALIDATION_ERROR");
        assert_eq!(answer["error"]["details"]["field"], field);
    }
    let mut extra = valid.clone();
    extra["is_admin"] = json!(true);
    let (status, _) = app.post("/api/v1/auth/register", extra, &[]).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unknown fields are refused"
    );
}

#[tokio::test]
async fn login_returns_an_eddsa_token_with_the_contract_claims() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    let user = app.register(&address).await;
    let session = app.login(&address).await;
    assert_eq!(session["token_type"], "Bearer");
    assert_eq!(session["expires_in"], 900);
    assert_eq!(session["user"]["id"], user["id"]);
    let claims = app.decode(session["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["sub"], user["id"]);
    assert_eq!(claims["email"], address);
    assert_eq!(claims["roles"], json!(["user"]));
    assert_eq!(claims["kyc_status"], "pending");
    assert_eq!(claims["tier"], "bronze");
    for claim in ["iat", "nbf", "exp", "jti"] {
        assert!(claims.get(claim).is_some(), "missing {claim}");
    }
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_email_get_the_same_401() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    app.register(&address).await;
    let (s1, b1) = app
        .post(
            "/api/v1/auth/login",
            json!({"email": address, "password": "wrong password!"}),
            &[],
        )
        .await;
    let (s2, b2) = app
        .post(
            "/api/v1/auth/login",
            json!({"email": email(), "password": PASSWORD}),
            &[],
        )
        .await;
    assert_eq!(
        (s1, s2),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(b1, b2, "no way to tell which emails exist");
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_revokes_its_whole_family() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    app.register(&address).await;
    let first = app.login(&address).await;

    let (status, second) = app.refresh(&first["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let second = &second["data"];
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_ne!(second["access_token"], first["access_token"]);

    // The first token again: a replay. It fails, and so does the legitimate successor.
    let (status, body) = app.refresh(&first["refresh_token"]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = app.refresh(&second["refresh_token"]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the family is revoked");

    // A new login starts a new family that works.
    let third = app.login(&address).await;
    let (status, _) = app.refresh(&third["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK);
}

/// A refresh token taken from a device its owner no longer uses, refreshed before each
/// expiry, kept the account for good: each rotation gave the next token a fresh 30 days.
#[tokio::test]
async fn a_session_refreshed_again_and_again_ends_its_maximum_age_after_its_login() {
    let app = TestAuth::spawn(&["--session-max-age-secs", "3600"]).await;
    let address = email();
    let user = app.register(&address).await;
    let before = chrono::Utc::now();
    let login = app.login(&address).await;
    let ends: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(login["refresh_expires_at"].clone()).unwrap();
    assert!(
        ends <= before + chrono::Duration::seconds(3601),
        "the token outlives the session: {login}"
    );

    let (status, rotated) = app.refresh(&login["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(
        rotated["data"]["refresh_expires_at"], login["refresh_expires_at"],
        "a rotation does not move the session's end"
    );

    // The hour has passed (the session's tokens written, and expiring, an hour earlier).
    sqlx::query(
        "UPDATE refresh_tokens SET created_at = created_at - interval '3601 seconds', \
           expires_at = expires_at - interval '3601 seconds' \
         WHERE user_id = $1",
    )
    .bind(user["id"].as_str().unwrap().parse::<Uuid>().unwrap())
    .execute(&app.db.pool)
    .await
    .unwrap();
    let (status, body) = app.refresh(&rotated["data"]["refresh_token"]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("log in again"),
        "{body}"
    );

    // Logging in again is a new session of its own hour.
    let again = app.login(&address).await;
    let (status, body) = app.refresh(&again["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A refresh held its transaction's connection while it took another from the pool to
/// read the user: as many refreshes at once as the pool has connections took them all
/// and waited for one more, so A stopped answering anything until they timed out.
#[tokio::test]
async fn more_refreshes_at_once_than_the_pool_has_connections_all_succeed() {
    let app = TestAuth::spawn(&["--database-max-connections", "2"]).await;
    let address = email();
    app.register(&address).await;
    let mut sessions = Vec::new();
    for _ in 0..6 {
        sessions.push(app.login(&address).await);
    }
    let answers = futures_util::future::join_all(
        sessions
            .iter()
            .map(|session| app.refresh(&session["refresh_token"])),
    )
    .await;
    for (status, body) in answers {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// A logout while a thief's rotation of the same session is writing its next token:
/// the logout's UPDATE could not see that uncommitted token, and used to leave it live.
/// Here the test's transaction is the rotation caught in the act, holding the account's
/// sessions as a rotation does: the logout waits for it, then ends the token it wrote.
#[tokio::test]
async fn a_logout_during_a_rotation_also_ends_the_token_the_rotation_writes() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    app.register(&address).await;
    let session = app.login(&address).await;
    let current = session["refresh_token"].as_str().unwrap();
    let next = format!("{current}-next");

    let mut rotation = app.db.pool.begin().await.unwrap();
    let owner = Uuid::parse_str(session["user"]["id"].as_str().unwrap()).unwrap();
    finflow_auth::account::hold_sessions(&mut rotation, owner)
        .await
        .unwrap();
    let (family, user): (Uuid, Uuid) = sqlx::query_as(
        "SELECT family_id, user_id FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(finflow_auth::tokens::hash_opaque_token(current))
    .fetch_one(&mut *rotation)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at) \
         VALUES ($1, $2, $3, $4, now() + interval '1 day')",
    )
    .bind(Uuid::now_v7())
    .bind(family)
    .bind(user)
    .bind(finflow_auth::tokens::hash_opaque_token(&next))
    .execute(&mut *rotation)
    .await
    .unwrap();

    let logout = app.logout(&session["refresh_token"]);
    let commit = async {
        db::until_waiting_for_locks(&app.db.pool, 1).await;
        rotation.commit().await.unwrap();
    };
    let ((status, body), ()) = tokio::join!(logout, commit);
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = app.refresh(&json!(next)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the rotation's token outlived the logout: {body}"
    );
}

/// A replayed refresh token revokes its family while signing out everywhere revokes all
/// of the user's tokens. Each used to lock a token and then wait for one the other held,
/// and PostgreSQL broke the cycle by failing one of them: the replay answered 500, or
/// the sign-out did not happen. The test's transaction is a sign-out everywhere caught
/// after it took the account's sessions and the newest token; the replay comes then.
#[tokio::test]
async fn a_replayed_refresh_token_and_signing_out_everywhere_at_once_both_finish() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    let user = app.register(&address).await;
    let user = Uuid::parse_str(user["id"].as_str().unwrap()).unwrap();
    let first = app.login(&address).await;
    let (status, second) = app.refresh(&first["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let newest = second["data"]["refresh_token"].as_str().unwrap();

    let mut sign_out = app.db.pool.begin().await.unwrap();
    finflow_auth::account::hold_sessions(&mut sign_out, user)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE")
        .bind(finflow_auth::tokens::hash_opaque_token(newest))
        .execute(&mut *sign_out)
        .await
        .unwrap();

    let replay = app.refresh(&first["refresh_token"]);
    let finish = async {
        db::until_waiting_for_locks(&app.db.pool, 1).await;
        let ended = finflow_auth::account::end_sessions(&mut sign_out, user)
            .await
            .expect("the sign-out failed");
        sign_out.commit().await.unwrap();
        ended
    };
    let ((status, body), ended) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(replay, finish)
    })
    .await
    .expect("the replay or the sign-out never finished");
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(ended, 1, "the one session that could refresh");
    let (status, _) = app.refresh(&json!(newest)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn logout_revokes_the_session() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    app.register(&address).await;
    let session = app.login(&address).await;
    let (status, body) = app.logout(&session["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = app.refresh(&session["refresh_token"]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn users_me_reads_and_updates_the_caller() {
    let app = TestAuth::spawn(&[]).await;
    let user = app.register(&email()).await;
    let id = user["id"].as_str().unwrap();
    let (status, body) = app.get("/api/v1/users/me", &[("x-user-id", id)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["id"], id);

    let r = app
        .http
        .put(app.url("/api/v1/users/me"))
        .header("x-user-id", id)
        .json(&json!({"full_name": "Ada King", "phone": "+14155550199"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"]["full_name"], "Ada King");
    assert_eq!(body["data"]["phone"], "+14155550199");

    let (status, _) = app.get("/api/v1/users/me", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_kyc_decision_published_on_the_bus_changes_nothing() {
    let app = TestAuth::spawn(&[]).await;
    let user = app.register(&email()).await;
    let id = user["id"].as_str().unwrap();
    // Whoever holds the broker's credentials (every service connects as one user)
    // publishes a decision as if E had made it.
    let conn = app.vhost.broker().connect("forger").await.unwrap();
    let publisher = Publisher::new(&conn).await.unwrap();
    let event = Event::new(
        "kyc",
        types::USER_KYC_UPDATED,
        &json!({"user_id": id, "kyc_status": "verified", "submission_id": Uuid::now_v7(),
            "decided_at": chrono::Utc::now()}),
    )
    .unwrap();
    // A's queue, declared and bound as A declares it, so the event is not unroutable.
    let channel = conn.create_channel().await.unwrap();
    events::declare_queue(&channel, &finflow_auth::consumers::kyc_queue())
        .await
        .unwrap();
    publisher.publish(&event, Default::default()).await.unwrap();
    let mut consumed: i64 = 0;
    for _ in 0..300 {
        consumed = db::scalar(&app.db.pool, "SELECT count(*) FROM processed_events").await;
        if consumed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(consumed, 1, "A took the event off its queue");
    let (_, body) = app
        .get(
            &format!("/internal/users/{id}"),
            &[
                ("x-user-id", "service:wallet"),
                ("x-user-roles", "service:wallet"),
            ],
        )
        .await;
    assert_eq!(
        body["data"]["kyc_status"], "pending",
        "B would let a forged verification move money: {body}"
    );
}

#[tokio::test]
async fn service_tokens_need_valid_client_credentials_and_open_internal_routes_only_to_services() {
    let app = TestAuth::spawn(&[]).await;
    let (status, body) = app
        .post(
            "/api/v1/auth/token",
            json!({"grant_type": "client_credentials", "client_id": "payment", "client_secret": "payment-secret-0123456789"}),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claims = app
        .decode(body["data"]["access_token"].as_str().unwrap())
        .await;
    assert_eq!(claims["sub"], "service:payment");
    assert_eq!(claims["roles"], json!(["service:payment"]));

    let (status, _) = app
        .post(
            "/api/v1/auth/token",
            json!({"grant_type": "client_credentials", "client_id": "payment", "client_secret": "guess-guess-guess-guess"}),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let user = app.register(&email()).await;
    let id = user["id"].as_str().unwrap();
    let (status, _) = app
        .get(
            &format!("/internal/users/{id}"),
            &[("x-user-id", id), ("x-user-roles", "user")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// The token route is public and a service token opens `/internal` (a `kyc` one marks
/// anyone verified): wrong secrets were answered as fast as they came.
#[tokio::test]
async fn guessing_a_service_secret_from_one_address_is_throttled_and_services_asking_rightly_are_not()
 {
    let app = TestAuth::spawn(&["--service-token-failures-per-address", "3"]).await;
    let ask = |ip: String, secret: &'static str| {
        let app = &app;
        async move {
            let r = app
                .http
                .post(app.url("/api/v1/auth/token"))
                .header("x-real-ip", ip)
                .json(
                    &json!({"grant_type": "client_credentials", "client_id": "payment",
                              "client_secret": secret}),
                )
                .send()
                .await
                .unwrap();
            let retry_after = r.headers().get("retry-after").cloned();
            (r.status(), retry_after, r.json::<Value>().await.unwrap())
        }
    };
    let (attacker, service) = (random_ip(), random_ip());
    for _ in 0..3 {
        let (status, _, body) = ask(attacker.clone(), "guess-guess-guess-guess").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let (status, retry_after, body) = ask(attacker.clone(), "guess-guess-guess-guess").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "RATE_LIMITED", "{body}");
    assert!(retry_after.is_some(), "says when to retry");
    // Refused before the secret is compared: past the limit, the right guess is no
    // different from a wrong one.
    let (status, _, body) = ask(attacker, "payment-secret-0123456789").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");

    // A service asking with its secret, more often than the limit, is answered each time.
    for _ in 0..5 {
        let (status, _, body) = ask(service.clone(), "payment-secret-0123456789").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, _, body) = ask(service, "guess-guess-guess-guess").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "its successes were not counted: {body}"
    );
}

#[tokio::test]
async fn only_the_kyc_service_sets_a_users_kyc_status_and_an_older_decision_changes_nothing() {
    let app = TestAuth::spawn(&[]).await;
    let user = app.register(&email()).await;
    let id = user["id"].as_str().unwrap();
    let set = |who: &'static str, roles: &'static str, body: Value| {
        let app = &app;
        async move {
            let r = app
                .http
                .put(app.url(&format!("/internal/users/{id}/kyc")))
                .header("x-user-id", who)
                .header("x-user-roles", roles)
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let now = chrono::Utc::now();
    let verified = json!({"kyc_status": "verified", "decided_at": now});
    // A leaked wallet or payment secret, or a compliance officer, cannot verify anyone.
    for (who, roles) in [
        ("service:wallet", "service:wallet"),
        ("service:payment", "service:payment"),
        ("4c1b8a52-0d36-4b5e-9a7e-2f1d5c3b9e01", "user,compliance"),
    ] {
        let (status, body) = set(who, roles, verified.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{roles}: {body}");
    }
    let status_now = || async {
        app.get(
            &format!("/internal/users/{id}"),
            &[
                ("x-user-id", "service:wallet"),
                ("x-user-roles", "service:wallet"),
            ],
        )
        .await
        .1["data"]["kyc_status"]
            .clone()
    };
    assert_eq!(status_now().await, "pending");

    let (status, body) = set(
        "service:kyc",
        "service:kyc",
        json!({"kyc_status": "verified"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "undated: {body}");
    let (status, body) = set("service:kyc", "service:kyc", verified).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["outcome"], "applied");
    assert_eq!(status_now().await, "verified");

    let older = json!({"kyc_status": "rejected", "decided_at": now - chrono::Duration::seconds(1)});
    let (status, body) = set("service:kyc", "service:kyc", older).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["outcome"], "superseded");
    assert_eq!(status_now().await, "verified");
}

#[tokio::test]
async fn registering_a_staff_looking_email_grants_no_role() {
    let app = TestAuth::spawn(&[]).await;
    for address in ["ops@finflow.local", "compliance@finflow.local"] {
        let user = app.register(address).await;
        assert_eq!(user["roles"], json!(["user"]), "{address}");
        let session = app.login(address).await;
        let claims = app.decode(session["access_token"].as_str().unwrap()).await;
        assert_eq!(claims["roles"], json!(["user"]), "{address}");
    }
}

/// `finflow-auth <change> <email> <role>` (`grant-role`, `revoke-role`) against `app`'s
/// database.
fn role_command(app: &TestAuth, change: &str, email: &str, role: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_finflow-auth"))
        .args([change, email, role])
        .env("DATABASE_URL", app.db.url())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_grant_role_command_gives_a_registered_account_a_staff_role_from_its_next_login() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    app.register(&address).await;
    let grant = |role: &str| role_command(&app, "grant-role", &address, role);
    let granted = grant("ops");
    assert!(granted.status.success(), "{granted:?}");
    let session = app.login(&address).await;
    assert_eq!(session["user"]["roles"], json!(["user", "ops"]));
    let claims = app.decode(session["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["roles"], json!(["user", "ops"]));

    let again = grant("ops");
    assert!(again.status.success(), "{again:?}");
    let session = app.login(&address).await;
    assert_eq!(
        session["user"]["roles"],
        json!(["user", "ops"]),
        "no duplicate"
    );

    assert!(
        !grant("service:payment").status.success(),
        "not a staff role"
    );
    let nobody = role_command(&app, "grant-role", "nobody@example.com", "ops");
    assert!(!nobody.status.success(), "no such account: {nobody:?}");

    // An address nobody has proven yet: whoever verifies it decides the account's
    // password, so a role waits for that.
    let unproven = email();
    let (status, _) = app.sign_up(&unproven, PASSWORD, "Ada Lovelace").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let refused = role_command(&app, "grant-role", &unproven, "ops");
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("has not verified its address"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn the_revoke_role_command_takes_a_staff_role_away_and_ends_the_account_s_sessions() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    app.register(&address).await;
    let command = |change: &str, role: &str| role_command(&app, change, &address, role);
    assert!(command("grant-role", "ops").status.success());
    assert!(command("grant-role", "compliance").status.success());
    let session = app.login(&address).await;
    assert_eq!(
        session["user"]["roles"],
        json!(["user", "ops", "compliance"])
    );

    let revoked = command("revoke-role", "ops");
    assert!(revoked.status.success(), "{revoked:?}");
    assert!(
        String::from_utf8_lossy(&revoked.stdout).contains("user, compliance"),
        "{revoked:?}"
    );
    // The session the role was granted to is over: its refresh token is refused, so
    // no new access token comes of it, with or without the role.
    let (status, body) = app.refresh(&session["refresh_token"]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let session = app.login(&address).await;
    assert_eq!(session["user"]["roles"], json!(["user", "compliance"]));
    let claims = app.decode(session["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["roles"], json!(["user", "compliance"]));

    assert!(
        !command("revoke-role", "user").status.success(),
        "not a staff role"
    );
    let nobody = role_command(&app, "revoke-role", "nobody@example.com", "ops");
    assert!(!nobody.status.success(), "no such account: {nobody:?}");
}

/// A login from `ip`: its status and `Retry-After`.
async fn login_from(
    app: &TestAuth,
    ip: &str,
    address: &str,
    password: &str,
) -> (StatusCode, Option<reqwest::header::HeaderValue>) {
    let r = app
        .http
        .post(app.url("/api/v1/auth/login"))
        .header("x-real-ip", ip)
        .json(&json!({"email": address, "password": password}))
        .send()
        .await
        .unwrap();
    (r.status(), r.headers().get("retry-after").cloned())
}

fn random_ip() -> String {
    format!("10.{}.{}.{}", rand_octet(), rand_octet(), rand_octet())
}

#[tokio::test]
async fn sign_ups_from_one_address_are_throttled_there_with_retry_after() {
    let app = TestAuth::spawn(&["--register-limit-per-address", "2"]).await;
    let attacker = random_ip();
    for _ in 0..2 {
        assert_eq!(app.sign_up_from(&attacker).await.0, StatusCode::ACCEPTED);
    }
    let (status, retry_after) = app.sign_up_from(&attacker).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after.is_some(), "says when to retry");
    assert_eq!(
        app.sign_up_from(&random_ip()).await.0,
        StatusCode::ACCEPTED,
        "another address is not held back"
    );
}

#[tokio::test]
async fn sign_ups_from_new_addresses_of_one_ipv6_network_are_throttled_as_one_address() {
    let app = TestAuth::spawn(&["--register-limit-per-address", "2"]).await;
    // One subscriber's /64 holds 2^64 addresses: a new one for every attempt.
    let network = random_ipv6_network();
    for host in 1..=2 {
        assert_eq!(
            app.sign_up_from(&format!("{network}::{host:x}")).await.0,
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(
        app.sign_up_from(&format!("{network}:dead:beef:1:2"))
            .await
            .0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        app.sign_up_from(&format!("{}::1", random_ipv6_network()))
            .await
            .0,
        StatusCode::ACCEPTED,
        "another network is not held back"
    );
}

#[tokio::test]
async fn wrong_passwords_from_one_address_are_throttled_there_with_retry_after() {
    let app = TestAuth::spawn(&["--login-limit-per-account", "3"]).await;
    let address = email();
    app.register(&address).await;
    let attacker = random_ip();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(login_from(&app, &attacker, &address, "wrong password guess").await);
    }
    assert!(
        statuses[..3]
            .iter()
            .all(|(s, _)| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    let (status, retry_after) = &statuses[3];
    assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS);
    let secs: u64 = retry_after
        .as_ref()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&secs));
    let (status, _) = login_from(&app, &attacker, &address, PASSWORD).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the attacker's address stays throttled, even with the right password"
    );
}

#[tokio::test]
async fn failures_from_an_attacker_s_address_do_not_lock_the_owner_out_from_theirs() {
    let app = TestAuth::spawn(&["--login-limit-per-account", "10"]).await;
    let address = email();
    app.register(&address).await;
    let (attacker, owner) = (random_ip(), random_ip());
    for _ in 0..11 {
        login_from(&app, &attacker, &address, "wrong password guess").await;
    }
    assert_eq!(
        login_from(&app, &attacker, &address, "wrong password guess")
            .await
            .0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        login_from(&app, &owner, &address, PASSWORD).await.0,
        StatusCode::OK,
        "the owner signs in from an address with no failures"
    );
}

#[tokio::test]
async fn a_successful_login_starts_the_address_s_count_again() {
    let app = TestAuth::spawn(&["--login-limit-per-account", "3"]).await;
    let address = email();
    app.register(&address).await;
    let ip = random_ip();
    for _ in 0..5 {
        for _ in 0..2 {
            let (status, _) = login_from(&app, &ip, &address, "a typo in it").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        assert_eq!(
            login_from(&app, &ip, &address, PASSWORD).await.0,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn every_attempt_from_one_address_counts_towards_its_limit_whatever_the_account() {
    let app = TestAuth::spawn(&["--login-limit-per-address", "5"]).await;
    let ip = random_ip();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(login_from(&app, &ip, &email(), PASSWORD).await.0);
    }
    assert!(
        statuses[..5].iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
}

/// A random /64 of the documentation prefix, as its first four groups.
fn random_ipv6_network() -> String {
    let b = Uuid::new_v4().into_bytes();
    format!(
        "2001:db8:{:x}:{:x}",
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]])
    )
}

fn rand_octet() -> u8 {
    Uuid::new_v4().as_bytes()[0]
}

#[tokio::test]
async fn the_openapi_document_lists_the_auth_routes() {
    let app = TestAuth::spawn(&[]).await;
    let (status, doc) = app.get("/openapi.json", &[]).await;
    assert_eq!(status, StatusCode::OK);
    // Named as the service catalog names it, as is its `--help`.
    assert_eq!(doc["info"]["title"], "FinFlow auth (A)");
    assert_eq!(
        doc["info"]["description"],
        "Identity, sessions and the JWT issuer."
    );
    for path in [
        "/api/v1/auth/register",
        "/api/v1/auth/verify",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/auth/logout",
        "/api/v1/auth/logout-all",
        "/api/v1/auth/password",
        "/api/v1/auth/token",
        "/api/v1/users/me",
        "/.well-known/jwks.json",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from {}",
            doc["paths"]
        );
    }
    // Signing up and verifying need no token (platform's PUBLIC_PATHS); what a user does
    // to their own credentials needs theirs.
    for path in [
        "/api/v1/auth/register",
        "/api/v1/auth/verify",
        "/api/v1/auth/password-reset",
        "/api/v1/auth/password-reset/confirm",
    ] {
        assert_eq!(doc["paths"][path]["post"]["security"], json!([]), "{path}");
    }
    for path in ["/api/v1/auth/password", "/api/v1/auth/logout-all"] {
        assert_ne!(doc["paths"][path]["post"]["security"], json!([]), "{path}");
    }
    let sign_up = &doc["paths"]["/api/v1/auth/register"]["post"]["responses"];
    assert!(sign_up.get("202").is_some(), "{sign_up}");
    for status in ["201", "409"] {
        assert!(
            sign_up.get(status).is_none(),
            "a sign-up never answers {status}"
        );
    }
    // What the gateway never routes is not published.
    for path in ["/internal/users/{id}", "/health"] {
        assert!(doc["paths"].get(path).is_none(), "{path} is published");
    }
}

#[tokio::test]
async fn b_looks_up_several_users_in_one_call_and_only_b_may() {
    let app = TestAuth::spawn(&[]).await;
    let (one, two) = (app.register(&email()).await, app.register(&email()).await);
    let unknown = uuid::Uuid::now_v7().to_string();
    let ids = json!({"user_ids": [one["id"], two["id"], unknown]});
    let wallet = [
        ("x-user-id", "service:wallet"),
        ("x-user-roles", "service:wallet"),
    ];
    let (status, body) = app
        .post("/internal/users/lookup", ids.clone(), &wallet)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut found: Vec<&str> = body["data"]["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    found.sort_unstable();
    let mut expected = vec![one["id"].as_str().unwrap(), two["id"].as_str().unwrap()];
    expected.sort_unstable();
    assert_eq!(found, expected, "the unknown id is left out");
    assert!(body["data"]["users"][0]["kyc_status"].is_string(), "{body}");

    let own = one["id"].as_str().unwrap();
    for headers in [
        [
            ("x-user-id", "service:payment"),
            ("x-user-roles", "service:payment"),
        ],
        [("x-user-id", own), ("x-user-roles", "user")],
    ] {
        let (status, body) = app
            .post("/internal/users/lookup", ids.clone(), &headers)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let many: Vec<String> = (0..101).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    for user_ids in [json!([]), json!(many)] {
        let (status, body) = app
            .post(
                "/internal/users/lookup",
                json!({ "user_ids": user_ids }),
                &wallet,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["success"], false, "{body}");
    }
}

/// What `POST /api/v1/auth/password` answers `user` (by the identity headers a sidecar
/// sets from their token).
async fn change_password(
    app: &TestAuth,
    user: &Value,
    current: &str,
    new: &str,
) -> (StatusCode, Value) {
    change_password_from(app, "127.0.0.1", user, current, new).await
}

/// [`change_password`] from the client address `ip`.
async fn change_password_from(
    app: &TestAuth,
    ip: &str,
    user: &Value,
    current: &str,
    new: &str,
) -> (StatusCode, Value) {
    let id = user["id"].as_str().unwrap();
    app.post(
        "/api/v1/auth/password",
        json!({"current_password": current, "new_password": new}),
        &[
            ("x-user-id", id),
            ("x-user-roles", "user"),
            ("x-real-ip", ip),
        ],
    )
    .await
}

const NEW_PASSWORD: &str = "a new and longer passphrase";

/// A password that leaked (a phished login, a reused password) used to stay the
/// attacker's for as long as they refreshed: nothing but a logout with the attacker's
/// own refresh token ended their session, and the owner had no way to change it.
#[tokio::test]
async fn changing_the_password_ends_every_session_a_thief_holds_and_the_old_password() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    let user = app.register(&address).await;
    let thief = app.login(&address).await;
    let owner = app.login(&address).await;

    let (status, body) = change_password(&app, &user, PASSWORD, NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fresh = &body["data"];
    assert_eq!(fresh["user"]["id"], user["id"]);

    assert_replaced(&app, &user, &[&thief, &owner], "change").await;
    let (status, body) = app.refresh(&fresh["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK, "the change's own session: {body}");
}

/// What replacing `user`'s password by [`NEW_PASSWORD`] must leave: none of `sessions`
/// refreshes, the old password is refused and the new one logs in, and the owner is
/// told once at the account's address, whoever replaced it, `via` what.
async fn assert_replaced(app: &TestAuth, user: &Value, sessions: &[&Value], via: &str) {
    for session in sessions {
        let (status, body) = app.refresh(&session["refresh_token"]).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "a session lived on: {body}"
        );
    }
    let address = user["email"].as_str().unwrap();
    let (status, _) = app.login_with(address, PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old password logs in");
    let (status, body) = app.login_with(address, NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let told = app.events(types::USER_PASSWORD_CHANGED).await;
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["user_id"], user["id"]);
    assert_eq!(told[0]["email"], address);
    assert_eq!(told[0]["via"], via);
}

/// Holding an access token is not knowing the password: a stolen token must not turn
/// into the account for good.
#[tokio::test]
async fn a_password_is_changed_only_with_the_current_one_and_a_wrong_one_changes_nothing() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    let user = app.register(&address).await;
    let session = app.login(&address).await;

    let (status, body) = change_password(&app, &user, "a guessed password", NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "FORBIDDEN");
    assert_eq!(body["error"]["details"]["field"], "current_password");

    let (status, _) = app.login_with(&address, PASSWORD).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the password was changed by a wrong guess"
    );
    let (status, _) = app.refresh(&session["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK, "a refused change ended a session");
    assert!(app.events(types::USER_PASSWORD_CHANGED).await.is_empty());
}

#[tokio::test]
async fn guessing_the_current_password_with_a_stolen_access_token_is_throttled() {
    let app = TestAuth::spawn(&["--login-limit-per-account", "3"]).await;
    let user = app.register(&email()).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let guess = change_password(&app, &user, "a guessed password", NEW_PASSWORD);
        statuses.push(guess.await.0);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::FORBIDDEN,
            StatusCode::FORBIDDEN,
            StatusCode::FORBIDDEN,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let (status, body) = change_password(&app, &user, PASSWORD, NEW_PASSWORD).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the right password right after the guesses: {body}"
    );
}

#[tokio::test]
async fn a_new_password_breaking_the_policy_is_a_400_and_the_current_one_again_a_409() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    let user = app.register(&address).await;
    for (new, expected) in [
        ("short", StatusCode::BAD_REQUEST),
        ("aaaaaaaaaaaaaaaa", StatusCode::BAD_REQUEST),
        (PASSWORD, StatusCode::CONFLICT),
    ] {
        let (status, body) = change_password(&app, &user, PASSWORD, new).await;
        assert_eq!(status, expected, "{new}: {body}");
        assert_eq!(body["error"]["details"]["field"], "new_password", "{body}");
    }
    // The same string twice is no oracle: with a wrong current password it is refused
    // as any wrong password is.
    let guess = "a guessed password";
    let (status, body) = change_password(&app, &user, guess, guess).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = app.login_with(&address, PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn only_a_user_token_changes_a_password_or_signs_out_everywhere() {
    let app = TestAuth::spawn(&[]).await;
    let user = app.register(&email()).await;
    let body = json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD});
    for (path, body) in [
        ("/api/v1/auth/password", body),
        ("/api/v1/auth/logout-all", json!({})),
    ] {
        let (status, answer) = app.post(path, body.clone(), &[]).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{path} without a token: {answer}"
        );
        let (status, answer) = app
            .post(
                path,
                body,
                &[
                    ("x-user-id", "service:payment"),
                    ("x-user-roles", "service:payment"),
                ],
            )
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{path} with a service token: {answer}"
        );
    }
    let (status, _) = app
        .login_with(user["email"].as_str().unwrap(), PASSWORD)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn signing_out_everywhere_ends_every_session_of_the_caller_and_no_one_elses() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    let user = app.register(&address).await;
    let sessions = [app.login(&address).await, app.login(&address).await];
    let other = email();
    app.register(&other).await;
    let bystander = app.login(&other).await;

    let id = user["id"].as_str().unwrap();
    let (status, body) = app
        .post(
            "/api/v1/auth/logout-all",
            json!({}),
            &[("x-user-id", id), ("x-user-roles", "user")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["sessions_ended"], 2, "{body}");
    for session in &sessions {
        let (status, _) = app.refresh(&session["refresh_token"]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _) = app.refresh(&bystander["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK, "another user's session ended");
    // The password is unchanged: the owner logs in again.
    app.login(&address).await;
}

/// A login checks the password before its transaction (Argon2 is slow), and a password
/// change in that gap used to leave the session the login then started alive. The
/// test's transaction is that login, caught between its check and its session: a change
/// that comes while it holds the account waits for it, then ends its session; a login
/// that checked the old password after a change finds no account.
#[tokio::test]
async fn a_login_caught_between_its_check_and_its_session_does_not_outlive_a_password_change() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    let user = app.register(&address).await;
    let email = finflow_platform::Email::parse(&address).unwrap();
    const HASH: &str = "SELECT password_hash FROM users WHERE email = $1";
    let checked: String = db::scalar_of(&app.db.pool, HASH, address.as_str()).await;
    let mut login = app.db.pool.begin().await.unwrap();
    let held = finflow_auth::api::user_if_password_is(&mut login, &email, &checked).await;
    assert!(
        held.unwrap().is_some(),
        "the password it checked is the account's"
    );

    let token = format!("late-login-{}", Uuid::new_v4());
    let session = async {
        // Only once the change is waiting for the account does the login write its
        // session: without the lock the change would not wait, and this never ends.
        db::until_waiting_for_locks(&app.db.pool, 1).await;
        sqlx::query(
            "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at) \
             VALUES ($1, $2, $3, $4, now() + interval '1 day')",
        )
        .bind(Uuid::now_v7())
        .bind(Uuid::now_v7())
        .bind(Uuid::parse_str(user["id"].as_str().unwrap()).unwrap())
        .bind(finflow_auth::tokens::hash_opaque_token(&token))
        .execute(&mut *login)
        .await
        .unwrap();
        login.commit().await.unwrap();
    };
    let change = change_password(&app, &user, PASSWORD, NEW_PASSWORD);
    let ((status, body), ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(change, session)
    })
    .await
    .expect("the change never waited for the login holding the account");
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.refresh(&json!(token)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the login's session outlived the change: {body}"
    );

    let mut late = app.db.pool.begin().await.unwrap();
    let stale = finflow_auth::api::user_if_password_is(&mut late, &email, &checked).await;
    assert!(
        stale.unwrap().is_none(),
        "a login that checked the old password found the account"
    );
    let now: String = db::scalar_of(&app.db.pool, HASH, address.as_str()).await;
    let current = finflow_auth::api::user_if_password_is(&mut late, &email, &now).await;
    assert!(current.unwrap().is_some());
}

/// A thief who took the account (a leaked password, a session of their own) must not be
/// able to keep its owner from changing the password by spending the account's
/// attempts: they are counted per account and address, as logins are.
#[tokio::test]
async fn a_thief_s_wrong_guesses_do_not_keep_the_owner_from_changing_the_password() {
    let app = TestAuth::spawn(&["--login-limit-per-account", "3"]).await;
    let user = app.register(&email()).await;
    let thief = random_ip();
    for _ in 0..4 {
        change_password_from(&app, &thief, &user, "a wrong password", NEW_PASSWORD).await;
    }
    let (status, _) =
        change_password_from(&app, &thief, &user, "a wrong password", NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, body) =
        change_password_from(&app, &random_ip(), &user, PASSWORD, NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "the owner was locked out: {body}");
}

/// Changing a password back and forth costs Argon2 twice a time: successes count too,
/// or an account's holder could keep A's CPU busy without a limit.
#[tokio::test]
async fn changing_the_password_back_and_forth_is_throttled_too() {
    let app = TestAuth::spawn(&["--login-limit-per-account", "3"]).await;
    let user = app.register(&email()).await;
    let passwords = [PASSWORD, NEW_PASSWORD];
    let mut statuses = Vec::new();
    for i in 0..4 {
        let (current, new) = (passwords[i % 2], passwords[(i + 1) % 2]);
        statuses.push(change_password(&app, &user, current, new).await.0);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

/// The tokens of the reset mails sent to `address` so far, oldest first.
async fn reset_tokens(app: &TestAuth, address: &str) -> Vec<String> {
    let sent = app
        .mail
        .sent(&app.db.pool, types::USER_PASSWORD_RESET_REQUESTED)
        .await;
    sent.iter()
        .filter(|r| r["email"] == address)
        .filter_map(|r| r["token"].as_str().map(str::to_owned))
        .collect()
}

async fn request_reset(app: &TestAuth, address: &str) -> (StatusCode, Value) {
    app.post(
        "/api/v1/auth/password-reset",
        json!({"email": address}),
        &[],
    )
    .await
}

async fn confirm_reset(app: &TestAuth, token: &str, new: &str) -> (StatusCode, Value) {
    app.post(
        "/api/v1/auth/password-reset/confirm",
        json!({"token": token, "new_password": new}),
        &[],
    )
    .await
}

/// Without a reset, an owner who forgot the password had no way back into the account,
/// and one whose password leaked could not take it back without knowing it.
#[tokio::test]
async fn a_forgotten_password_is_reset_with_the_mailed_token_and_every_session_ends() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    let user = app.register(&address).await;
    let thief = app.login(&address).await;

    let (status, body) = request_reset(&app, &address).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let tokens = reset_tokens(&app, &address).await;
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let (status, body) = confirm_reset(&app, &tokens[0], NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["id"], user["id"]);
    assert_replaced(&app, &user, &[&thief], "reset").await;

    let (status, body) = confirm_reset(&app, &tokens[0], "yet another passphrase").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a token works once: {body}");
    assert_eq!(body["error"]["details"]["reason"], "invalid_token");
    // The outbox keeps the token only until the broker has it.
    let kept: i64 = db::scalar_of(
        &app.db.pool,
        "SELECT count(*) FROM outbox WHERE strpos(payload::text, $1) > 0",
        tokens[0].as_str(),
    )
    .await;
    assert_eq!(kept, 0);
}

/// A reset form is an oracle of which addresses have accounts unless it answers every
/// address alike; only the mailbox of a verified account learns anything.
#[tokio::test]
async fn a_reset_request_answers_every_address_alike_and_mails_only_a_verified_account() {
    let app = TestAuth::spawn(&[]).await;
    let verified = email();
    app.register(&verified).await;
    let unverified = email();
    let (status, _) = app.sign_up(&unverified, PASSWORD, "Ada Lovelace").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let unknown = email();

    for address in [&verified, &unverified, &unknown] {
        let (status, body) = request_reset(&app, address).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(
            body,
            json!({"success": true, "data": {"email": address, "status": "reset_requested"}})
        );
    }
    assert_eq!(reset_tokens(&app, &verified).await.len(), 1);
    assert!(reset_tokens(&app, &unverified).await.is_empty());
    assert!(reset_tokens(&app, &unknown).await.is_empty());
    let (status, body) = request_reset(&app, "not an address").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// Anyone can type someone else's address into the form: it must not become a way to
/// flood their mailbox.
#[tokio::test]
async fn an_account_is_mailed_at_most_three_resets_an_hour() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    app.register(&address).await;
    for _ in 0..5 {
        let (status, _) = request_reset(&app, &address).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    assert_eq!(reset_tokens(&app, &address).await.len(), 3);
}

#[tokio::test]
async fn a_reset_token_is_refused_once_expired_used_up_by_another_or_after_a_change() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    let user = app.register(&address).await;
    for _ in 0..3 {
        request_reset(&app, &address).await;
    }
    let tokens = reset_tokens(&app, &address).await;
    let [expired, older, newer] = tokens.as_slice() else {
        panic!("three reset mails: {tokens:?}");
    };
    sqlx::query(
        "UPDATE password_resets SET expires_at = now() - interval '1 second' WHERE token_hash = $1",
    )
    .bind(finflow_auth::tokens::hash_opaque_token(expired))
    .execute(&app.db.pool)
    .await
    .unwrap();
    let (status, body) = confirm_reset(&app, expired, NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an expired token: {body}");

    let (status, body) = confirm_reset(&app, newer, NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = confirm_reset(&app, older, "yet another passphrase").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a reset leaves the others usable"
    );

    // A change revokes what was mailed before it.
    let next = email();
    let other = app.register(&next).await;
    request_reset(&app, &next).await;
    let mailed = reset_tokens(&app, &next).await;
    let (status, body) = change_password(&app, &other, PASSWORD, NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = confirm_reset(&app, &mailed[0], "yet another passphrase").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a change leaves a mailed reset usable"
    );
    let (status, _) = app.login_with(&address, NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{user}");
}

#[tokio::test]
async fn a_malformed_token_or_a_weak_password_is_a_400_and_an_unknown_token_a_404() {
    let app = TestAuth::spawn(&[]).await;
    let unknown = "RmluRmxvdzogYW4gZXhhbXBsZSB0b2tlbiBvZiAzMmI";
    for (token, new, field) in [
        ("short", NEW_PASSWORD, "token"),
        (unknown, "short", "new_password"),
    ] {
        let (status, body) = confirm_reset(&app, token, new).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["details"]["field"], field, "{body}");
    }
    let (status, body) = confirm_reset(&app, unknown, NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["details"]["reason"], "invalid_token");
}

/// Every service connects to the broker as one user: what A publishes for D, anyone
/// holding E's or F's broker credentials can bind a queue to and read. Before the
/// tokens were sealed, that was every account (staff's too) by its reset mail.
#[tokio::test]
async fn a_service_reading_the_bus_learns_no_token_it_could_redeem() {
    let app = TestAuth::spawn(&[]).await;
    let address = email();
    let (status, body) = app.sign_up(&address, PASSWORD, "Ada Lovelace").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // What crosses the bus, as any binder of `user.*` reads it.
    let seen = app
        .mail
        .seen(&app.db.pool, types::USER_VERIFICATION_REQUESTED)
        .await
        .remove(0);
    assert!(seen.starts_with("v1."), "{seen}");
    let (status, body) = app.verify(&seen).await;
    assert!(status.is_client_error(), "{status} {body}");
    let (status, body) = app.verify(&app.verification_token(&address).await).await;
    assert_eq!(status, StatusCode::OK, "D's opened token verifies: {body}");

    let (status, body) = request_reset(&app, &address).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let seen = app
        .mail
        .seen(&app.db.pool, types::USER_PASSWORD_RESET_REQUESTED)
        .await
        .remove(0);
    let (status, body) = confirm_reset(&app, &seen, "a thief's new password").await;
    assert!(status.is_client_error(), "{status} {body}");
    let token = reset_tokens(&app, &address).await.pop().unwrap();
    let (status, body) = confirm_reset(&app, &token, "the owner's new password").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Each rotation keeps a row for the token's lifetime: one address refreshing in a loop
/// (the sidecar lets an anonymous caller 50 a second) wrote millions a day.
#[tokio::test]
async fn refreshing_in_a_loop_from_one_address_is_throttled() {
    let app = TestAuth::spawn(&["--refresh-limit-per-address", "5"]).await;
    let address = email();
    app.register(&address).await;
    let mut session = app.login(&address).await;
    let (ip, elsewhere) = (random_ip(), random_ip());
    let refresh_from = |ip: String, token: Value| {
        let app = &app;
        async move {
            app.post(
                "/api/v1/auth/refresh",
                json!({"refresh_token": token}),
                &[("x-real-ip", &ip)],
            )
            .await
        }
    };
    for _ in 0..5 {
        let (status, body) = refresh_from(ip.clone(), session["refresh_token"].clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        session = body["data"].clone();
    }
    let (status, body) = refresh_from(ip.clone(), session["refresh_token"].clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "RATE_LIMITED", "{body}");
    // Refused before the token was looked at: it still rotates, from elsewhere.
    let (status, body) = refresh_from(elsewhere, session["refresh_token"].clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
