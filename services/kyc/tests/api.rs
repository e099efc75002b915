//! Service E on a real socket against real PostgreSQL and RabbitMQ. Requests carry the
//! identity headers a sidecar would set. Payment events reach the AML monitor through E's
//! own queue on a test vhost, or straight through its consumer handler (the path every
//! delivery takes: deduped by event id, one transaction) when a test needs exact control
//! over the order and number of payments.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use finflow_contracts::payment::{Kind, Payment, PaymentEvent, Status};
use finflow_kyc::Kyc;
use finflow_kyc::aml::{self, Monitor, Rules};
use finflow_kyc::documents::MAX_DOCUMENT_BYTES;
use finflow_platform::Amount;
use finflow_platform::db::{self, TestDb};
use finflow_platform::events::consumer::{self, Outcome};
use finflow_platform::events::{self, Event, Publisher, QueueSpec, TestVhost, outbox, types};
use finflow_platform::fx::{DEFAULT_RATES, Rates};
use finflow_platform::testing::TestService;
use lapin::options::BasicGetOptions;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The test's queue on the vhost, bound to every event E publishes.
const OBSERVED: &str = "kyc-test.observed";

/// Who compliance decisions are recorded as (`X-User-Email` of the reviewer).
const REVIEWER: &str = "grace@finflow.test";

const DOCUMENT_URL: &str = "https://docs.example.com/passport.pdf";

/// A caller, as the sidecar describes it in identity headers.
struct Caller(Vec<(&'static str, String)>);

impl Caller {
    fn anonymous() -> Self {
        Self(Vec::new())
    }

    fn user(id: Uuid) -> Self {
        Self(vec![
            ("x-user-id", id.to_string()),
            ("x-user-email", format!("user-{}@example.com", id.simple())),
            ("x-user-roles", "user".to_owned()),
            ("x-kyc-status", "pending".to_owned()),
            ("x-account-tier", "bronze".to_owned()),
        ])
    }

    fn compliance() -> Self {
        Self(vec![
            ("x-user-id", Uuid::new_v4().to_string()),
            ("x-user-email", REVIEWER.to_owned()),
            ("x-user-roles", "user,compliance".to_owned()),
        ])
    }

    /// A compliance officer who is also the user `id` (a customer too).
    fn compliance_as(id: Uuid) -> Self {
        Self(vec![
            ("x-user-id", id.to_string()),
            ("x-user-email", REVIEWER.to_owned()),
            ("x-user-roles", "user,compliance".to_owned()),
        ])
    }

    fn headers(&self) -> Vec<(&str, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    fn service(name: &str) -> Self {
        Self(vec![
            ("x-user-id", format!("service:{name}")),
            ("x-user-roles", format!("service:{name}")),
        ])
    }
}

/// The test's own connection to the vhost: a queue recording what E publishes, and a
/// publisher standing in for C.
struct Broker {
    channel: lapin::Channel,
    publisher: Publisher,
    /// Events of a bundle already taken from the queue and not yet asked for.
    taken: Mutex<std::collections::VecDeque<Event>>,
    _connection: lapin::Connection,
}

impl Broker {
    async fn connect(vhost: &TestVhost) -> Self {
        let connection = vhost.broker().connect("kyc-test").await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let observed = QueueSpec::new(
            OBSERVED,
            &[
                types::USER_KYC_UPDATED,
                types::AML_CLEARED,
                types::AML_FLAGGED,
            ],
        );
        events::declare_queue(&channel, &observed).await.unwrap();
        // E's own queue, declared exactly as E declares it: a payment event published
        // before E's consumer is up waits there instead of being unroutable.
        events::declare_queue(&channel, &aml::payments_queue())
            .await
            .unwrap();
        let publisher = Publisher::new(&connection).await.unwrap();
        Self {
            channel,
            publisher,
            taken: Mutex::default(),
            _connection: connection,
        }
    }

    async fn publish(&self, event: &Event) {
        self.publisher
            .publish(event, Default::default())
            .await
            .unwrap();
    }

    /// The next event E published, waiting for its outbox relay.
    async fn next_event(&self) -> Event {
        for _ in 0..400 {
            if let Some(event) = self.taken.lock().unwrap().pop_front() {
                return event;
            }
            let message = self
                .channel
                .basic_get(OBSERVED.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap();
            if let Some(message) = message {
                // E's relay sends a run of events of one type as one bundle.
                let events = events::decode(&message.delivery.data).unwrap();
                self.taken.lock().unwrap().extend(events);
                continue;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for an event from E on {OBSERVED}");
    }
}

/// What one of E's recipients (A's `PUT /internal/users/{id}/kyc`, C's
/// `PUT /internal/payments/{id}/aml`) was told, by subject; it refuses a call without
/// E's token, as its sidecar would, and answers 503 while down.
#[derive(Clone, Default)]
struct Inbox {
    told: Arc<Mutex<Vec<(Uuid, Value)>>>,
    /// Calls still to be answered 503, as a service that is down.
    down_for: Arc<Mutex<usize>>,
}

impl Inbox {
    fn take(
        &self,
        headers: &axum::http::HeaderMap,
        subject: Uuid,
        body: Value,
    ) -> (axum::http::StatusCode, axum::Json<Value>) {
        let refused = |status, code: &str| {
            let error = json!({"success": false, "error": {"code": code, "message": "refused"}});
            (status, axum::Json(error))
        };
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer kyc-token") {
            return refused(axum::http::StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        }
        {
            let mut down_for = self.down_for.lock().unwrap();
            if *down_for > 0 {
                *down_for -= 1;
                return refused(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "SERVICE_UNAVAILABLE",
                );
            }
        }
        self.told.lock().unwrap().push((subject, body));
        let taken = json!({"success": true, "data": {"id": subject}});
        (axum::http::StatusCode::OK, axum::Json(taken))
    }

    /// What it was told about `subject`, oldest first.
    fn about(&self, subject: Uuid) -> Vec<Value> {
        self.told
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| *s == subject)
            .map(|(_, body)| body.clone())
            .collect()
    }

    /// Answers the next `calls` calls 503.
    fn down_for(&self, calls: usize) {
        *self.down_for.lock().unwrap() = calls;
    }
}

/// A stand-in for A and C: issues E's service token and takes the decisions E sends
/// them.
#[derive(Clone, Default)]
struct FakeAuth {
    auth: Inbox,
    payment: Inbox,
}

impl FakeAuth {
    async fn serve(self) -> String {
        use axum::extract::{Path, State};
        use axum::http::HeaderMap;
        async fn token() -> axum::Json<Value> {
            axum::Json(
                json!({"success": true, "data": {"access_token": "kyc-token",
                "expires_at": chrono::Utc::now() + chrono::Duration::hours(1)}}),
            )
        }
        async fn kyc(
            State(fake): State<FakeAuth>,
            headers: HeaderMap,
            Path(user): Path<Uuid>,
            axum::Json(body): axum::Json<Value>,
        ) -> (axum::http::StatusCode, axum::Json<Value>) {
            fake.auth.take(&headers, user, body)
        }
        async fn aml(
            State(fake): State<FakeAuth>,
            headers: HeaderMap,
            Path(payment): Path<Uuid>,
            axum::Json(body): axum::Json<Value>,
        ) -> (axum::http::StatusCode, axum::Json<Value>) {
            fake.payment.take(&headers, payment, body)
        }
        let app = axum::Router::new()
            .route("/api/v1/auth/token", axum::routing::post(token))
            .route("/internal/users/{id}/kyc", axum::routing::put(kyc))
            .route("/internal/payments/{id}/aml", axum::routing::put(aml))
            .with_state(self);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        base
    }

    /// The decisions A was told about `user`, oldest first.
    fn told(&self, user: Uuid) -> Vec<Value> {
        self.auth.about(user)
    }

    /// What C was told about `payment`, oldest first.
    fn held(&self, payment: Uuid) -> Vec<Value> {
        self.payment.about(payment)
    }
}

/// E on a fresh database and vhost, A faked, and the test's own queue on the vhost.
#[derive(derive_more::Deref)]
struct TestE {
    #[deref]
    service: TestService,
    broker: Broker,
    auth: FakeAuth,
}

impl TestE {
    async fn spawn(extra: &[&str]) -> Self {
        let db = TestDb::new(Some(&finflow_kyc::MIGRATIONS)).await;
        let vhost = TestVhost::new();
        // Bound before E can publish anything, so none of the test's events is lost.
        let broker = Broker::connect(&vhost).await;
        let auth = FakeAuth::default();
        let auth_url = auth.clone().serve().await;
        let mut args = vec![
            "--payment-url".to_owned(),
            auth_url.clone(),
            "--auth-url".to_owned(),
            auth_url,
            "--service-client-secret".into(),
            "kyc-secret-for-tests".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self {
            service: TestService::start::<Kyc>(db, vhost, &args).await,
            broker,
            auth,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, who: &Caller) -> (StatusCode, Value) {
        self.service.send(req, &who.headers()).await
    }

    async fn get(&self, path: &str, who: &Caller) -> (StatusCode, Value) {
        self.service.get(path, &who.headers()).await
    }

    async fn post(&self, path: &str, body: &Value, who: &Caller) -> (StatusCode, Value) {
        self.service.post(path, body, &who.headers()).await
    }

    /// Submits a document as `user`, expecting 201; returns the submission.
    async fn submit(&self, user: Uuid, body: &Value) -> Value {
        let (status, answer) = self
            .post("/api/v1/kyc/submit", body, &Caller::user(user))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        assert_eq!(answer["success"], true, "{answer}");
        answer["data"].clone()
    }

    async fn review(&self, id: &str, body: &Value, who: &Caller) -> (StatusCode, Value) {
        self.post(&format!("/api/v1/kyc/{id}/review"), body, who)
            .await
    }

    /// `GET /api/v1/kyc/status` as `user`: the data of a 200.
    async fn status_of(&self, user: Uuid) -> Value {
        let (status, body) = self.get("/api/v1/kyc/status", &Caller::user(user)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["success"], true, "{body}");
        body["data"].clone()
    }

    /// `user`'s AML risk score, as another compliance officer reads it.
    async fn risk_score(&self, user: Uuid) -> i64 {
        let (status, body) = self
            .get(
                &format!("/api/v1/aml/users/{user}/risk"),
                &Caller::compliance(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["data"]["user_id"], user.to_string(), "{body}");
        body["data"]["risk_score"]
            .as_i64()
            .unwrap_or_else(|| panic!("no risk score in {body}"))
    }

    /// An officer's approval of `submission` is refused (409 `document_spoken_for`: another
    /// account holds its document), and their rejection taken.
    async fn approval_refused_as_spoken_for(&self, submission: &Value) {
        let id = submission["id"].as_str().unwrap();
        let approve = json!({"decision": "approve", "reason": "documents match"});
        let (status, body) = self.review(id, &approve, &Caller::compliance()).await;
        let error = assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
        assert_eq!(error["details"]["reason"], "document_spoken_for");
        let reject = json!({"decision": "reject", "reason": "another account holds this document"});
        let (status, body) = self.review(id, &reject, &Caller::compliance()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Clearing `alert` is refused to `officer` and granted to another officer.
    async fn only_another_officer_clears(&self, alert: &Value, officer: Uuid) {
        let clear = format!("/api/v1/aml/alerts/{}/clear", alert["id"].as_str().unwrap());
        let reason = json!({"reason": "a regular customer"});
        let (status, body) = self
            .post(&clear, &reason, &Caller::compliance_as(officer))
            .await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
        let (status, body) = self.post(&clear, &reason, &Caller::compliance()).await;
        assert_eq!(status, StatusCode::OK, "another officer may: {body}");
    }

    /// `user`'s alerts, as `compliance` lists them.
    async fn alerts_of(&self, user: Uuid) -> Vec<Value> {
        let (status, body) = self
            .get(
                &format!("/api/v1/aml/alerts?user_id={user}&limit=500"),
                &Caller::compliance(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["success"], true, "{body}");
        assert!(body["data"]["next_cursor"].is_null(), "{body}");
        body["data"]["items"].as_array().unwrap().clone()
    }

    /// Waits until `user` has at least `n` alerts (the consumer works asynchronously).
    async fn wait_for_alerts(&self, user: Uuid, n: usize) -> Vec<Value> {
        for _ in 0..400 {
            let alerts = self.alerts_of(user).await;
            if alerts.len() >= n {
                return alerts;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {n} alerts of {user}");
    }

    /// Feeds one payment event to E's AML monitor as its consumer does: deduped by
    /// event id, in one transaction with the dedupe record.
    async fn observe(&self, monitor: &Monitor, event: &Event) -> Outcome {
        let queue = aml::payments_queue();
        consumer::apply_once(&self.db.pool, &queue.name, monitor, event)
            .await
            .unwrap()
    }

    /// The payloads of E's outbox rows of `event_type`, oldest first.
    async fn outbox(&self, event_type: &str) -> Vec<Value> {
        outbox::written(&self.db.pool, event_type).await
    }

    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

/// Asserts a failure in the envelope with `expected` status and `code`; returns `error`.
fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) -> Value {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body.get("data").is_none(), "{body}");
    body["error"].clone()
}

fn passport(number: &str) -> Value {
    json!({
        "document_type": "passport",
        "document_number": number,
        "document_url": DOCUMENT_URL,
    })
}

fn upload(content_type: &str, bytes: &[u8]) -> Value {
    json!({
        "document_type": "national_id",
        "document_number": "X1234567",
        "document_file": {"content_type": content_type, "data_base64": STANDARD.encode(bytes)},
    })
}

/// A file that starts like a PDF, `len` bytes long.
fn pdf(len: usize) -> Vec<u8> {
    let mut bytes = b"%PDF-1.7\n".to_vec();
    bytes.resize(len, b'%');
    bytes
}

fn png() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(b"\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01");
    bytes
}

fn jpeg() -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
    bytes.extend_from_slice(b"\0\x10JFIF\0");
    bytes
}

/// E's rules as configured by default, which is how the service under test runs.
fn rules() -> Rules {
    Rules {
        rates: Rates::parse("USD", DEFAULT_RATES).unwrap(),
        hold_threshold: Amount::parse("10000").unwrap(),
        window: Duration::from_secs(600),
        max_count: 20,
        max_amount: Amount::parse("50000").unwrap(),
        structuring_count: 3,
    }
}

/// A payment event as C announces it: the payment, flattened, plus its id as
/// `payment_id`. C holds (`ON_HOLD`, `payment.on_hold`) what is over its threshold and
/// requests (`PENDING`, `payment.requested`) the rest.
fn payment_event(user: Uuid, payment: Uuid, amount: &str, status: &str) -> Event {
    payment_event_in(user, payment, amount, "USD", status)
}

/// [`payment_event`] in `currency`.
fn payment_event_in(
    user: Uuid,
    payment: Uuid,
    amount: &str,
    currency: &str,
    status: &str,
) -> Event {
    let event_type = if status == "ON_HOLD" {
        types::PAYMENT_ON_HOLD
    } else {
        types::PAYMENT_REQUESTED
    };
    let now = chrono::Utc::now();
    Event::new(
        "payment",
        event_type,
        &PaymentEvent {
            payment_id: payment,
            payee_user_id: None,
            payment: Payment {
                id: payment,
                user_id: user,
                kind: Kind::Transfer,
                status: Status::parse(status).unwrap(),
                from_wallet_id: Some(Uuid::new_v4()),
                to_wallet_id: Some(Uuid::new_v4()),
                amount: amount.to_owned(),
                currency: currency.to_owned(),
                description: None,
                failure: None,
                created_at: now,
                updated_at: now,
                completed_at: None,
            },
        },
    )
    .unwrap()
}

#[tokio::test]
async fn a_document_waits_for_a_compliance_reviewer_whose_approval_is_published_as_user_kyc_updated()
 {
    let e = TestE::spawn(&[]).await;
    let user = Uuid::new_v4();

    let (status, body) = e
        .post(
            "/api/v1/kyc/submit",
            &passport("AB123456"),
            &Caller::anonymous(),
        )
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");

    let before = e.status_of(user).await;
    assert_eq!(before["user_id"], user.to_string());
    assert_eq!(before["kyc_status"], "none");
    assert_eq!(before["latest"], Value::Null);
    assert!(
        before.get("risk_score").is_none(),
        "a customer never sees their AML risk: {before}"
    );

    let submitted = e.submit(user, &passport(" ab 123 456 ")).await;
    let id = submitted["id"].as_str().unwrap().to_owned();
    assert_eq!(submitted["status"], "pending");
    assert_eq!(submitted["user_id"], user.to_string());
    assert_eq!(submitted["document_type"], "passport");
    assert_eq!(
        submitted["document_number"], "AB123456",
        "normalized: upper case, no spaces"
    );
    assert_eq!(submitted["decided_by"], Value::Null);
    assert_eq!(submitted["decided_at"], Value::Null);
    assert!(
        e.outbox(types::USER_KYC_UPDATED).await.is_empty(),
        "nothing is decided yet"
    );

    let (status, body) = e
        .post(
            "/api/v1/kyc/submit",
            &passport("CD765432"),
            &Caller::user(user),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");

    let pending = e.status_of(user).await;
    assert_eq!(pending["kyc_status"], "pending");
    assert_eq!(pending["latest"]["id"], id.as_str());

    // Only compliance reviews.
    let approve = json!({"decision": "approve", "reason": "  the passport matches the selfie  "});
    let (status, body) = e.review(&id, &approve, &Caller::user(user)).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    let (status, body) = e.review(&id, &approve, &Caller::service("payment")).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    let (status, body) = e.review(&id, &approve, &Caller::anonymous()).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert_eq!(
        e.status_of(user).await["kyc_status"],
        "pending",
        "a refused review changes nothing"
    );
    assert!(e.outbox(types::USER_KYC_UPDATED).await.is_empty());

    let (status, body) = e.review(&id, &approve, &Caller::compliance()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    let decided = &body["data"];
    assert_eq!(decided["id"], id.as_str());
    assert_eq!(decided["status"], "verified");
    assert_eq!(decided["decided_by"], REVIEWER);
    assert_eq!(decided["reason"], "the passport matches the selfie");
    assert!(decided["decided_at"].is_string(), "{decided}");

    // The decision and its event committed together...
    let events = e.outbox(types::USER_KYC_UPDATED).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["type"], types::USER_KYC_UPDATED);
    assert_eq!(event["source"], "kyc");
    assert_eq!(
        event["data"],
        json!({"user_id": user, "kyc_status": "verified", "submission_id": id,
            "decided_at": decided["decided_at"]})
    );
    // A was told before the reviewer heard back, dated as the event is (A keeps the
    // newer of the two).
    assert_eq!(
        e.auth.told(user),
        [json!({"kyc_status": "verified", "decided_at": decided["decided_at"]})]
    );
    // ...and the relay published it where A's consumer picks it up.
    let published = e.broker.next_event().await;
    assert_eq!(event["id"], published.id.to_string());
    assert_eq!(published.event_type, types::USER_KYC_UPDATED);
    assert_eq!(published.source, "kyc");
    assert_eq!(published.data["user_id"], user.to_string());
    assert_eq!(published.data["kyc_status"], "verified");

    // A decision is final.
    let (status, body) = e
        .review(
            &id,
            &json!({"decision": "reject", "reason": "second thoughts"}),
            &Caller::compliance(),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
    assert_eq!(
        e.outbox(types::USER_KYC_UPDATED).await.len(),
        1,
        "one decision, one event"
    );

    let (status, body) = e
        .review(&Uuid::now_v7().to_string(), &approve, &Caller::compliance())
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    let (status, body) = e
        .review("not-a-uuid", &approve, &Caller::compliance())
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");

    let after = e.status_of(user).await;
    assert_eq!(after["kyc_status"], "verified");
    assert_eq!(
        after["latest"]["decided_by"], "compliance",
        "the customer is not told which officer decided"
    );
    assert!(!after.to_string().contains(REVIEWER), "{after}");
    assert_eq!(e.risk_score(user).await, 0);
}

#[tokio::test]
async fn rejecting_needs_a_reason_and_a_rejected_user_may_submit_again() {
    let e = TestE::spawn(&[]).await;
    let user = Uuid::new_v4();
    let first = e.submit(user, &passport("AB123456")).await;
    let id = first["id"].as_str().unwrap().to_owned();
    let reviewer = Caller::compliance();

    let (status, body) = e
        .review(&id, &json!({"decision": "reject"}), &reviewer)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let long = "x".repeat(501);
    for reason in ["", "   ", long.as_str()] {
        let (status, body) = e
            .review(
                &id,
                &json!({"decision": "reject", "reason": reason}),
                &reviewer,
            )
            .await;
        let error = assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert_eq!(error["details"]["field"], "reason", "{body}");
    }
    let (status, body) = e
        .review(
            &id,
            &json!({"decision": "maybe", "reason": "undecided"}),
            &reviewer,
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert_eq!(e.status_of(user).await["kyc_status"], "pending");
    assert!(e.outbox(types::USER_KYC_UPDATED).await.is_empty());

    let (status, body) = e
        .review(
            &id,
            &json!({"decision": "reject", "reason": "the photo is unreadable"}),
            &reviewer,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["data"]["status"], "rejected");
    assert_eq!(body["data"]["reason"], "the photo is unreadable");
    assert_eq!(body["data"]["decided_by"], REVIEWER);
    let events = e.outbox(types::USER_KYC_UPDATED).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0]["data"],
        json!({"user_id": user, "kyc_status": "rejected", "submission_id": id,
            "decided_at": body["data"]["decided_at"]})
    );
    assert_eq!(
        e.auth.told(user),
        [json!({"kyc_status": "rejected", "decided_at": body["data"]["decided_at"]})]
    );
    assert_eq!(e.status_of(user).await["kyc_status"], "rejected");

    // Nothing is pending any more: a new document may be submitted.
    let second = e.submit(user, &passport("AB123457")).await;
    assert_eq!(second["status"], "pending");
    assert_ne!(second["id"], first["id"]);
    let latest = e.status_of(user).await;
    assert_eq!(latest["kyc_status"], "pending");
    assert_eq!(latest["latest"]["id"], second["id"]);
}

#[tokio::test]
async fn with_automatic_approval_a_well_formed_document_is_verified_at_once() {
    let e = TestE::spawn(&["--kyc-auto-approve"]).await;
    let user = Uuid::new_v4();

    let verified = e.submit(user, &passport("ab 123 456")).await;
    assert_eq!(verified["status"], "verified");
    assert_eq!(verified["decided_by"], "auto");
    assert_eq!(verified["reason"], "well-formed document");
    assert_eq!(verified["document_number"], "AB123456");
    assert!(verified["decided_at"].is_string(), "{verified}");
    let submission_id = verified["id"].clone();
    let events = e.outbox(types::USER_KYC_UPDATED).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0]["data"],
        json!({"user_id": user, "kyc_status": "verified", "submission_id": submission_id,
            "decided_at": verified["decided_at"]})
    );
    assert_eq!(
        e.auth.told(user),
        [json!({"kyc_status": "verified", "decided_at": verified["decided_at"]})],
        "A has it before the client does"
    );
    let published = e.broker.next_event().await;
    assert_eq!(published.event_type, types::USER_KYC_UPDATED);
    assert_eq!(published.data["kyc_status"], "verified");
    assert_eq!(e.status_of(user).await["kyc_status"], "verified");

    // A driving licence number may carry hyphens; nothing is pending, so a second
    // document is taken and verified too.
    let licence = e
        .submit(
            user,
            &json!({
                "document_type": "driving_license",
                "document_number": "dl-1234-5678",
                "document_url": "https://docs.example.com/licence.png",
            }),
        )
        .await;
    assert_eq!(licence["status"], "verified");
    assert_eq!(licence["document_number"], "DL-1234-5678");
    assert_eq!(e.outbox(types::USER_KYC_UPDATED).await.len(), 2);
    let latest = e.status_of(user).await;
    assert_eq!(latest["latest"]["id"], licence["id"]);
}

#[tokio::test]
async fn a_malformed_document_is_refused_with_the_offending_field_even_with_automatic_approval() {
    let e = TestE::spawn(&["--kyc-auto-approve"]).await;
    let user = Caller::user(Uuid::new_v4());
    let file = json!({"content_type": "application/pdf", "data_base64": STANDARD.encode(pdf(64))});
    let cases = [
        ("document_number", passport("12345")),
        ("document_number", passport("ABC1234567")),
        ("document_number", passport("AB-12345")),
        ("document_number", passport("AB12345!")),
        (
            "document_number",
            json!({"document_type": "national_id", "document_number": "1234", "document_url": DOCUMENT_URL}),
        ),
        (
            "document_url",
            json!({"document_type": "passport", "document_number": "AB123456"}),
        ),
        (
            "document_url",
            json!({"document_type": "passport", "document_number": "AB123456", "document_url": "http://docs.example.com/p.pdf"}),
        ),
        (
            "document_url",
            json!({"document_type": "passport", "document_number": "AB123456", "document_url": "https://docs.example.com/a b.pdf"}),
        ),
        (
            "document_file",
            json!({"document_type": "passport", "document_number": "AB123456", "document_url": DOCUMENT_URL, "document_file": file}),
        ),
    ];
    for (field, body) in cases {
        let (status, answer) = e.post("/api/v1/kyc/submit", &body, &user).await;
        let error = assert_error(status, &answer, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert_eq!(error["details"]["field"], field, "{body}: {answer}");
    }

    // Bodies that do not even have the shape of a submission.
    for body in [
        json!({"document_type": "visa", "document_number": "AB123456", "document_url": DOCUMENT_URL}),
        json!({"document_type": "passport", "document_number": 123_456, "document_url": DOCUMENT_URL}),
        json!({"document_type": "passport", "document_number": "AB123456", "document_url": DOCUMENT_URL, "selfie": true}),
    ] {
        let (status, answer) = e.post("/api/v1/kyc/submit", &body, &user).await;
        let error = assert_error(status, &answer, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert_eq!(error["details"]["reason"], "invalid_field", "{answer}");
    }
    let (status, answer) = e
        .send(
            e.http
                .post(e.url("/api/v1/kyc/submit"))
                .header("content-type", "application/json")
                .body("{not json"),
            &user,
        )
        .await;
    let error = assert_error(status, &answer, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert_eq!(error["details"]["reason"], "malformed_json", "{answer}");

    // A service token is not a user with documents.
    let (status, answer) = e
        .post(
            "/api/v1/kyc/submit",
            &passport("AB123456"),
            &Caller::service("payment"),
        )
        .await;
    assert_error(status, &answer, StatusCode::FORBIDDEN, "FORBIDDEN");

    assert_eq!(
        e.count("SELECT count(*) FROM kyc_submissions").await,
        0,
        "nothing was stored"
    );
    assert_eq!(
        e.count("SELECT count(*) FROM outbox").await,
        0,
        "nothing was announced"
    );
}

/// The stored document of a submission.
#[derive(sqlx::FromRow)]
struct StoredDocument {
    document_url: Option<String>,
    document_content_type: Option<String>,
    document_size: Option<i32>,
    document_sha256: Option<Vec<u8>>,
    document_bytes: Option<Vec<u8>>,
}

#[tokio::test]
async fn an_uploaded_document_of_exactly_two_mebibytes_is_stored_with_its_type_size_and_digest() {
    let e = TestE::spawn(&[]).await;
    let user = Uuid::new_v4();
    let bytes = pdf(MAX_DOCUMENT_BYTES);
    let submitted = e.submit(user, &upload("application/pdf", &bytes)).await;
    assert_eq!(submitted["status"], "pending");
    assert_eq!(submitted["document_type"], "national_id");
    assert!(
        submitted.get("document_bytes").is_none(),
        "the file is not echoed back"
    );
    let id = Uuid::parse_str(submitted["id"].as_str().unwrap()).unwrap();
    let stored: StoredDocument = sqlx::query_as(
        "SELECT document_url, document_content_type, document_size, document_sha256, document_bytes \
         FROM kyc_submissions WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&e.db.pool)
    .await
    .unwrap();
    assert_eq!(stored.document_url, None);
    assert_eq!(
        stored.document_content_type.as_deref(),
        Some("application/pdf")
    );
    assert_eq!(
        stored.document_size,
        Some(i32::try_from(MAX_DOCUMENT_BYTES).unwrap())
    );
    assert_eq!(
        stored.document_sha256,
        Some(Sha256::digest(&bytes).to_vec())
    );
    assert!(
        stored.document_bytes == Some(bytes),
        "the stored bytes are the upload"
    );

    // PNG and JPEG are recognised too.
    for (content_type, file) in [("image/png", png()), ("image/jpeg", jpeg())] {
        let submitted = e.submit(Uuid::new_v4(), &upload(content_type, &file)).await;
        assert_eq!(submitted["status"], "pending", "{content_type}");
    }
    assert_eq!(e.count("SELECT count(*) FROM kyc_submissions").await, 3);
}

#[tokio::test]
async fn an_upload_over_two_mebibytes_or_not_what_its_content_type_claims_is_refused() {
    let e = TestE::spawn(&[]).await;
    let user = Caller::user(Uuid::new_v4());
    let cases = [
        (
            "one byte over 2 MiB",
            upload("application/pdf", &pdf(MAX_DOCUMENT_BYTES + 1)),
        ),
        ("PNG bytes declared as JPEG", upload("image/jpeg", &png())),
        ("a PDF declared as PNG", upload("image/png", &pdf(64))),
        (
            "text declared as PDF",
            upload("application/pdf", b"just some text, honest"),
        ),
        ("a GIF", upload("image/gif", b"GIF89a\x01\x00\x01\x00")),
        ("an empty file", upload("application/pdf", b"")),
        (
            "text that is not base64",
            json!({
                "document_type": "national_id",
                "document_number": "X1234567",
                "document_file": {"content_type": "application/pdf", "data_base64": "%%% not base64 %%%"},
            }),
        ),
    ];
    for (what, body) in cases {
        let (status, answer) = e.post("/api/v1/kyc/submit", &body, &user).await;
        let error = assert_error(status, &answer, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert_eq!(
            error["details"]["field"], "document_file",
            "{what}: {answer}"
        );
    }
    let (status, answer) = e
        .post("/api/v1/kyc/submit", &upload("image/jpeg", &png()), &user)
        .await;
    let error = assert_error(status, &answer, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert!(
        error["message"].as_str().unwrap().contains("image/png"),
        "the message names what the file really is: {answer}"
    );
    assert_eq!(
        e.count("SELECT count(*) FROM kyc_submissions").await,
        0,
        "nothing was stored"
    );
}

/// The submission route has a body limit of its own: the platform's default (256 KiB)
/// would refuse documents far below E's 2 MiB.
#[tokio::test]
async fn a_one_mebibyte_document_is_accepted_with_the_default_configuration() {
    let e = TestE::spawn(&[]).await;
    let submitted = e
        .submit(
            Uuid::new_v4(),
            &upload("application/pdf", &pdf(1024 * 1024)),
        )
        .await;
    assert_eq!(submitted["status"], "pending");
}

#[tokio::test]
async fn a_held_payment_raises_an_alert_only_compliance_sees_and_flagging_it_publishes_aml_flagged()
{
    let e = TestE::spawn(&[]).await;
    let (user, payment) = (Uuid::new_v4(), Uuid::new_v4());
    // C holds what is over its threshold (10 000, E's default too) and says so.
    e.broker
        .publish(&payment_event(user, payment, "15000.00", "ON_HOLD"))
        .await;
    let alerts = e.wait_for_alerts(user, 1).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    assert_eq!(alert["rule"], "amount_threshold");
    assert_eq!(alert["payment_id"], payment.to_string());
    assert_eq!(alert["status"], "open");
    assert_eq!(alert["decided_by"], Value::Null);
    assert_eq!(
        alert["details"],
        json!({"amount": "15000", "currency": "USD", "threshold": "10000"})
    );
    assert_eq!(
        e.count("SELECT count(*) FROM payment_observations").await,
        1
    );

    for who in [Caller::user(user), Caller::service("payment")] {
        let (status, body) = e.get("/api/v1/aml/alerts", &who).await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    }
    let (status, body) = e.get("/api/v1/aml/alerts", &Caller::anonymous()).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert_eq!(e.risk_score(user).await, 10, "ten points per open alert");

    let alert_id = alert["id"].as_str().unwrap().to_owned();
    let flag = format!("/api/v1/aml/alerts/{alert_id}/flag");
    let reason = "funds from a sanctioned source";
    let (status, body) = e
        .post(&flag, &json!({"reason": reason}), &Caller::user(user))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    let (status, body) = e
        .post(&flag, &json!({"reason": "  "}), &Caller::compliance())
        .await;
    let error = assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert_eq!(error["details"]["field"], "reason");
    let (status, body) = e.post(&flag, &json!({}), &Caller::compliance()).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert!(e.outbox(types::AML_FLAGGED).await.is_empty());

    let (status, body) = e
        .post(&flag, &json!({"reason": reason}), &Caller::compliance())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["data"]["id"], alert_id.as_str());
    assert_eq!(body["data"]["status"], "flagged");
    assert_eq!(body["data"]["decided_by"], REVIEWER);
    assert_eq!(body["data"]["reason"], reason);

    // C fails the held payment when it hears of the decision.
    let flagged = e.outbox(types::AML_FLAGGED).await;
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    let published = e.broker.next_event().await;
    assert_eq!(flagged[0]["id"], published.id.to_string());
    assert_eq!(published.event_type, types::AML_FLAGGED);
    assert_eq!(published.source, "kyc");
    assert_eq!(
        published.data,
        json!({
            "alert_id": alert_id,
            "payment_id": payment,
            "user_id": user,
            "rule": "amount_threshold",
            "reason": reason,
        })
    );
    assert_eq!(
        e.risk_score(user).await,
        40,
        "forty points per flagged alert"
    );

    // Decided once.
    let (status, body) = e
        .post(&flag, &json!({"reason": reason}), &Caller::compliance())
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
    let (status, body) = e
        .post(
            &format!("/api/v1/aml/alerts/{alert_id}/clear"),
            &json!({"reason": "changed my mind"}),
            &Caller::compliance(),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
    assert!(e.outbox(types::AML_CLEARED).await.is_empty());

    let reviewer = Caller::compliance();
    let (status, body) = e.get("/api/v1/aml/alerts?status=flagged", &reviewer).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["items"].as_array().unwrap().len(), 1, "{body}");
    let (status, body) = e.get("/api/v1/aml/alerts?status=open", &reviewer).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["items"], json!([]));
    let (status, body) = e.get("/api/v1/aml/alerts?status=closed", &reviewer).await;
    let error = assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert_eq!(error["details"]["field"], "status");
    let (status, body) = e.get("/api/v1/aml/alerts?user=me", &reviewer).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
}

#[tokio::test]
async fn a_flood_of_new_alerts_pushes_no_older_one_out_of_the_officers_reach() {
    let e = TestE::spawn(&[]).await;
    let (watched, flooder) = (Uuid::new_v4(), Uuid::new_v4());
    let first = Uuid::new_v4();
    e.broker
        .publish(&payment_event(watched, first, "15000.00", "ON_HOLD"))
        .await;
    e.wait_for_alerts(watched, 1).await;
    for _ in 0..4 {
        e.broker
            .publish(&payment_event(
                flooder,
                Uuid::new_v4(),
                "10000.01",
                "ON_HOLD",
            ))
            .await;
    }
    e.wait_for_alerts(flooder, 4).await;

    // Oldest first, two at a time: the watched user's alert leads, and every page
    // after it is reached by its cursor.
    let reviewer = Caller::compliance();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = match &cursor {
            Some(c) => format!("/api/v1/aml/alerts?status=open&limit=2&cursor={c}"),
            None => "/api/v1/aml/alerts?status=open&limit=2".to_owned(),
        };
        let (status, body) = e.get(&page, &reviewer).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let items = body["data"]["items"].as_array().unwrap();
        assert!(items.len() <= 2, "{body}");
        seen.extend(items.iter().map(|a| a["payment_id"].clone()));
        match body["data"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen[0], first.to_string());

    // One user's alerts alone; a cursor naming no alert is an empty page.
    let (status, body) = e
        .get(&format!("/api/v1/aml/alerts?user_id={watched}"), &reviewer)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["items"].as_array().unwrap().len(), 1, "{body}");
    let (status, body) = e
        .get(
            &format!("/api/v1/aml/alerts?cursor={}", Uuid::new_v4()),
            &reviewer,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["items"], json!([]));
    let (status, body) = e.get("/api/v1/aml/alerts?user_id=me", &reviewer).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
}

/// The velocity sum was read back as one amount: a payment near the largest amount after
/// any other in the window made every payment event of its user fail until it was
/// dead-lettered, a held one's alert with it (the payment then waited ON_HOLD, unseen
/// by compliance).
#[tokio::test]
async fn payments_whose_sum_is_past_the_largest_amount_are_observed_and_alerted_on() {
    let e = TestE::spawn(&[]).await;
    let monitor = Monitor { rules: rules() };
    let user = Uuid::new_v4();
    let (small, largest) = (Uuid::new_v4(), Uuid::new_v4());
    let events = [
        payment_event(user, small, "10.00", "PENDING"),
        payment_event(user, largest, "9999999999999999.9999", "ON_HOLD"),
    ];
    for event in &events {
        assert_eq!(e.observe(&monitor, event).await, Outcome::Applied);
    }
    let alerts = e.alerts_of(user).await;
    assert!(
        alerts
            .iter()
            .any(|a| a["payment_id"] == largest.to_string() && a["rule"] == "amount_threshold"),
        "the held payment's alert: {alerts:?}"
    );
    let velocity = alerts
        .iter()
        .find(|a| a["rule"] == "velocity")
        .unwrap_or_else(|| panic!("a velocity alert: {alerts:?}"));
    assert_eq!(velocity["payment_id"], largest.to_string());
    assert_eq!(velocity["details"]["total"], "10000000000000009.9999");
}

/// A burst split between E's two replicas: each transaction counted only the payments
/// it observed itself (a statement reads what was committed as it began), neither
/// reached the rule, and no later payment came to count them all.
#[tokio::test]
async fn payments_of_one_user_observed_by_two_replicas_at_once_are_counted_together() {
    use finflow_platform::events::consumer::Handler;

    let e = TestE::spawn(&[]).await;
    let monitor = Monitor { rules: rules() };
    let user = Uuid::new_v4();
    let mut replica = e.db.pool.begin().await.unwrap();
    let burst = [
        payment_event(user, Uuid::new_v4(), "9500.00", "PENDING"),
        payment_event(user, Uuid::new_v4(), "9600.00", "PENDING"),
    ];
    let burst: Vec<&Event> = burst.iter().collect();
    let outcomes = monitor.handle_batch(&mut replica, &burst).await.unwrap();
    assert!(outcomes.iter().all(Result::is_ok));

    let third = Uuid::new_v4();
    let other_replica = async {
        let mut tx = e.db.pool.begin().await.unwrap();
        let event = payment_event(user, third, "9700.00", "PENDING");
        monitor.handle(&mut tx, &event).await.unwrap();
        tx.commit().await.unwrap();
    };
    tokio::pin!(other_replica);
    // It waits for the first replica's transaction, or is done without it.
    let done_alone = tokio::select! {
        () = &mut other_replica => true,
        () = db::until_waiting_for_locks(&e.db.pool, 1) => false,
    };
    replica.commit().await.unwrap();
    if !done_alone {
        other_replica.await;
    }

    let alerts = e.alerts_of(user).await;
    assert_eq!(
        alerts.len(),
        1,
        "three just under the threshold: {alerts:?}"
    );
    assert_eq!(alerts[0]["rule"], "structuring");
    assert_eq!(alerts[0]["payment_id"], third.to_string());
}

#[tokio::test]
async fn three_payments_just_under_the_threshold_in_a_day_raise_a_structuring_alert() {
    let e = TestE::spawn(&[]).await;
    let monitor = Monitor { rules: rules() };
    let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
    // From 90 % of the threshold up to it counts; 8 999.99 does not.
    for amount in ["9500.00", "8999.99", "9999.99"] {
        e.observe(
            &monitor,
            &payment_event(user, Uuid::new_v4(), amount, "PENDING"),
        )
        .await;
    }
    e.observe(
        &monitor,
        &payment_event(other, Uuid::new_v4(), "9500.00", "PENDING"),
    )
    .await;
    assert!(
        e.alerts_of(user).await.is_empty(),
        "two payments just under the threshold are not a pattern yet"
    );

    let third = Uuid::new_v4();
    e.observe(&monitor, &payment_event(user, third, "9000.00", "PENDING"))
        .await;
    let alerts = e.alerts_of(user).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["rule"], "structuring");
    assert_eq!(alerts[0]["payment_id"], third.to_string());
    assert_eq!(alerts[0]["status"], "open");
    assert_eq!(alerts[0]["details"]["payments_just_under_threshold"], 3);
    assert!(
        e.alerts_of(other).await.is_empty(),
        "another user's payments do not count"
    );
    assert_eq!(e.risk_score(user).await, 10);
    assert_eq!(e.risk_score(other).await, 0);

    // The threshold itself is not held by C, so it is "just under" too; but while the
    // pattern's alert is open, more of the same is part of it, not a new alert.
    let fourth = Uuid::new_v4();
    e.observe(
        &monitor,
        &payment_event(user, fourth, "10000.00", "PENDING"),
    )
    .await;
    let alerts = e.alerts_of(user).await;
    assert_eq!(alerts.len(), 1, "one open alert per pattern: {alerts:?}");
    assert_eq!(e.risk_score(user).await, 10);

    // Clearing it lowers the score and tells C (which only acts on holding alerts).
    let id = alerts[0]["id"].as_str().unwrap().to_owned();
    let (status, body) = e
        .post(
            &format!("/api/v1/aml/alerts/{id}/clear"),
            &json!({"reason": "salary split across accounts"}),
            &Caller::compliance(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "cleared");
    assert_eq!(body["data"]["decided_by"], REVIEWER);
    let cleared = e.outbox(types::AML_CLEARED).await;
    assert_eq!(cleared.len(), 1, "{cleared:?}");
    assert_eq!(cleared[0]["data"]["alert_id"], id.as_str());
    assert_eq!(cleared[0]["data"]["rule"], "structuring");
    assert_eq!(cleared[0]["data"]["payment_id"], third.to_string());
    assert!(
        e.auth.held(third).is_empty(),
        "C acts on holding alerts only"
    );
    assert_eq!(
        e.risk_score(user).await,
        0,
        "a cleared alert counts nothing"
    );

    // Once decided, the pattern going on is a new alert for a reviewer.
    let fifth = Uuid::new_v4();
    e.observe(&monitor, &payment_event(user, fifth, "9500.00", "PENDING"))
        .await;
    let alerts = e.alerts_of(user).await;
    let newest = alerts
        .iter()
        .find(|a| a["payment_id"] == fifth.to_string() && a["rule"] == "structuring")
        .unwrap_or_else(|| panic!("a structuring alert for the fifth payment: {alerts:?}"));
    assert_eq!(newest["status"], "open");
    assert_eq!(newest["details"]["payments_just_under_threshold"], 5);
}

#[tokio::test]
async fn more_payments_or_more_money_than_the_velocity_limits_within_the_window_raise_a_velocity_alert()
 {
    let e = TestE::spawn(&[]).await;
    let monitor = Monitor { rules: rules() };

    // By count: twenty payments in the window are allowed, the twenty-first is not.
    let busy = Uuid::new_v4();
    for _ in 0..20 {
        e.observe(
            &monitor,
            &payment_event(busy, Uuid::new_v4(), "10.00", "PENDING"),
        )
        .await;
    }
    assert!(e.alerts_of(busy).await.is_empty());
    let twenty_first = Uuid::new_v4();
    e.observe(
        &monitor,
        &payment_event(busy, twenty_first, "10.00", "PENDING"),
    )
    .await;
    let alerts = e.alerts_of(busy).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["rule"], "velocity");
    assert_eq!(alerts[0]["payment_id"], twenty_first.to_string());
    assert_eq!(alerts[0]["status"], "open");
    assert_eq!(
        alerts[0]["details"],
        json!({"count": 21, "total": "210", "window_seconds": 600})
    );
    assert_eq!(e.risk_score(busy).await, 10);

    // By amount: 50 000 in the window is allowed, more is not. 8 000 is neither held
    // nor just under the threshold.
    let big = Uuid::new_v4();
    for _ in 0..6 {
        e.observe(
            &monitor,
            &payment_event(big, Uuid::new_v4(), "8000.00", "PENDING"),
        )
        .await;
    }
    assert!(
        e.alerts_of(big).await.is_empty(),
        "48 000 is within the limit"
    );
    let seventh = Uuid::new_v4();
    e.observe(&monitor, &payment_event(big, seventh, "8000.00", "PENDING"))
        .await;
    let alerts = e.alerts_of(big).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["rule"], "velocity");
    assert_eq!(alerts[0]["payment_id"], seventh.to_string());
    assert_eq!(alerts[0]["details"]["count"], 7);
    assert_eq!(alerts[0]["details"]["total"], "56000");

    // Only the window counts: payments seen eleven minutes ago are forgotten.
    let returning = Uuid::new_v4();
    for _ in 0..25 {
        sqlx::query(
            "INSERT INTO payment_observations (payment_id, user_id, amount, currency, reference_value, observed_at) \
             VALUES ($1, $2, 8000, 'USD', 8000, now() - interval '11 minutes')",
        )
        .bind(Uuid::new_v4())
        .bind(returning)
        .execute(&e.db.pool)
        .await
        .unwrap();
    }
    e.observe(
        &monitor,
        &payment_event(returning, Uuid::new_v4(), "10.00", "PENDING"),
    )
    .await;
    assert!(
        e.alerts_of(returning).await.is_empty(),
        "25 payments and 200 000 outside the window raise nothing"
    );
}

#[tokio::test]
async fn a_burst_past_the_payment_count_limit_is_one_velocity_alert_until_a_reviewer_decides_it() {
    let e = TestE::spawn(&[]).await;
    let monitor = Monitor { rules: rules() };
    let user = Uuid::new_v4();
    let pay = |payment: Uuid| payment_event(user, payment, "10.00", "PENDING");
    // Exactly the limit (twenty) raises nothing; the payment after it does.
    for _ in 0..20 {
        e.observe(&monitor, &pay(Uuid::new_v4())).await;
    }
    assert!(e.alerts_of(user).await.is_empty());
    let first_over = Uuid::new_v4();
    e.observe(&monitor, &pay(first_over)).await;
    // The burst goes on: the same pattern, still one alert.
    for _ in 0..4 {
        e.observe(&monitor, &pay(Uuid::new_v4())).await;
    }
    let alerts = e.alerts_of(user).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["rule"], "velocity");
    assert_eq!(alerts[0]["payment_id"], first_over.to_string());
    assert_eq!(alerts[0]["status"], "open");
    assert_eq!(alerts[0]["details"]["count"], 21);
    assert_eq!(e.risk_score(user).await, 10);

    let id = alerts[0]["id"].as_str().unwrap().to_owned();
    let (status, body) = e
        .post(
            &format!("/api/v1/aml/alerts/{id}/flag"),
            &json!({"reason": "card testing"}),
            &Caller::compliance(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Once decided, the next payment past the limit is a new alert, and only that one.
    let next = Uuid::new_v4();
    e.observe(&monitor, &pay(next)).await;
    e.observe(&monitor, &pay(Uuid::new_v4())).await;
    let alerts = e.alerts_of(user).await;
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    let open: Vec<_> = alerts.iter().filter(|a| a["status"] == "open").collect();
    assert_eq!(open.len(), 1, "{alerts:?}");
    assert_eq!(open[0]["rule"], "velocity");
    assert_eq!(open[0]["payment_id"], next.to_string());
    // The payment after it is added to it, not a third alert.
    assert_eq!(
        open[0]["details"],
        json!({"count": 26, "total": "260", "window_seconds": 600,
               "since_raised": {"count": 1, "total": "10"}})
    );
    assert_eq!(e.risk_score(user).await, 50, "one flagged, one open");
}

#[tokio::test]
async fn payments_made_while_a_velocity_alert_is_open_reach_its_reviewer() {
    let e = TestE::spawn(&[]).await;
    let monitor = Monitor { rules: rules() };
    let user = Uuid::new_v4();
    // A decoy: twenty-one payments of a cent open a velocity alert worth 0.21.
    for _ in 0..21 {
        e.observe(
            &monitor,
            &payment_event(user, Uuid::new_v4(), "0.01", "PENDING"),
        )
        .await;
    }
    // Then sums just under the hold threshold, past the window's amount limit.
    for _ in 0..6 {
        e.observe(
            &monitor,
            &payment_event(user, Uuid::new_v4(), "8999.00", "PENDING"),
        )
        .await;
    }
    let alerts = e.alerts_of(user).await;
    let velocity: Vec<_> = alerts.iter().filter(|a| a["rule"] == "velocity").collect();
    assert_eq!(velocity.len(), 1, "still one pattern: {alerts:?}");
    let details = &velocity[0]["details"];
    assert_eq!(details["count"], 21, "{details}");
    let total: Amount = details["since_raised"]["total"]
        .as_str()
        .unwrap_or_else(|| panic!("no since_raised in {details}"))
        .parse()
        .unwrap();
    assert_eq!(details["since_raised"]["count"], 6, "{details}");
    assert_eq!(total, Amount::parse("53994").unwrap(), "{details}");
}

#[tokio::test]
async fn a_held_payment_seen_again_or_released_later_is_counted_and_alerted_once() {
    let e = TestE::spawn(&[]).await;
    let monitor = Monitor { rules: rules() };
    let (user, payment) = (Uuid::new_v4(), Uuid::new_v4());
    let held = payment_event(user, payment, "15000.00", "ON_HOLD");
    assert_eq!(e.observe(&monitor, &held).await, Outcome::Applied);
    assert_eq!(
        e.observe(&monitor, &held).await,
        Outcome::Duplicate,
        "a redelivered event is skipped"
    );
    // The hold announced again under a new event id, then the release after a
    // compliance clearance (`payment.requested`, PENDING, same payment).
    for status in ["ON_HOLD", "PENDING"] {
        assert_eq!(
            e.observe(&monitor, &payment_event(user, payment, "15000.00", status))
                .await,
            Outcome::Applied
        );
    }
    let observed: i64 = db::scalar_of(
        &e.db.pool,
        "SELECT count(*) FROM payment_observations WHERE user_id = $1",
        user,
    )
    .await;
    assert_eq!(observed, 1, "one payment, observed once");
    let alerts = e.alerts_of(user).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["rule"], "amount_threshold");
    assert_eq!(alerts[0]["payment_id"], payment.to_string());
    assert_eq!(e.risk_score(user).await, 10);
}

#[tokio::test]
async fn the_risk_score_counts_ten_per_open_alert_forty_per_flagged_none_per_cleared_and_stops_at_100()
 {
    let e = TestE::spawn(&[]).await;
    let monitor = Monitor { rules: rules() };
    let user = Uuid::new_v4();
    let status = e.status_of(user).await;
    assert_eq!(status["kyc_status"], "none");
    assert_eq!(e.risk_score(user).await, 0);

    // Four held payments just over the threshold: four amount alerts, 40 000.04 in
    // the window, under the velocity limit.
    for _ in 0..4 {
        e.observe(
            &monitor,
            &payment_event(user, Uuid::new_v4(), "10000.01", "ON_HOLD"),
        )
        .await;
    }
    let alerts = e.alerts_of(user).await;
    assert_eq!(alerts.len(), 4, "{alerts:?}");
    assert!(alerts.iter().all(|a| a["rule"] == "amount_threshold"));
    assert_eq!(e.risk_score(user).await, 40);

    let reviewer = Caller::compliance();
    let flag = format!(
        "/api/v1/aml/alerts/{}/flag",
        alerts[0]["id"].as_str().unwrap()
    );
    let (status, body) = e
        .post(&flag, &json!({"reason": "mule account"}), &reviewer)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(e.risk_score(user).await, 70, "three open, one flagged");
    let clear = format!(
        "/api/v1/aml/alerts/{}/clear",
        alerts[1]["id"].as_str().unwrap()
    );
    let (status, body) = e
        .post(&clear, &json!({"reason": "invoice checked"}), &reviewer)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        e.risk_score(user).await,
        60,
        "two open, one flagged, one cleared"
    );

    // Three more: each is held (an amount alert) and takes the window over 50 000, one
    // velocity pattern (one alert while it is open).
    for _ in 0..3 {
        e.observe(
            &monitor,
            &payment_event(user, Uuid::new_v4(), "10000.01", "ON_HOLD"),
        )
        .await;
    }
    let alerts = e.alerts_of(user).await;
    assert_eq!(alerts.len(), 8, "{alerts:?}");
    assert_eq!(alerts.iter().filter(|a| a["rule"] == "velocity").count(), 1);
    assert_eq!(
        e.risk_score(user).await,
        100,
        "six open and one flagged alert would be 100; the score never goes higher"
    );
    // Two more held payments: seven open and one flagged would be 110, capped at 100.
    for _ in 0..2 {
        e.observe(
            &monitor,
            &payment_event(user, Uuid::new_v4(), "10000.01", "ON_HOLD"),
        )
        .await;
    }
    assert_eq!(e.alerts_of(user).await.len(), 10);
    assert_eq!(e.risk_score(user).await, 100, "capped");
}

#[tokio::test]
async fn a_compliance_officer_cannot_verify_their_own_documents_or_clear_their_own_alert() {
    let e = TestE::spawn(&[]).await;
    let officer = Uuid::new_v4();
    let submission = e.submit(officer, &passport("P7654321")).await;
    let id = submission["id"].as_str().unwrap();
    let approve = json!({"decision": "approve", "reason": "documents match"});
    let (status, body) = e
        .review(id, &approve, &Caller::compliance_as(officer))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    assert_eq!(e.status_of(officer).await["kyc_status"], "pending");
    assert!(e.outbox(types::USER_KYC_UPDATED).await.is_empty());
    let (status, body) = e
        .review(&Uuid::new_v4().to_string(), &approve, &Caller::compliance())
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    // Another officer may.
    let (status, body) = e.review(id, &approve, &Caller::compliance()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(e.status_of(officer).await["kyc_status"], "verified");

    e.broker
        .publish(&payment_event(
            officer,
            Uuid::new_v4(),
            "15000.00",
            "ON_HOLD",
        ))
        .await;
    let alert = e.wait_for_alerts(officer, 1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let clear = format!("/api/v1/aml/alerts/{alert}/clear");
    let reason = json!({"reason": "known customer"});
    let (status, body) = e
        .post(&clear, &reason, &Caller::compliance_as(officer))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    assert!(e.outbox(types::AML_CLEARED).await.is_empty());
    assert_eq!(e.alerts_of(officer).await[0]["status"], "open");
    let (status, body) = e
        .post(
            &format!("/api/v1/aml/alerts/{}/clear", Uuid::new_v4()),
            &reason,
            &Caller::compliance(),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    let (status, body) = e.post(&clear, &reason, &Caller::compliance()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(e.outbox(types::AML_CLEARED).await.len(), 1);
}

#[tokio::test]
async fn an_aml_risk_is_read_by_compliance_alone_and_never_by_whom_it_is_about() {
    let e = TestE::spawn(&[]).await;
    let (customer, officer) = (Uuid::new_v4(), Uuid::new_v4());
    for user in [customer, officer] {
        e.broker
            .publish(&payment_event(user, Uuid::new_v4(), "15000.00", "ON_HOLD"))
            .await;
        e.wait_for_alerts(user, 1).await;
    }
    // The customer: not in their status, and not at the staff route.
    let status = e.status_of(customer).await;
    assert!(status.get("risk_score").is_none(), "{status}");
    let risk = |user: Uuid| format!("/api/v1/aml/users/{user}/risk");
    let (status, body) = e.get(&risk(customer), &Caller::user(customer)).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    // An officer reads another's, but neither their own risk nor the alerts about them.
    assert_eq!(e.risk_score(officer).await, 10);
    let (status, body) = e.get(&risk(officer), &Caller::compliance_as(officer)).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    let (status, body) = e
        .get(&risk(customer), &Caller::compliance_as(officer))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["risk_score"], 10);
    let (status, body) = e
        .get("/api/v1/aml/alerts", &Caller::compliance_as(officer))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let about: Vec<&Value> = body["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["user_id"] == customer.to_string() || a["user_id"] == officer.to_string())
        .collect();
    assert_eq!(about.len(), 1, "{about:?}");
    assert_eq!(about[0]["user_id"], customer.to_string());
    let (status, body) = e
        .get("/api/v1/aml/users/not-a-uuid/risk", &Caller::compliance())
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
}

#[tokio::test]
async fn a_compliance_officer_cannot_clear_or_flag_a_held_transfer_paid_to_them() {
    let e = TestE::spawn(&[]).await;
    let (payer, officer) = (Uuid::new_v4(), Uuid::new_v4());
    // C names the payee of a transfer (the owner of its destination wallet).
    let mut held = payment_event(payer, Uuid::new_v4(), "15000.00", "ON_HOLD");
    held.data["payee_user_id"] = json!(officer);
    e.broker.publish(&held).await;
    let alert = e.wait_for_alerts(payer, 1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reason = json!({"reason": "known customer"});
    for action in ["clear", "flag"] {
        let (status, body) = e
            .post(
                &format!("/api/v1/aml/alerts/{alert}/{action}"),
                &reason,
                &Caller::compliance_as(officer),
            )
            .await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    }
    assert!(e.outbox(types::AML_CLEARED).await.is_empty());
    assert!(e.outbox(types::AML_FLAGGED).await.is_empty());
    assert_eq!(e.alerts_of(payer).await[0]["status"], "open");
    // Another officer may.
    let clear = format!("/api/v1/aml/alerts/{alert}/clear");
    let (status, body) = e.post(&clear, &reason, &Caller::compliance()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(e.outbox(types::AML_CLEARED).await.len(), 1);
}

/// A pattern alert stands for the user's payments around it, not only the one that
/// raised it, and while it is open their payments raise no other: an officer the user
/// paid meanwhile used to be free to clear it.
#[tokio::test]
async fn an_officer_the_user_paid_around_a_pattern_alert_cannot_decide_it() {
    let e = TestE::spawn(&[]).await;
    let monitor = Monitor { rules: rules() };
    let (user, officer) = (Uuid::new_v4(), Uuid::new_v4());
    for amount in ["9500.00", "9999.99", "9000.00"] {
        e.observe(
            &monitor,
            &payment_event(user, Uuid::new_v4(), amount, "PENDING"),
        )
        .await;
    }
    let mut to_officer = payment_event(user, Uuid::new_v4(), "50.00", "PENDING");
    to_officer.data["payee_user_id"] = json!(officer);
    e.observe(&monitor, &to_officer).await;
    let alerts = e.alerts_of(user).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["rule"], "structuring");
    let alert = alerts[0]["id"].as_str().unwrap().to_owned();

    let reason = json!({"reason": "a regular customer"});
    for action in ["clear", "flag"] {
        let (status, body) = e
            .post(
                &format!("/api/v1/aml/alerts/{alert}/{action}"),
                &reason,
                &Caller::compliance_as(officer),
            )
            .await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    }
    assert_eq!(e.alerts_of(user).await[0]["status"], "open");
    let clear = format!("/api/v1/aml/alerts/{alert}/clear");
    let (status, body) = e.post(&clear, &reason, &Caller::compliance()).await;
    assert_eq!(status, StatusCode::OK, "another officer may: {body}");
}

#[tokio::test]
async fn an_officer_the_user_paid_long_before_the_alert_still_cannot_decide_it() {
    let e = TestE::spawn(&[]).await;
    let monitor = Monitor {
        rules: Rules {
            max_count: 3,
            ..rules()
        },
    };
    let (user, officer) = (Uuid::new_v4(), Uuid::new_v4());
    let mut to_officer = payment_event(user, Uuid::new_v4(), "50.00", "PENDING");
    to_officer.data["payee_user_id"] = json!(officer);
    e.observe(&monitor, &to_officer).await;
    // A year ago: outside every window of the rules, so it raised nothing and counts
    // toward nothing; the interest stays.
    sqlx::query(
        "UPDATE payment_observations SET observed_at = now() - interval '365 days' \
         WHERE payee_user_id = $1",
    )
    .bind(officer)
    .execute(&e.db.pool)
    .await
    .unwrap();
    for _ in 0..4 {
        e.observe(
            &monitor,
            &payment_event(user, Uuid::new_v4(), "20.00", "PENDING"),
        )
        .await;
    }
    let alerts = e.alerts_of(user).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["rule"], "velocity");
    assert_eq!(
        alerts[0]["details"]["count"], 4,
        "the year-old payment is outside the window"
    );
    e.only_another_officer_clears(&alerts[0], officer).await;
}

#[tokio::test]
async fn an_officer_the_user_paid_cannot_release_the_user_s_held_payment_to_someone_else() {
    let e = TestE::spawn(&[]).await;
    let monitor = Monitor { rules: rules() };
    let (user, officer, held) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    // One dollar to the officer, then a large payment to a third party, held.
    let mut to_officer = payment_event(user, Uuid::new_v4(), "1.00", "PENDING");
    to_officer.data["payee_user_id"] = json!(officer);
    e.observe(&monitor, &to_officer).await;
    e.broker
        .publish(&payment_event(user, held, "50000.00", "ON_HOLD"))
        .await;
    let alerts = e.wait_for_alerts(user, 1).await;
    assert_eq!(alerts[0]["rule"], "amount_threshold");
    e.only_another_officer_clears(&alerts[0], officer).await;
    let told = e.auth.held(held);
    assert_eq!(
        told.len(),
        1,
        "C was told the other officer's decision alone: {told:?}"
    );
}

#[tokio::test]
async fn an_officer_who_exchanged_money_with_either_party_cannot_decide_the_held_transfer() {
    let e = TestE::spawn(&[]).await;
    let monitor = Monitor { rules: rules() };
    let (payer, payee, held) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let [paid_by_payee, paid_the_payer, paid_the_payee] = std::array::from_fn(|_| Uuid::new_v4());
    for (from, to) in [
        (payee, paid_by_payee),
        (paid_the_payer, payer),
        (paid_the_payee, payee),
    ] {
        let mut small = payment_event(from, Uuid::new_v4(), "1.00", "PENDING");
        small.data["payee_user_id"] = json!(to);
        e.observe(&monitor, &small).await;
    }
    let mut large = payment_event(payer, held, "50000.00", "ON_HOLD");
    large.data["payee_user_id"] = json!(payee);
    e.broker.publish(&large).await;
    let alerts = e.wait_for_alerts(payer, 1).await;
    let clear = format!(
        "/api/v1/aml/alerts/{}/clear",
        alerts[0]["id"].as_str().unwrap()
    );
    let reason = json!({"reason": "a regular customer"});

    for officer in [paid_by_payee, paid_the_payer, paid_the_payee] {
        let (status, body) = e
            .post(&clear, &reason, &Caller::compliance_as(officer))
            .await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
        assert_eq!(body["error"]["details"]["reason"], "party", "{body}");
    }
    assert!(e.auth.held(held).is_empty(), "C was told nothing yet");
    let (status, body) = e.post(&clear, &reason, &Caller::compliance()).await;
    assert_eq!(status, StatusCode::OK, "an uninvolved officer may: {body}");
    assert_eq!(e.auth.held(held).len(), 1);
}

#[tokio::test]
async fn a_payment_event_whose_amount_is_not_positive_is_refused_not_observed() {
    let e = TestE::spawn(&[]).await;
    let monitor = Monitor { rules: rules() };
    let user = Uuid::new_v4();
    // C accepts no such payment: forged on the bus, a negative one would take the
    // user's velocity total down and let large sums pass the rule.
    for amount in ["-99999999", "0", "0.00"] {
        let forged = payment_event(user, Uuid::new_v4(), amount, "PENDING");
        let queue = aml::payments_queue();
        let answer = consumer::apply_once(&e.db.pool, &queue.name, &monitor, &forged).await;
        assert!(
            matches!(&answer, Err(consumer::HandlerError::Permanent(why)) if why.contains("greater than zero")),
            "{amount}: {answer:?}"
        );
    }
    assert_eq!(
        e.count("SELECT count(*) FROM payment_observations").await,
        0
    );
}

#[tokio::test]
async fn a_decision_a_did_not_take_is_told_again_until_it_does() {
    let e = TestE::spawn(&["--kyc-auto-approve"]).await;
    let heard_at_once = Uuid::new_v4();
    e.submit(heard_at_once, &passport("AB123456")).await;
    assert_eq!(e.auth.told(heard_at_once).len(), 1);
    assert_eq!(
        e.count("SELECT count(*) FROM notices").await,
        0,
        "nothing left to tell"
    );

    // A is down for the request's call and the notifier's first: the decision reaches
    // A anyway (A takes none from the bus).
    e.auth.auth.down_for(2);
    let user = Uuid::new_v4();
    let verified = e.submit(user, &passport("CD123456")).await;
    assert_eq!(verified["status"], "verified");
    assert!(e.auth.told(user).is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while e.auth.told(user).is_empty() {
        assert!(std::time::Instant::now() < deadline, "A never told");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let told = e.auth.told(user);
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["kyc_status"], "verified");
    let decided = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    assert_eq!(
        decided(&told[0]["decided_at"]),
        decided(&verified["decided_at"])
    );
    while e.count("SELECT count(*) FROM notices").await > 0 {
        assert!(std::time::Instant::now() < deadline, "the notice stays");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_notice_tried_for_hours_is_still_told_and_holds_up_no_other() {
    let e = TestE::spawn(&["--kyc-auto-approve"]).await;
    e.auth.auth.down_for(1_000);
    let (revoked_long_ago, verified_now) = (Uuid::new_v4(), Uuid::new_v4());
    e.submit(revoked_long_ago, &passport("AB123456")).await;
    // As after almost five hours of A unreachable: 62 attempts, the next one due now.
    sqlx::query("UPDATE notices SET attempts = 62, next_attempt_at = now()")
        .execute(&e.db.pool)
        .await
        .unwrap();
    e.auth.auth.down_for(0);
    e.submit(verified_now, &passport("CD123456")).await;
    assert_eq!(e.auth.told(verified_now).len(), 1);

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while e.auth.told(revoked_long_ago).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the notifier stopped at the notice tried longest"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(e.count("SELECT count(*) FROM notices").await, 0);
}

#[tokio::test]
async fn the_decision_on_a_held_payment_reaches_c_by_call_and_again_after_c_was_down() {
    let e = TestE::spawn(&[]).await;
    let (user, first, second) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for payment in [first, second] {
        e.broker
            .publish(&payment_event(user, payment, "15000.00", "ON_HOLD"))
            .await;
    }
    let alerts = e.wait_for_alerts(user, 2).await;
    let alert_of = |payment: Uuid| {
        alerts
            .iter()
            .find(|a| a["payment_id"] == payment.to_string())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let reason = json!({"reason": "known customer"});

    let cleared = alert_of(first);
    let (status, body) = e
        .post(
            &format!("/api/v1/aml/alerts/{cleared}/clear"),
            &reason,
            &Caller::compliance(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let told = e.auth.held(first);
    assert_eq!(told.len(), 1, "before the officer is answered: {told:?}");
    assert_eq!(told[0]["alert_id"], cleared.as_str());
    assert_eq!(told[0]["outcome"], "cleared");

    // C is down for the officer's call and the notifier's first.
    e.auth.payment.down_for(2);
    let flagged = alert_of(second);
    let (status, body) = e
        .post(
            &format!("/api/v1/aml/alerts/{flagged}/flag"),
            &reason,
            &Caller::compliance(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(e.auth.held(second).is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while e.auth.held(second).is_empty() {
        assert!(std::time::Instant::now() < deadline, "C never told");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let told = e.auth.held(second);
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["alert_id"], flagged.as_str());
    assert_eq!(told[0]["outcome"], "flagged");
    while e.count("SELECT count(*) FROM notices").await > 0 {
        assert!(std::time::Instant::now() < deadline, "the notice stays");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn compliance_revokes_a_verification_and_a_hears_of_it_before_the_officer_does() {
    let e = TestE::spawn(&["--kyc-auto-approve"]).await;
    let user = Uuid::new_v4();
    let verified = e.submit(user, &passport("AB123456")).await;
    assert_eq!(verified["status"], "verified");
    let revoke = |who: Caller, reason: &str| {
        let e = &e;
        let body = json!({ "reason": reason });
        async move {
            e.post(&format!("/api/v1/kyc/users/{user}/revoke"), &body, &who)
                .await
        }
    };

    // Not a user's, not a service's, not an officer's own, and never without a reason.
    let (status, body) = revoke(Caller::user(user), "mine").await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    let (status, body) = revoke(Caller::service("payment"), "leaked token").await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    let (status, body) = revoke(Caller::compliance_as(user), "covering my tracks").await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    let (status, body) = revoke(Caller::compliance(), "   ").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert_eq!(e.status_of(user).await["kyc_status"], "verified");
    assert_eq!(e.auth.told(user).len(), 1, "only the approval so far");

    let (status, body) = revoke(Caller::compliance(), "  the passport was reported stolen ").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let revoked = &body["data"];
    assert_eq!(revoked["id"], verified["id"]);
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["revoked_by"], REVIEWER);
    assert_eq!(
        revoked["revoked_reason"],
        "the passport was reported stolen"
    );
    assert_eq!(
        revoked["decided_by"], "auto",
        "who approved it stays on record"
    );
    // A holds "rejected" already, dated after the approval, and the event says the same.
    let told = e.auth.told(user);
    assert_eq!(told.len(), 2, "{told:?}");
    assert_eq!(
        told[1],
        json!({"kyc_status": "rejected", "decided_at": revoked["revoked_at"]})
    );
    assert!(
        told[1]["decided_at"].as_str() > told[0]["decided_at"].as_str(),
        "{told:?}"
    );
    let events = e.outbox(types::USER_KYC_UPDATED).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        events[1]["data"],
        json!({"user_id": user, "kyc_status": "rejected", "submission_id": verified["id"],
            "decided_at": revoked["revoked_at"]})
    );
    let seen = e.status_of(user).await;
    assert_eq!(seen["kyc_status"], "revoked");
    // Why compliance revoked it stays with compliance: telling a customer "sanctions
    // match" or "linked to a structuring alert" tips them off.
    assert_eq!(seen["latest"]["revoked_by"], "compliance");
    assert!(seen["latest"]["revoked_reason"].is_null(), "{seen}");

    // Revoked already; a user who never submitted is unknown.
    let (status, body) = revoke(Caller::compliance(), "again").await;
    assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
    let (status, body) = e
        .post(
            &format!("/api/v1/kyc/users/{}/revoke", Uuid::new_v4()),
            &json!({"reason": "who?"}),
            &Caller::compliance(),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");

    // A new document verifies the user again.
    let again = e.submit(user, &passport("CD765432")).await;
    assert_eq!(again["status"], "verified");
    assert_eq!(e.auth.told(user).last().unwrap()["kyc_status"], "verified");
}

#[tokio::test]
async fn a_driving_licence_written_with_other_dashes_is_the_same_licence() {
    let e = TestE::spawn(&["--kyc-auto-approve"]).await;
    let (holder, second) = (Uuid::new_v4(), Uuid::new_v4());
    let licence = |number: &str| {
        json!({
            "document_type": "driving_license",
            "document_number": number,
            "document_url": "https://docs.example.com/licence.png",
        })
    };
    assert_eq!(
        e.submit(holder, &licence("D-1234-5678")).await["status"],
        "verified"
    );
    for spelling in ["D12345678", "d1234-5678", "D-12-34-56-78"] {
        let copy = e.submit(second, &licence(spelling)).await;
        assert_eq!(copy["status"], "pending", "{spelling}: {copy}");
        e.approval_refused_as_spoken_for(&copy).await;
    }
    let told = e.auth.told(second);
    assert!(
        told.iter().all(|t| t["kyc_status"] != "verified"),
        "never verified: {told:?}"
    );
}

#[tokio::test]
async fn a_licence_of_twenty_letters_and_digits_is_taken_with_its_dashes() {
    let e = TestE::spawn(&["--kyc-auto-approve"]).await;
    // The longest the rule allows: 39 characters as written.
    let number = "A-B-C-D-E-F-G-H-I-J-K-L-M-N-O-P-Q-R-S-T";
    let taken = e
        .submit(
            Uuid::new_v4(),
            &json!({
                "document_type": "driving_license",
                "document_number": number,
                "document_url": "https://docs.example.com/licence.png",
            }),
        )
        .await;
    assert_eq!(taken["status"], "verified", "{taken}");
    assert_eq!(taken["document_number"], number);
}

#[tokio::test]
async fn one_passport_verifies_one_account_and_a_revoked_one_verifies_none() {
    let e = TestE::spawn(&["--kyc-auto-approve"]).await;
    let (holder, second, third) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let approve = json!({"decision": "approve", "reason": "documents match"});
    assert_eq!(
        e.submit(holder, &passport("AB123456")).await["status"],
        "verified"
    );

    // The same passport on another account: not verified at once, and no officer may
    // verify it while the first account holds it.
    let copy = e.submit(second, &passport("AB123456")).await;
    assert_eq!(copy["status"], "pending");
    assert!(e.auth.told(second).is_empty());
    e.approval_refused_as_spoken_for(&copy).await;

    // Once compliance revoked it, the passport verifies no one: not its holder again,
    // not a new account.
    let (status, body) = e
        .post(
            &format!("/api/v1/kyc/users/{holder}/revoke"),
            &json!({"reason": "the passport was reported stolen"}),
            &Caller::compliance(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A new account first (only the revocation stands in its way), then the holder.
    for user in [third, holder] {
        let again = e.submit(user, &passport("AB123456")).await;
        assert_eq!(again["status"], "pending", "{user}");
        let (status, body) = e
            .review(
                again["id"].as_str().unwrap(),
                &approve,
                &Caller::compliance(),
            )
            .await;
        assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
    }
    assert_eq!(e.status_of(third).await["kyc_status"], "pending");
    assert_eq!(
        e.auth.told(holder).last().unwrap()["kyc_status"],
        "rejected",
        "the revocation is the holder's last word"
    );
}

#[tokio::test]
async fn aml_rules_weigh_what_payments_are_worth_not_how_many_units_they_count() {
    let e = TestE::spawn(&[]).await;
    let monitor = Monitor { rules: rules() };

    // Velocity: two payments of 700 CLF are about 57,400 USD, over the 50,000 limit,
    // though 1,400 units would pass any raw comparison.
    let user = Uuid::new_v4();
    e.observe(
        &monitor,
        &payment_event_in(user, Uuid::new_v4(), "700", "CLF", "PENDING"),
    )
    .await;
    assert!(e.alerts_of(user).await.is_empty());
    let second = Uuid::new_v4();
    e.observe(
        &monitor,
        &payment_event_in(user, second, "700", "CLF", "PENDING"),
    )
    .await;
    let alerts = e.alerts_of(user).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["rule"], "velocity");
    assert_eq!(alerts[0]["details"]["total"], "57400");

    // Structuring: 9,500 JPY is about 61 USD, nowhere near the threshold, however often.
    let yen = Uuid::new_v4();
    for _ in 0..5 {
        e.observe(
            &monitor,
            &payment_event_in(yen, Uuid::new_v4(), "9500", "JPY", "PENDING"),
        )
        .await;
    }
    assert!(e.alerts_of(yen).await.is_empty());

    // A currency E has no rate for counts as the largest sum: a reviewer looks.
    let odd = Uuid::new_v4();
    e.observe(
        &monitor,
        &payment_event_in(odd, Uuid::new_v4(), "1", "AFN", "PENDING"),
    )
    .await;
    let alerts = e.alerts_of(odd).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["rule"], "velocity");
}
