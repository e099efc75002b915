//! Service D against real PostgreSQL and RabbitMQ, a real SMTP conversation with a sink
//! run by the test, and a webhook receiver run by the test.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use finflow_contracts::sealed::{Addressee, SealKey};
use finflow_notification::Notification;
use finflow_notification::consumer::{Notifier, queue};
use finflow_notification::delivery::{self, SIGNATURE_HEADER};
use finflow_platform::db::{self, TestDb};
use finflow_platform::events::{self, Event, Publisher, consumer, types};
use finflow_platform::testing::{HttpsServer, Mailbox, TestService, smtp_sink};
use serde_json::{Value, json};
use uuid::Uuid;

/// The secret A and D share in these tests.
const MAIL_SEAL_KEY: &str = "a-secret-only-a-and-d-are-given-0123";

fn seal_key() -> SealKey {
    SealKey::parse(MAIL_SEAL_KEY).unwrap()
}

fn notifier() -> Notifier {
    Notifier {
        seal: seal_key(),
        previous_seal: None,
    }
}

/// `data` of an `event_type` with its token sealed as A seals it, for the addressee
/// the data names.
fn sealed_as_a_would(event_type: &str, mut data: Value) -> Value {
    if let Some(token) = data["token"].as_str().map(str::to_owned) {
        let email = data["email"].as_str().unwrap().to_owned();
        let to = Addressee {
            event_type,
            user_id: data["user_id"].as_str().unwrap().parse().unwrap(),
            email: &email,
        };
        data["token"] = Value::String(seal_key().seal(&token, &to));
    }
    data
}

/// D on a fresh database and vhost, mailing an SMTP sink.
#[derive(derive_more::Deref)]
struct TestD {
    #[deref]
    service: TestService,
    mailbox: Mailbox,
}

impl TestD {
    async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// D with `settings` (flag, value) in place of the test's own for the same flag.
    async fn spawn_with(settings: &[(&str, &str)]) -> Self {
        let (smtp_port, mailbox) = smtp_sink().await;
        let mut flags: Vec<(String, String)> = [
            ("--smtp-url", format!("smtp://127.0.0.1:{smtp_port}")),
            ("--delivery-retry-base-ms", "50".to_owned()),
            ("--delivery-poll-ms", "50".to_owned()),
            // The test's receivers run on loopback, which only an allow-list opens.
            ("--webhook-allow-nets", "127.0.0.1".to_owned()),
            ("--mail-seal-key", MAIL_SEAL_KEY.to_owned()),
        ]
        .into_iter()
        .map(|(flag, value)| (flag.to_owned(), value))
        .collect();
        for (flag, value) in settings {
            flags.retain(|(f, _)| f != flag);
            flags.push(((*flag).to_owned(), (*value).to_owned()));
        }
        let args: Vec<String> = flags
            .into_iter()
            .flat_map(|(flag, value)| [flag, value])
            .collect();
        Self {
            service: TestService::spawn::<Notification>(&args).await,
            mailbox,
        }
    }

    async fn as_user(
        &self,
        user: Uuid,
        req: reqwest::RequestBuilder,
    ) -> (reqwest::StatusCode, Value) {
        self.send(req, &[("x-user-id", &user.to_string())]).await
    }

    /// Publishes `event` where D's consumer will find it. The test declares D's queue
    /// and its bindings itself, exactly as D does: D declares the queue before it binds
    /// it, so waiting for the queue to exist could still publish into no binding and
    /// lose the event.
    async fn publish(&self, event: &Event) {
        let conn = self.vhost.broker().connect("d-test").await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        events::declare_queue(&ch, &finflow_notification::consumer::queue())
            .await
            .unwrap();
        Publisher::new(&conn)
            .await
            .unwrap()
            .publish(event, Default::default())
            .await
            .unwrap();
    }

    async fn wait_for_async<T, F: Future<Output = Option<T>>>(
        &self,
        what: &str,
        mut check: impl FnMut() -> F,
    ) -> T {
        for _ in 0..400 {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    async fn wait_for<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        self.wait_for_async(what, || std::future::ready(check()))
            .await
    }

    /// The first mail the SMTP sink received (recipients, message), once there is one.
    async fn first_mail(&self, what: &str) -> (Vec<String>, String) {
        self.wait_for(what, || self.mailbox.lock().unwrap().first().cloned())
            .await
    }

    /// Publishes A's event `event_type` with `data`, then waits for the `nth` mail the
    /// sink receives (1 the first): its recipients and text.
    async fn mail_for(&self, event_type: &str, data: Value, nth: usize) -> (Vec<String>, String) {
        let data = sealed_as_a_would(event_type, data);
        self.publish(&Event::new("auth", event_type, &data).unwrap())
            .await;
        self.wait_for(event_type, || {
            self.mailbox.lock().unwrap().get(nth - 1).cloned()
        })
        .await
    }
}

/// A webhook receiver run by the test: records each attempt (whether its signature
/// verified, its delivery id) and refuses the first `failures` with 503.
struct Receiver {
    url: String,
    attempts: Arc<Mutex<Vec<(bool, String)>>>,
    secret: Arc<Mutex<String>>,
    /// The https server, when the receiver is one: under a CA of its own.
    https: Option<HttpsServer>,
}

impl Receiver {
    /// A receiver over http.
    async fn start(failures: usize) -> Self {
        let (mut receiver, app) = Self::new(failures);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        receiver.url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    /// A receiver over https, under a CA of its own.
    async fn start_https(failures: usize) -> Self {
        let (mut receiver, app) = Self::new(failures);
        let server = HttpsServer::start(app).await;
        receiver.url = format!("{}/hook", server.base);
        receiver.https = Some(server);
        receiver
    }

    fn new(failures: usize) -> (Self, axum::Router) {
        let attempts: Arc<Mutex<Vec<(bool, String)>>> = Arc::default();
        let secret: Arc<Mutex<String>> = Arc::default();
        let (seen, key) = (attempts.clone(), secret.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let seen = seen.clone();
                let key = key.clone();
                async move {
                    let signature = headers
                        .get(SIGNATURE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let valid = delivery::verify(
                        &key.lock().unwrap(),
                        signature,
                        &body,
                        chrono::Utc::now().timestamp(),
                        300,
                    );
                    let delivery = headers
                        .get(delivery::DELIVERY_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let mut seen = seen.lock().unwrap();
                    seen.push((valid, delivery));
                    if seen.len() <= failures {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
        let receiver = Self {
            url: String::new(),
            attempts,
            secret,
            https: None,
        };
        (receiver, app)
    }
}

impl TestD {
    /// `user` asks D to register `url` as a webhook: D's answer.
    async fn post_webhook(
        &self,
        user: Uuid,
        url: &str,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let create = self.http.post(self.url("/api/v1/webhooks"));
        self.as_user(user, create.json(&json!({ "url": url })))
            .await
    }

    /// Registers `url` as `user`'s webhook; returns its signing secret.
    async fn register_webhook(&self, user: Uuid, url: &str) -> String {
        let (status, body) = self.post_webhook(user, url).await;
        assert_eq!(status, 201, "{body}");
        body["data"]["secret"].as_str().unwrap().to_owned()
    }

    /// Registers `url` as `user`'s webhook, which D refuses for its URL: the refusal.
    async fn refused_webhook(&self, user: Uuid, url: &str) -> serde_json::Value {
        let (status, body) = self.post_webhook(user, url).await;
        assert_eq!(status, 400, "{url:?}: {body}");
        assert_eq!(body["success"], false, "{url:?}: {body}");
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR", "{url:?}: {body}");
        assert_eq!(body["error"]["details"]["field"], "url", "{url:?}: {body}");
        body
    }

    /// Registers `receiver` as `user`'s webhook (telling it the signing secret), the only
    /// channel `user` is told about payments on.
    async fn webhook_only(&self, user: Uuid, receiver: &Receiver) {
        let secret = self.register_webhook(user, &receiver.url).await;
        *receiver.secret.lock().unwrap() = secret;
        self.only_webhooks_for_payments(user).await;
    }

    /// `user`'s delivery log, once its newest delivery has `status`.
    async fn delivery_log_once(&self, user: Uuid, status: &str) -> Value {
        self.wait_for_async(&format!("a delivery {status}"), || async {
            let (_, log) = self
                .as_user(
                    user,
                    self.http.get(self.url("/api/v1/notifications/deliveries")),
                )
                .await;
            (log["data"][0]["status"] == status).then_some(log)
        })
        .await
    }

    /// Turns email and in-app off for `payment.completed`, leaving only webhooks.
    async fn only_webhooks_for_payments(&self, user: Uuid) {
        self.turn_off_for_payments(user, &["email", "in_app"]).await;
    }

    /// Turns `channels` off for `payment.completed`.
    async fn turn_off_for_payments(&self, user: Uuid, channels: &[&str]) {
        for channel in channels {
            let (status, _) = self
                .as_user(
                    user,
                    self.http
                        .put(self.url("/api/v1/notifications/preferences"))
                        .json(&json!({"event_type": "payment.completed", "channel": channel, "enabled": false})),
                )
                .await;
            assert_eq!(status, 200);
        }
    }

    /// Makes `email` the address D knows for `user`, as `user.created` would.
    async fn know_address(&self, user: Uuid, email: &str) {
        sqlx::query(
            "INSERT INTO contacts (user_id, email, full_name) VALUES ($1, $2, 'Ada Lovelace')",
        )
        .bind(user)
        .bind(email)
        .execute(&self.db.pool)
        .await
        .unwrap();
    }

    /// Once D has handled `event`: how many in-app notifications it made, and its
    /// deliveries as (channel, target), sorted. D records the event in the transaction
    /// that writes them, so they are all there once it is recorded.
    async fn rows_of(&self, event: &Event) -> (i64, Vec<(String, String)>) {
        let pool = &self.db.pool;
        self.wait_for_async("the event handled", || async {
            db::scalar_of::<bool, _>(
                pool,
                "SELECT EXISTS (SELECT 1 FROM processed_events WHERE event_id = $1)",
                event.id,
            )
            .await
            .then_some(())
        })
        .await;
        let in_app: i64 = db::scalar_of(
            pool,
            "SELECT count(*) FROM notifications WHERE event_id = $1",
            event.id,
        )
        .await;
        let mut deliveries: Vec<(String, String)> =
            sqlx::query_as("SELECT channel, target FROM deliveries WHERE event_id = $1")
                .bind(event.id)
                .fetch_all(pool)
                .await
                .unwrap();
        // Sorted here, not by the database's collation, to compare with sorted Rust strings.
        deliveries.sort();
        (in_app, deliveries)
    }
}

fn payment_completed(user: Uuid) -> Event {
    Event::new(
        "payment",
        types::PAYMENT_COMPLETED,
        &json!({"payment_id": Uuid::new_v4(), "user_id": user, "kind": "transfer", "amount": "12.00", "currency": "USD"}),
    )
    .unwrap()
}

fn user_created(user: Uuid, email: &str) -> Event {
    Event::new(
        "auth",
        types::USER_CREATED,
        &json!({"user_id": user, "email": email, "full_name": "Ada Lovelace",
                "kyc_status": "pending", "account_tier": "bronze"}),
    )
    .unwrap()
}

#[tokio::test]
async fn a_new_user_gets_a_welcome_mail_over_smtp_and_an_in_app_notification() {
    let d = TestD::spawn().await;
    let user = Uuid::new_v4();
    d.publish(&user_created(user, "ada@example.com")).await;
    let (to, data) = d.first_mail("the welcome mail").await;
    assert_eq!(to, ["ada@example.com"]);
    assert!(data.contains("Subject: Welcome to FinFlow"), "{data}");
    assert!(data.contains("Ada Lovelace"), "{data}");

    let (status, body) = d
        .as_user(user, d.http.get(d.url("/api/v1/notifications?unread=true")))
        .await;
    assert_eq!(status, 200);
    let items = body["data"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    let id = items[0]["id"].as_str().unwrap();
    let (status, _) = d
        .as_user(
            user,
            d.http
                .post(d.url(&format!("/api/v1/notifications/{id}/read"))),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = d
        .as_user(user, d.http.get(d.url("/api/v1/notifications?unread=true")))
        .await;
    assert_eq!(body["data"], json!([]));
    // The sink has the mail as soon as it is sent; D records it a moment after.
    d.delivery_log_once(user, "delivered").await;
}

#[tokio::test]
async fn events_applied_together_tell_each_user_as_they_would_be_told_one_by_one() {
    let d = TestD::spawn().await;
    let (known, newcomer, quiet, unknown) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    d.know_address(known, "ada@example.com").await;
    d.know_address(quiet, "quiet@example.com").await;
    d.turn_off_for_payments(quiet, &["email"]).await;
    let (hook, _) = answering(StatusCode::OK, None).await;
    d.register_webhook(unknown, &hook).await;
    let together = [
        payment_completed(known),
        user_created(newcomer, "lin@example.com"),
        // Its address is the one the event before it in the same transaction recorded.
        payment_completed(newcomer),
        payment_completed(quiet),
        payment_completed(unknown),
    ];
    // Applied as D's consumer applies the events of a batch of deliveries: in one
    // transaction, through the handler's batch.
    let refs: Vec<&Event> = together.iter().collect();
    let outcomes = consumer::apply_batch(&d.db.pool, &queue().name, &notifier(), &refs)
        .await
        .unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| *o == Some(consumer::Outcome::Applied)),
        "{outcomes:?}"
    );

    let mail = |to: &str| vec![("email".to_owned(), to.to_owned())];
    assert_eq!(d.rows_of(&together[0]).await, (1, mail("ada@example.com")));
    assert_eq!(d.rows_of(&together[1]).await, (1, mail("lin@example.com")));
    assert_eq!(d.rows_of(&together[2]).await, (1, mail("lin@example.com")));
    assert_eq!(
        d.rows_of(&together[3]).await,
        (1, vec![]),
        "email turned off"
    );
    assert_eq!(
        d.rows_of(&together[4]).await,
        (1, vec![("webhook".to_owned(), hook)]),
        "no address known: the webhook only"
    );
    let told: i64 = db::scalar(&d.db.pool, "SELECT count(*) FROM notifications").await;
    assert_eq!(told, 5, "one in-app notification an event, no more");
}

#[tokio::test]
async fn a_user_who_turned_email_off_gets_a_payment_in_app_and_on_each_webhook_but_no_mail() {
    let d = TestD::spawn().await;
    let user = Uuid::new_v4();
    // An address is known: only the preference keeps the mail back.
    d.know_address(user, "ada@example.com").await;
    let (first, _) = answering(StatusCode::OK, None).await;
    let (second, _) = answering(StatusCode::OK, None).await;
    d.register_webhook(user, &first).await;
    d.register_webhook(user, &second).await;
    d.turn_off_for_payments(user, &["email"]).await;
    let payment = payment_completed(user);
    d.publish(&payment).await;

    let (in_app, deliveries) = d.rows_of(&payment).await;
    assert_eq!(in_app, 1);
    let mut hooks = vec![
        ("webhook".to_owned(), first),
        ("webhook".to_owned(), second),
    ];
    hooks.sort();
    assert_eq!(deliveries, hooks, "one per webhook, no email");
}

/// A payment's event names its payee for E; the payer's webhook and D's stored copies
/// do not, as C's API does not tell the payer who owns the wallet they paid.
#[tokio::test]
async fn a_payer_is_not_told_whom_their_payment_paid() {
    let d = TestD::spawn().await;
    let (payer, payee) = (Uuid::new_v4(), Uuid::new_v4());
    let (hook, _) = answering(StatusCode::OK, None).await;
    d.register_webhook(payer, &hook).await;
    let payment = Event::new(
        "payment",
        types::PAYMENT_COMPLETED,
        &json!({"payment_id": Uuid::new_v4(), "payee_user_id": payee, "user_id": payer,
                "kind": "transfer", "amount": "12.00", "currency": "USD"}),
    )
    .unwrap();
    d.publish(&payment).await;
    let (in_app, deliveries) = d.rows_of(&payment).await;
    assert_eq!((in_app, deliveries.len()), (1, 1));
    let told: i64 = db::scalar_of(
        &d.db.pool,
        "SELECT (SELECT count(*) FROM deliveries WHERE strpos(payload::text, $1) > 0) \
              + (SELECT count(*) FROM notifications WHERE strpos(body || title, $1) > 0)",
        payee.to_string(),
    )
    .await;
    assert_eq!(told, 0);
}

#[tokio::test]
async fn a_user_with_no_known_address_gets_a_payment_in_app_and_by_webhook_but_no_mail() {
    let d = TestD::spawn().await;
    let user = Uuid::new_v4();
    let (hook, _) = answering(StatusCode::OK, None).await;
    d.register_webhook(user, &hook).await;
    let payment = payment_completed(user);
    d.publish(&payment).await;

    let (in_app, deliveries) = d.rows_of(&payment).await;
    assert_eq!(in_app, 1);
    assert_eq!(deliveries, [("webhook".to_owned(), hook)]);
}

#[tokio::test]
async fn a_user_who_turned_in_app_and_webhooks_off_gets_a_payment_by_mail_only() {
    let d = TestD::spawn().await;
    let user = Uuid::new_v4();
    d.know_address(user, "ada@example.com").await;
    let (hook, hits) = answering(StatusCode::OK, None).await;
    d.register_webhook(user, &hook).await;
    d.turn_off_for_payments(user, &["in_app", "webhook"]).await;
    let payment = payment_completed(user);
    d.publish(&payment).await;

    let (in_app, deliveries) = d.rows_of(&payment).await;
    assert_eq!(in_app, 0);
    assert_eq!(
        deliveries,
        [("email".to_owned(), "ada@example.com".to_owned())]
    );
    let (to, _) = d.first_mail("the payment mail").await;
    assert_eq!(to, ["ada@example.com"]);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_webhook_that_fails_three_times_then_succeeds_gets_the_event_once_signed() {
    let d = TestD::spawn().await;
    let user = Uuid::new_v4();
    // The receiver: checks every signature, refuses the first three attempts.
    let receiver = Receiver::start(3).await;
    d.webhook_only(user, &receiver).await;
    let payment = payment_completed(user);
    d.publish(&payment).await;
    d.publish(&payment).await; // delivered twice by the broker: still one delivery
    let seen = receiver.attempts.clone();
    d.wait_for("the fourth attempt", || {
        (seen.lock().unwrap().len() >= 4).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let attempts = receiver.attempts.lock().unwrap().clone();
    assert_eq!(
        attempts.len(),
        4,
        "three failures, one success, nothing after: {attempts:?}"
    );
    assert!(
        attempts.iter().all(|(valid, _)| *valid),
        "every attempt is signed"
    );
    assert!(
        attempts.iter().all(|(_, id)| *id == attempts[0].1),
        "one delivery, retried"
    );

    let log = d.delivery_log_once(user, "delivered").await;
    let entries = log["data"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["attempts"], 4);
    assert!(d.mailbox.lock().unwrap().is_empty(), "email was turned off");
}

#[tokio::test]
async fn a_webhook_over_https_under_a_ca_d_is_told_to_trust_gets_the_event_signed() {
    let receiver = Receiver::start_https(0).await;
    let ca_file = receiver.https.as_ref().unwrap().certificate.ca_file();
    let d = TestD::spawn_with(&[("--webhook-ca-file", &ca_file.arg())]).await;
    let user = Uuid::new_v4();
    d.webhook_only(user, &receiver).await;
    d.publish(&payment_completed(user)).await;

    let log = d.delivery_log_once(user, "delivered").await;
    assert_eq!(log["data"][0]["attempts"], 1, "{log}");
    let attempts = receiver.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert!(attempts[0].0, "the body arrived signed");
}

#[tokio::test]
async fn a_webhook_over_https_whose_certificate_nothing_vouches_for_gets_nothing() {
    // The same receiver as a man in the middle would be: a valid certificate, from a
    // CA that D does not trust.
    let receiver = Receiver::start_https(0).await;
    let d = TestD::spawn_with(&[("--delivery-max-attempts", "2")]).await;
    let user = Uuid::new_v4();
    d.webhook_only(user, &receiver).await;
    d.publish(&payment_completed(user)).await;

    let log = d.delivery_log_once(user, "failed").await;
    assert_eq!(log["data"][0]["attempts"], 2, "{log}");
    let error = log["data"][0]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("certificate"), "the log says why: {log}");
    assert!(
        receiver.attempts.lock().unwrap().is_empty(),
        "no request reached the receiver"
    );
}

#[tokio::test]
async fn a_webhook_that_keeps_failing_is_given_up_after_the_configured_attempts() {
    let d = TestD::spawn_with(&[("--delivery-max-attempts", "3")]).await;
    let user = Uuid::new_v4();
    let receiver = Receiver::start(usize::MAX).await;
    d.webhook_only(user, &receiver).await;
    d.publish(&payment_completed(user)).await;

    let log = d.delivery_log_once(user, "failed").await;
    // Retries come 50, 100 ms apart: a fourth attempt would have come by now.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let attempts = receiver.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 3, "three attempts, then none: {attempts:?}");
    assert!(
        attempts.iter().all(|(valid, _)| *valid),
        "every attempt is signed"
    );
    let entries = log["data"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{log}");
    assert_eq!(entries[0]["attempts"], 3, "{log}");
    assert!(
        entries[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("503")),
        "the log says why: {log}"
    );
}

#[tokio::test]
async fn a_webhook_that_hangs_holds_up_no_other_user_s_mail() {
    // A send timeout longer than the test waits: only concurrent senders get the mail
    // through while the webhook call is held.
    let d = TestD::spawn_with(&[("--delivery-timeout-ms", "120000")]).await;
    let (stuck, other) = (Uuid::new_v4(), Uuid::new_v4());
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (gate, done) = (release.clone(), answered.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let (held, gate, done) = (held_tx.clone(), gate.clone(), done.clone());
            async move {
                let _ = held.send(());
                gate.notified().await;
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    d.register_webhook(stuck, &hook).await;
    d.only_webhooks_for_payments(stuck).await;
    d.publish(&payment_completed(stuck)).await;
    tokio::time::timeout(Duration::from_secs(20), held_rx.recv())
        .await
        .expect("the webhook call arrives")
        .unwrap();

    d.publish(&user_created(other, "lin@example.com")).await;
    let (to, _) = d.first_mail("the other user's welcome mail").await;
    assert_eq!(to, ["lin@example.com"]);
    assert_eq!(
        answered.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the mail went out while the webhook call was still held"
    );

    release.notify_one();
    let log = d.delivery_log_once(stuck, "delivered").await;
    assert_eq!(log["data"][0]["attempts"], 1, "{log}");
    assert_eq!(log["data"].as_array().unwrap().len(), 1, "{log}");
}

#[tokio::test]
async fn a_delivery_whose_attempts_all_died_mid_send_is_given_up_without_another_send() {
    let d = TestD::spawn_with(&[("--delivery-max-attempts", "3")]).await;
    let user = Uuid::new_v4();
    // Three claims whose senders never came back: each counted when it was claimed,
    // and the last lease has run out.
    sqlx::query(
        "INSERT INTO deliveries (id, user_id, event_id, event_type, channel, target, subject, body, \
         payload, status, attempts, claim, next_attempt_at) \
         VALUES ($1, $2, $3, 'user.created', 'email', 'ada@example.com', 'Welcome to FinFlow', 'Hello', \
         '{}', 'pending', 3, $4, now() - interval '1 second')",
    )
    .bind(Uuid::new_v4())
    .bind(user)
    .bind(Uuid::new_v4())
    .bind(Uuid::new_v4())
    .execute(&d.db.pool)
    .await
    .unwrap();
    let log = d.delivery_log_once(user, "failed").await;
    assert_eq!(log["data"][0]["attempts"], 4, "{log}");
    assert_eq!(
        log["data"][0]["last_error"], "no attempt finished within its lease",
        "{log}"
    );
    assert!(
        d.mailbox.lock().unwrap().is_empty(),
        "no fourth send past the limit"
    );
}

#[tokio::test]
async fn an_smtp_server_that_never_answers_costs_one_send_timeout_per_attempt() {
    // Accepts connections and says nothing, not even its greeting.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let smtp_url = format!("smtp://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let d = TestD::spawn_with(&[
        ("--smtp-url", &smtp_url),
        ("--delivery-timeout-ms", "300"),
        ("--delivery-max-attempts", "2"),
    ])
    .await;
    let user = Uuid::new_v4();
    d.publish(&user_created(user, "ada@example.com")).await;
    let log = d.delivery_log_once(user, "failed").await;
    let entry = &log["data"][0];
    assert_eq!(entry["channel"], "email", "{log}");
    assert_eq!(entry["attempts"], 2, "{log}");
    assert!(
        entry["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("no answer within")),
        "{log}"
    );
}

/// A receiver that answers every POST with `answer` (and `location`, if any) and counts
/// what it was sent.
async fn answering(
    answer: StatusCode,
    location: Option<String>,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let (counted, location) = (counted.clone(), location.clone());
            async move {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut headers = HeaderMap::new();
                if let Some(to) = location {
                    headers.insert("location", to.parse().unwrap());
                }
                (answer, headers)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

#[tokio::test]
async fn a_webhook_url_that_reaches_inside_the_platform_is_refused_with_400() {
    // No allow-list: what a deployment runs with.
    let d = TestD::spawn_with(&[("--webhook-allow-nets", "")]).await;
    let user = Uuid::new_v4();
    for url in [
        "http://127.0.0.1:9002/internal/transfers",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9002/",
        "http://[::ffff:127.0.0.1]:9002/",
        "http://localhost:9002/",
        "http://10.0.0.5/hook",
        "http://192.168.1.1/hook",
        "http://100.64.0.1/hook",
        "http://[fd00::1]/hook",
        "http://[fe80::1]/hook",
        "http://0.0.0.0:9002/",
        "http://2130706433:9002/",
        "https://user:secret@example.com/hook",
        "ftp://example.com/hook",
        "gopher://example.com/hook",
    ] {
        d.refused_webhook(user, url).await;
    }
    // A name is refused by its name: the answer never tells a caller the address an
    // internal name resolves to.
    let body = d.refused_webhook(user, "http://localhost:9002/").await;
    let said = body["error"]["message"].as_str().unwrap_or_default();
    assert!(said.contains("`localhost`"), "{body}");
    for address in ["127.0.0.1", "::1"] {
        assert!(
            !body.to_string().contains(address),
            "{address} told: {body}"
        );
    }
    let (_, hooks) = d.as_user(user, d.http.get(d.url("/api/v1/webhooks"))).await;
    assert_eq!(hooks["data"], json!([]), "nothing was registered");
}

#[tokio::test]
async fn a_webhook_url_a_parser_or_a_screen_would_read_otherwise_is_refused_not_stored() {
    let d = TestD::spawn().await;
    let user = Uuid::new_v4();
    for url in [
        // A WHATWG parser drops the control characters and sends to the host; the
        // stored text and the delivery log would show them.
        "\u{1}http://127.0.0.1:9/hook\u{1f}",
        // Shown right to left after the mark: `.../exe.png` reads as a picture.
        "http://127.0.0.1:9/\u{202e}gnp.exe",
        // A parser reads a host here that the text does not show as one.
        "http:127.0.0.1:9/hook",
    ] {
        d.refused_webhook(user, url).await;
    }
    let (_, hooks) = d.as_user(user, d.http.get(d.url("/api/v1/webhooks"))).await;
    assert_eq!(hooks["data"], json!([]), "nothing was registered");
    d.register_webhook(user, " http://127.0.0.1:9/hook\t").await;
    let (_, hooks) = d.as_user(user, d.http.get(d.url("/api/v1/webhooks"))).await;
    assert_eq!(
        hooks["data"][0]["url"], "http://127.0.0.1:9/hook",
        "stored trimmed"
    );
}

#[tokio::test]
async fn a_user_has_at_most_ten_webhooks_so_one_event_cannot_be_fanned_out_at_will() {
    let d = TestD::spawn().await;
    let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
    let url = "http://127.0.0.1:9/hook";
    for _ in 0..finflow_notification::api::MAX_WEBHOOKS_PER_USER {
        d.register_webhook(user, url).await;
    }
    // Any URL, before it is looked at: the account may add none (a name would cost a
    // lookup; this one would be refused by the policy).
    for url in [url, "http://169.254.169.254/latest/meta-data"] {
        let (status, body) = d.post_webhook(user, url).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "CONFLICT", "{body}");
        assert_eq!(
            body["error"]["details"]["reason"], "webhook_limit",
            "{body}"
        );
    }
    let (_, hooks) = d.as_user(user, d.http.get(d.url("/api/v1/webhooks"))).await;
    let hooks = hooks["data"].as_array().unwrap().clone();
    assert_eq!(hooks.len(), 10);

    // Another user's count is their own; deleting one makes room again.
    d.register_webhook(other, url).await;
    let first = hooks[0]["id"].as_str().unwrap();
    let (status, body) = d
        .as_user(
            user,
            d.http.delete(d.url(&format!("/api/v1/webhooks/{first}"))),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = d.post_webhook(user, url).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_webhook_already_stored_for_an_internal_address_is_refused_at_delivery() {
    // Rows from before the rule, or whose name now resolves inside: the sender checks
    // the address it is about to connect to, by literal and by name.
    let d = TestD::spawn_with(&[
        ("--webhook-allow-nets", ""),
        ("--delivery-max-attempts", "1"),
    ])
    .await;
    let user = Uuid::new_v4();
    let (literal, literal_hits) = answering(StatusCode::OK, None).await;
    let (named, named_hits) = answering(StatusCode::OK, None).await;
    let named = named.replace("127.0.0.1", "localhost");
    for url in [&literal, &named] {
        sqlx::query(
            "INSERT INTO webhooks (id, user_id, url, secret) VALUES ($1, $2, $3, 'whsec_x')",
        )
        .bind(Uuid::new_v4())
        .bind(user)
        .bind(url)
        .execute(&d.db.pool)
        .await
        .unwrap();
    }
    d.only_webhooks_for_payments(user).await;
    d.publish(&payment_completed(user)).await;
    let log = d
        .wait_for_async("both deliveries failed", || async {
            let (_, log) = d
                .as_user(user, d.http.get(d.url("/api/v1/notifications/deliveries")))
                .await;
            let entries = log["data"].as_array().cloned().unwrap_or_default();
            (entries.len() == 2 && entries.iter().all(|e| e["status"] == "failed"))
                .then_some(entries)
        })
        .await;
    for entry in &log {
        assert!(
            entry["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("public address")),
            "{entry}"
        );
    }
    assert_eq!(literal_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(named_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_webhook_answering_a_redirect_is_not_followed_and_the_delivery_fails() {
    let d = TestD::spawn_with(&[("--delivery-max-attempts", "1")]).await;
    let user = Uuid::new_v4();
    let (second, second_hits) = answering(StatusCode::OK, None).await;
    let (first, first_hits) = answering(StatusCode::TEMPORARY_REDIRECT, Some(second)).await;
    d.register_webhook(user, &first).await;
    d.only_webhooks_for_payments(user).await;
    d.publish(&payment_completed(user)).await;
    let log = d.delivery_log_once(user, "failed").await;
    assert!(
        log["data"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("307")),
        "{log}"
    );
    assert_eq!(first_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        second_hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the body and its signature went nowhere else"
    );
}

#[tokio::test]
async fn mails_about_access_go_by_email_only_to_the_event_s_address_whatever_the_preferences() {
    let d = TestD::spawn().await;
    let user = Uuid::new_v4();
    // A webhook that would hear of anything else, and every channel turned off (as a
    // row could say; the API refuses to set one for these events).
    let receiver = Receiver::start(0).await;
    let secret = d.register_webhook(user, &receiver.url).await;
    *receiver.secret.lock().unwrap() = secret;
    for event_type in [
        types::USER_VERIFICATION_REQUESTED,
        types::USER_REGISTRATION_REPEATED,
        types::USER_PASSWORD_RESET_REQUESTED,
        types::USER_PASSWORD_CHANGED,
    ] {
        for channel in ["email", "in_app", "webhook"] {
            sqlx::query(
                "INSERT INTO preferences (user_id, event_type, channel, enabled) VALUES ($1, $2, $3, false)",
            )
            .bind(user)
            .bind(event_type)
            .bind(channel)
            .execute(&d.db.pool)
            .await
            .unwrap();
        }
        let (status, body) = d
            .as_user(
                user,
                d.http
                    .put(d.url("/api/v1/notifications/preferences"))
                    .json(&json!({"event_type": event_type, "channel": "email", "enabled": false})),
            )
            .await;
        assert_eq!(status, 400, "{event_type} is not optional: {body}");
    }

    let token = "dG9rZW4tb2YtdGhlLXRlc3QtMDEyMzQ1Njc4OWFiY2Q";
    let (to, data) = d
        .mail_for(
            types::USER_VERIFICATION_REQUESTED,
            json!({"user_id": user, "email": "ada@example.com", "full_name": "Ada Lovelace",
                   "token": token, "expires_at": "2026-12-06T10:00:00Z"}),
            1,
        )
        .await;
    assert_eq!(to, ["ada@example.com"]);
    assert!(
        data.contains("Subject: Confirm your email address"),
        "{data}"
    );
    assert!(
        data.contains("Content-Transfer-Encoding: 7bit")
            && data.replace("\r\n", "\n").contains(&format!(
                "POST /api/v1/auth/verify with the body\n\n{{\"token\":\"{token}\"}}\n"
            )),
        "{data}"
    );

    let (to, data) = d
        .mail_for(
            types::USER_REGISTRATION_REPEATED,
            json!({"user_id": user, "email": "ada@example.com"}),
            2,
        )
        .await;
    assert_eq!(to, ["ada@example.com"]);
    assert!(
        data.contains("Subject: Someone tried to sign up with your address"),
        "{data}"
    );

    // A changed password is told at the account's address even when its owner turned
    // every channel off: whoever changed it could have done that first.
    let (to, data) = d
        .mail_for(
            types::USER_PASSWORD_CHANGED,
            json!({"user_id": user, "email": "ada@example.com", "changed_at": "2026-12-07T03:00:00Z"}),
            3,
        )
        .await;
    assert_eq!(to, ["ada@example.com"]);
    assert!(
        data.contains("Subject: Your FinFlow password was changed"),
        "{data}"
    );

    let reset_token = "cmVzZXQtdG9rZW4tb2YtdGhlLXRlc3QtMDEyMzQ1Njc4OWE";
    let (to, data) = d
        .mail_for(
            types::USER_PASSWORD_RESET_REQUESTED,
            json!({"user_id": user, "email": "ada@example.com", "token": reset_token,
                   "expires_at": "2026-12-07T04:00:00Z"}),
            4,
        )
        .await;
    assert_eq!(to, ["ada@example.com"]);
    assert!(
        data.contains("Subject: Reset your FinFlow password")
            && data.contains(&format!("{{\"token\":\"{reset_token}\"}}")),
        "{data}"
    );

    let log = d
        .wait_for_async("every delivery recorded", || async {
            let (_, log) = d
                .as_user(user, d.http.get(d.url("/api/v1/notifications/deliveries")))
                .await;
            let entries = log["data"].as_array().cloned().unwrap_or_default();
            (entries.len() == 4 && entries.iter().all(|e| e["status"] == "delivered"))
                .then_some(entries)
        })
        .await;
    assert!(log.iter().all(|e| e["channel"] == "email"), "{log:?}");
    // Nothing else: no in-app notification, no webhook call, no contact learned, and
    // the token kept nowhere but in the mail.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, inbox) = d
        .as_user(user, d.http.get(d.url("/api/v1/notifications")))
        .await;
    assert_eq!(inbox["data"], json!([]));
    assert!(receiver.attempts.lock().unwrap().is_empty());
    let contacts: i64 = db::scalar(&d.db.pool, "SELECT count(*) FROM contacts").await;
    assert_eq!(contacts, 0, "an unverified address is no contact");
    let rows_with_a_token: i64 = db::scalar_of(
        &d.db.pool,
        "SELECT count(*) FROM deliveries, unnest($1::text[]) AS t(token) \
         WHERE strpos(payload::text || body, token) > 0",
        &[token, reset_token][..],
    )
    .await;
    assert_eq!(rows_with_a_token, 0);
}

/// A stolen access token is enough to add a webhook; its owner used to hear nothing of it.
#[tokio::test]
async fn adding_a_webhook_is_mailed_to_the_owner_whatever_the_preferences() {
    let d = TestD::spawn().await;
    let user = Uuid::new_v4();
    d.publish(&user_created(user, "ada@example.com")).await;
    let (to, _) = d.first_mail("the welcome mail").await;
    assert_eq!(to, ["ada@example.com"]);
    let preferences = d.url("/api/v1/notifications/preferences");
    for event_type in ["webhook.added", "webhook.created"] {
        let body = json!({"event_type": event_type, "channel": "email", "enabled": false});
        let (status, body) = d.as_user(user, d.http.put(&preferences).json(&body)).await;
        assert_eq!(status, 400, "cannot be turned off: {body}");
    }

    let (hook, _) = answering(StatusCode::OK, None).await;
    d.register_webhook(user, &format!("{hook}?token=receivers-own-secret"))
        .await;
    let (to, data) = d
        .wait_for("the webhook mail", || {
            d.mailbox.lock().unwrap().get(1).cloned()
        })
        .await;
    assert_eq!(to, ["ada@example.com"]);
    let data = data.replace("=\r\n", "");
    assert!(
        data.contains("Subject: A webhook was added to your FinFlow account"),
        "{data}"
    );
    assert!(data.contains("127.0.0.1"), "the host: {data}");
    assert!(
        !data.contains("receivers-own-secret"),
        "not the rest of the URL: {data}"
    );
}

/// A webhook is a standing feed of the account's activity, and a stolen access token was
/// enough to add one: it outlived the password reset and the sign-out everywhere that
/// locked the thief out of the account itself.
#[tokio::test]
async fn a_password_replaced_removes_the_account_s_webhooks_and_the_mail_says_so() {
    let d = TestD::spawn().await;
    let (user, bystander) = (Uuid::new_v4(), Uuid::new_v4());
    let (hook, _) = answering(StatusCode::OK, None).await;
    d.register_webhook(user, &hook).await;
    d.register_webhook(bystander, &hook).await;
    sqlx::query(
        "INSERT INTO deliveries (id, user_id, event_id, event_type, channel, target, webhook_id, \
         subject, body, payload, status, next_attempt_at) \
         SELECT $1, user_id, $2, 'payment.completed', 'webhook', url, id, 'Paid', 'Paid', '{}', \
           'pending', now() + interval '1 hour' FROM webhooks WHERE user_id = $3",
    )
    .bind(Uuid::new_v4())
    .bind(Uuid::new_v4())
    .bind(user)
    .execute(&d.db.pool)
    .await
    .unwrap();

    let (to, data) = d
        .mail_for(
            types::USER_PASSWORD_CHANGED,
            json!({"user_id": user, "email": "ada@example.com",
                   "changed_at": "2026-12-07T03:00:00Z", "via": "reset"}),
            1,
        )
        .await;
    assert_eq!(to, ["ada@example.com"]);
    let data = data.replace("=\r\n", "");
    assert!(
        data.contains("account's 1 webhook was removed too"),
        "{data}"
    );
    let (_, hooks) = d.as_user(user, d.http.get(d.url("/api/v1/webhooks"))).await;
    assert_eq!(hooks["data"], json!([]), "{hooks}");
    let (_, hooks) = d
        .as_user(bystander, d.http.get(d.url("/api/v1/webhooks")))
        .await;
    assert_eq!(
        hooks["data"].as_array().unwrap().len(),
        1,
        "not another user's"
    );
    let pending: i64 = db::scalar_of(
        &d.db.pool,
        "SELECT count(*) FROM deliveries WHERE user_id = $1 AND channel = 'webhook' \
         AND status = 'pending'",
        user,
    )
    .await;
    assert_eq!(pending, 0, "nothing more goes to the removed webhook");

    // A session from before the change (an access token lives up to an hour) cannot
    // add one back.
    let (status, body) = d.post_webhook(user, &hook).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"]["details"]["reason"], "password_replaced",
        "{body}"
    );
    let (status, body) = d.post_webhook(bystander, &hook).await;
    assert_eq!(status, 201, "another user may: {body}");
}

/// A receiver that never answers keeps every delivery pending through its attempts, and
/// a user can cause events at will: the deliveries table grew by each of them.
#[tokio::test]
async fn a_webhook_with_a_thousand_deliveries_pending_is_queued_no_more() {
    let d = TestD::spawn().await;
    let (flooded, other) = (Uuid::new_v4(), Uuid::new_v4());
    let (hook, _) = answering(StatusCode::OK, None).await;
    for user in [flooded, other] {
        d.register_webhook(user, &hook).await;
        d.only_webhooks_for_payments(user).await;
    }
    // Pending, and not due for an hour: the senders leave them be.
    sqlx::query(
        "INSERT INTO deliveries (id, user_id, event_id, event_type, channel, target, webhook_id, \
           subject, body, payload, status, next_attempt_at) \
         SELECT gen_random_uuid(), w.user_id, gen_random_uuid(), 'payment.completed', 'webhook', \
           w.url, w.id, 'Paid', 'Paid', '{}', 'pending', now() + interval '1 hour' \
         FROM webhooks w, generate_series(1, $2) WHERE w.user_id = $1",
    )
    .bind(flooded)
    .bind(i32::try_from(finflow_notification::consumer::MAX_PENDING_PER_WEBHOOK).unwrap())
    .execute(&d.db.pool)
    .await
    .unwrap();

    d.publish(&payment_completed(flooded)).await;
    d.publish(&payment_completed(other)).await;
    d.delivery_log_once(other, "delivered").await;
    let pending = |user: Uuid| {
        db::scalar_of::<i64, _>(
            &d.db.pool,
            "SELECT count(*) FROM deliveries WHERE user_id = $1 AND channel = 'webhook'",
            user,
        )
    };
    assert_eq!(
        pending(flooded).await,
        finflow_notification::consumer::MAX_PENDING_PER_WEBHOOK,
        "no more for the flooded webhook"
    );
    assert_eq!(pending(other).await, 1, "another user's webhook as before");
}

/// Each webhook added mails its owner: deleting and adding one again at will would
/// have flooded the mail senders that sign-up and reset mails go through.
#[tokio::test]
async fn a_user_adds_at_most_ten_webhooks_an_hour() {
    let d = TestD::spawn().await;
    let user = Uuid::new_v4();
    d.publish(&user_created(user, "ada@example.com")).await;
    d.first_mail("the welcome mail").await;
    let (hook, _) = answering(StatusCode::OK, None).await;
    for _ in 0..10 {
        let (status, body) = d.post_webhook(user, &hook).await;
        assert_eq!(status, 201, "{body}");
        let id = body["data"]["id"].as_str().unwrap();
        let delete = d.http.delete(d.url(&format!("/api/v1/webhooks/{id}")));
        let (status, body) = d.as_user(user, delete).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = d.post_webhook(user, &hook).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "RATE_LIMITED", "{body}");
}

#[tokio::test]
async fn a_sender_claims_the_due_mails_together_and_records_them_in_one_go() {
    let db = TestDb::new(Some(&finflow_notification::MIGRATIONS)).await;
    let (sender, mailbox) = sender_to_a_sink(&db).await;
    let user = Uuid::new_v4();
    for i in 0..20 {
        sqlx::query(
            "INSERT INTO deliveries (id, user_id, event_id, event_type, channel, target, subject, body, \
             payload, status) \
             VALUES ($1, $2, $3, 'payment.completed', 'email', $4, 'Payment completed', 'Done', '{}', 'pending')",
        )
        .bind(Uuid::new_v4())
        .bind(user)
        .bind(Uuid::new_v4())
        .bind(format!("user{i}@example.com"))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let delivered = || async {
        db::scalar::<i64>(&db.pool, "SELECT count(*) FROM deliveries WHERE status = 'delivered' AND attempts = 1 AND claim IS NULL").await
    };
    // One round: a batch of 16 claimed under one claim, sent, recorded.
    assert!(sender.deliver_next(delivery::Lane::Email).await.unwrap());
    assert_eq!(delivered().await, 16);
    assert_eq!(mailbox.lock().unwrap().len(), 16);
    assert!(sender.deliver_next(delivery::Lane::Email).await.unwrap());
    assert_eq!(delivered().await, 20);
    assert!(
        !sender.deliver_next(delivery::Lane::Email).await.unwrap(),
        "nothing is due any more"
    );
    assert_eq!(mailbox.lock().unwrap().len(), 20, "each mail sent once");
}

/// A webhook of `user` at `url`, and `count` deliveries of events to it, due since
/// `due_since` (older ones are claimed first).
async fn webhook_deliveries(db: &TestDb, user: Uuid, url: &str, count: usize, due_since: &str) {
    // One statement: the webhook, and its deliveries from a series.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH hook AS ( \
           INSERT INTO webhooks (id, user_id, url, secret) \
           VALUES (gen_random_uuid(), $1, $2, 'whsec') RETURNING id) \
         INSERT INTO deliveries (id, user_id, event_id, event_type, channel, target, webhook_id, \
           subject, body, payload, status, next_attempt_at) \
         SELECT gen_random_uuid(), $1, gen_random_uuid(), 'wallet.status_changed', 'webhook', \
           $2, hook.id, 'Wallet', 'Changed', '{{}}', 'pending', \
           now() - interval '{due_since}' + n * interval '1 millisecond' \
         FROM hook, generate_series(1, {count}) AS n"
    )))
    .bind(user)
    .bind(url)
    .execute(&db.pool)
    .await
    .unwrap();
}

/// A receiver that takes connections and never answers; its URL.
async fn hanging_receiver() -> String {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    url
}

/// A user's webhooks to a host that never answers, fed by events they can cause at
/// will (a wallet frozen and unfrozen, fifty times a second): every sender's batch used
/// to be theirs, and a password reset mail waited behind them for as long as they kept
/// it up.
#[tokio::test]
async fn mails_go_out_while_one_user_s_hanging_webhooks_hold_every_webhook_sender() {
    let db = TestDb::new(Some(&finflow_notification::MIGRATIONS)).await;
    let (mut sender, mailbox) = sender_to_a_sink(&db).await;
    sender.send_timeout = Duration::from_secs(120);
    let hook = hanging_receiver().await;
    webhook_deliveries(&db, Uuid::new_v4(), &hook, 64, "1 minute").await;
    sqlx::query(
        "INSERT INTO deliveries (id, user_id, event_id, event_type, channel, target, subject, body, \
         payload, status) \
         VALUES ($1, $2, $3, 'user.password_reset_requested', 'email', 'ada@example.com', \
         'Reset your password', 'token', '{}', 'pending')",
    )
    .bind(Uuid::new_v4())
    .bind(Uuid::new_v4())
    .bind(Uuid::new_v4())
    .execute(&db.pool)
    .await
    .unwrap();

    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(sender.run(2, Duration::from_millis(20), stop.clone()));
    // Far shorter than the send timeout the webhook calls hang for.
    let mailed = tokio::time::timeout(Duration::from_secs(30), async {
        while mailbox.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    stop.cancel();
    running.abort();
    assert!(mailed.is_ok(), "the reset mail waited behind the webhooks");
}

/// Nor do they take another user's webhook's turn: a webhook has one attempt in flight
/// at a time, so a sender's batch holds at most one of theirs.
#[tokio::test]
async fn one_user_s_hanging_webhook_takes_one_place_in_a_batch_not_another_user_s_turn() {
    let db = TestDb::new(Some(&finflow_notification::MIGRATIONS)).await;
    let (mut sender, _) = sender_to_a_sink(&db).await;
    sender.send_timeout = Duration::from_millis(500);
    let (healthy, received) = answering(StatusCode::OK, None).await;
    webhook_deliveries(
        &db,
        Uuid::new_v4(),
        &hanging_receiver().await,
        40,
        "1 minute",
    )
    .await;
    let other = Uuid::new_v4();
    webhook_deliveries(&db, other, &healthy, 1, "1 second").await;

    assert!(sender.deliver_next(delivery::Lane::Webhook).await.unwrap());
    let delivered: i64 = delivered_to(&db, other).await;
    assert_eq!(
        delivered, 1,
        "the other user's webhook got its event in the first round"
    );
    assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 1);
    let attempts: i64 = db::scalar_of(
        &db.pool,
        "SELECT COALESCE(sum(attempts), 0)::bigint FROM deliveries WHERE user_id <> $1",
        other,
    )
    .await;
    assert_eq!(attempts, 1, "one call to the hanging webhook, not sixteen");
}

/// Nor do several users' together: each has two calls in flight at most, so twenty
/// hanging webhooks of two users (more than a sender's batch) leave room in the first
/// round for a third user's webhook, however much older their events are.
#[tokio::test]
async fn users_whose_webhooks_hang_hold_two_places_each_and_leave_room_for_others() {
    let db = TestDb::new(Some(&finflow_notification::MIGRATIONS)).await;
    let (mut sender, _) = sender_to_a_sink(&db).await;
    sender.send_timeout = Duration::from_millis(500);
    let (healthy, received) = answering(StatusCode::OK, None).await;
    let hanging = hanging_receiver().await;
    let (first, second, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for user in [first, second] {
        for _ in 0..10 {
            webhook_deliveries(&db, user, &hanging, 3, "1 minute").await;
        }
    }
    webhook_deliveries(&db, other, &healthy, 1, "1 second").await;

    assert!(sender.deliver_next(delivery::Lane::Webhook).await.unwrap());
    let delivered: i64 = delivered_to(&db, other).await;
    assert_eq!(
        delivered, 1,
        "the third user's webhook got its event in the first round"
    );
    assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 1);
    for user in [first, second] {
        let calls: i64 = db::scalar_of(&db.pool, CALLS_OF, user).await;
        assert_eq!(calls, delivery::WEBHOOK_CALLS_PER_USER, "{user}");
    }
}

/// A call that ended is recorded while another of its batch still hangs: it no longer
/// counts as in flight, so its user's next call is not held behind a stranger's
/// receiver.
#[tokio::test]
async fn a_call_that_ended_is_recorded_while_its_batch_waits_for_a_hanging_one() {
    let db = TestDb::new(Some(&finflow_notification::MIGRATIONS)).await;
    let (mut sender, _) = sender_to_a_sink(&db).await;
    sender.send_timeout = Duration::from_secs(30);
    let (healthy, _) = answering(StatusCode::OK, None).await;
    webhook_deliveries(
        &db,
        Uuid::new_v4(),
        &hanging_receiver().await,
        1,
        "1 minute",
    )
    .await;
    let other = Uuid::new_v4();
    webhook_deliveries(&db, other, &healthy, 1, "1 second").await;

    let round = tokio::spawn(async move { sender.deliver_next(delivery::Lane::Webhook).await });
    let recorded = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let delivered: i64 = delivered_to(&db, other).await;
            if delivered == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        recorded.is_ok(),
        "recorded only once the hanging call gave up"
    );
    assert!(!round.is_finished(), "the hanging call is still waited for");
    round.abort();
}

/// How many of `user`'s deliveries were delivered.
async fn delivered_to(db: &TestDb, user: Uuid) -> i64 {
    db::scalar_of(
        &db.pool,
        "SELECT count(*) FROM deliveries WHERE user_id = $1 AND status = 'delivered'",
        user,
    )
    .await
}

/// The attempts made at a user's deliveries (`$1`).
const CALLS_OF: &str =
    "SELECT COALESCE(sum(attempts), 0)::bigint FROM deliveries WHERE user_id = $1";

/// A sender on `db` that mails to an SMTP sink of its own, and what the sink received.
async fn sender_to_a_sink(db: &TestDb) -> (delivery::Sender, Mailbox) {
    let (smtp_port, mailbox) = smtp_sink().await;
    let smtp = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(smtp_port)
        .build();
    let sender = delivery::Sender {
        pool: db.pool.clone(),
        smtp,
        mail_from: "FinFlow <no-reply@finflow.local>".parse().unwrap(),
        http: finflow_platform::client::default_client(),
        // The test's receivers run on loopback, which only an allow-list opens.
        policy: finflow_notification::targets::Policy::new(
            finflow_notification::targets::AllowedNets::parse("127.0.0.1").unwrap(),
        ),
        max_attempts: 3,
        retry_base: Duration::from_millis(50),
        retry_cap: Duration::from_secs(1),
        send_timeout: Duration::from_secs(10),
    };
    (sender, mailbox)
}

/// Blue and green both send: a reset mail the older release sent kept its text, token
/// included, for as long as the row lived, since that release did not count its type
/// among the mails about access.
#[tokio::test]
async fn the_text_of_a_mail_about_access_an_older_release_sent_is_forgotten() {
    let db = TestDb::new(Some(&finflow_notification::MIGRATIONS)).await;
    let (sender, _) = sender_to_a_sink(&db).await;
    let token = "cmVzZXQtdG9rZW4tb2YtdGhlLXRlc3QtMDEyMzQ1Njc4OWE";
    // Of type, status and age (days), only the first two are sent mails about access
    // recent enough for their token to be live.
    for (event_type, status, days) in [
        (types::USER_PASSWORD_RESET_REQUESTED, "delivered", 0),
        (types::USER_VERIFICATION_REQUESTED, "failed", 1),
        (types::USER_PASSWORD_RESET_REQUESTED, "pending", 0),
        (types::PAYMENT_COMPLETED, "delivered", 0),
        (types::USER_VERIFICATION_REQUESTED, "delivered", 3),
    ] {
        sqlx::query(
            "INSERT INTO deliveries (id, user_id, event_id, event_type, channel, target, subject, body, \
             payload, status, created_at) VALUES ($1, $2, $3, $4, 'email', 'ada@example.com', 'Subject', \
             $5, '{}', $6, now() - make_interval(days => $7))",
        )
        .bind(Uuid::new_v4())
        .bind(Uuid::new_v4())
        .bind(Uuid::new_v4())
        .bind(event_type)
        .bind(format!("the text: {token}"))
        .bind(status)
        .bind(days)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    assert_eq!(sender.forget_sent_credentials().await.unwrap(), 2);
    let kept: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_type, status FROM deliveries WHERE strpos(body, $1) > 0 \
         ORDER BY event_type, status",
    )
    .bind(token)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        kept,
        [
            ("payment.completed".to_owned(), "delivered".to_owned()),
            (
                "user.password_reset_requested".to_owned(),
                "pending".to_owned()
            ),
            (
                "user.verification_requested".to_owned(),
                "delivered".to_owned()
            ),
        ],
        "a mail not sent yet keeps its text, other mails are not about access, and an \
         older one's token has expired"
    );
    assert_eq!(
        sender.forget_sent_credentials().await.unwrap(),
        0,
        "once is enough"
    );
}

/// A sealed token opens only for the addressee A sealed it for: one copied from the
/// victim's reset event into an event addressed to the thief (anyone can publish on the
/// bus) is never mailed, nor one sealed under another key.
#[tokio::test]
async fn a_sealed_token_is_mailed_only_to_the_address_it_was_sealed_for() {
    let d = TestD::spawn().await;
    let victim = Uuid::new_v4();
    let reset = |email: &str, token: &str| {
        json!({"user_id": victim, "email": email, "token": token,
               "expires_at": "2026-12-07T04:00:00Z"})
    };
    let sealed = sealed_as_a_would(
        types::USER_PASSWORD_RESET_REQUESTED,
        reset(
            "ada@example.com",
            "cmVzZXQtdG9rZW4tb2YtdGhlLXZpY3RpbS0wMTIzNDU2Nzg5YQ",
        ),
    );
    let other_key = SealKey::parse("not-the-secret-a-and-d-share-0123456").unwrap();
    let foreign = other_key.seal(
        "cmVzZXQtdG9rZW4tb2YtdGhlLXZpY3RpbS0wMTIzNDU2Nzg5YQ",
        &Addressee {
            event_type: types::USER_PASSWORD_RESET_REQUESTED,
            user_id: victim,
            email: "ada@example.com",
        },
    );
    let forged = [
        reset("thief@example.com", sealed["token"].as_str().unwrap()),
        reset("ada@example.com", &foreign),
        // In the clear but not of A's form: a forger's text.
        reset(
            "ada@example.com",
            "call +1 555 0100 to confirm your account",
        ),
    ];
    for data in forged {
        let event = Event::new("auth", types::USER_PASSWORD_RESET_REQUESTED, &data).unwrap();
        let outcomes = consumer::apply_batch(&d.db.pool, &queue().name, &notifier(), &[&event])
            .await
            .unwrap();
        assert_eq!(outcomes, [None], "refused: {data}");
    }
    let mails: i64 = db::scalar(&d.db.pool, "SELECT count(*) FROM deliveries").await;
    assert_eq!(mails, 0, "nothing queued to mail");
    // The event as A sealed it is mailed.
    let event = Event::new("auth", types::USER_PASSWORD_RESET_REQUESTED, &sealed).unwrap();
    let outcomes = consumer::apply_batch(&d.db.pool, &queue().name, &notifier(), &[&event])
        .await
        .unwrap();
    assert_eq!(outcomes, [Some(consumer::Outcome::Applied)]);
}

/// During the rollout that brings sealing, the queue still holds events of the A before
/// it, and while a new key is rolled out, events sealed under the old one: both still
/// reach their owner.
#[tokio::test]
async fn a_token_from_before_sealing_or_under_the_previous_key_is_still_mailed() {
    // The database alone, no senders: a sent mail's text is forgotten at once, and the
    // test reads the text queued.
    let db = TestDb::new(Some(&finflow_notification::MIGRATIONS)).await;
    let user = Uuid::new_v4();
    let to = Addressee {
        event_type: types::USER_PASSWORD_RESET_REQUESTED,
        user_id: user,
        email: "ada@example.com",
    };
    let older = SealKey::parse("the-key-before-the-current-one-0123").unwrap();
    let rotating = Notifier {
        seal: seal_key(),
        previous_seal: Some(older.clone()),
    };
    let plain = "cmVzZXQtdG9rZW4tb2YtdGhlLXRlc3QtMDEyMzQ1Njc";
    assert_eq!(plain.len(), 43);
    for (token, notifier) in [
        (plain.to_owned(), notifier()),
        (older.seal(plain, &to), rotating),
    ] {
        let data = json!({"user_id": user, "email": "ada@example.com", "token": token,
                          "expires_at": "2026-12-07T04:00:00Z"});
        let event = Event::new("auth", types::USER_PASSWORD_RESET_REQUESTED, &data).unwrap();
        let outcomes = consumer::apply_batch(&db.pool, &queue().name, &notifier, &[&event])
            .await
            .unwrap();
        assert_eq!(outcomes, [Some(consumer::Outcome::Applied)], "{token}");
        let body: String = db::scalar_of(
            &db.pool,
            "SELECT body FROM deliveries WHERE event_id = $1",
            event.id,
        )
        .await;
        assert!(body.contains(plain), "{body}");
    }
    // Without the previous key, the older seal does not open.
    let data = json!({"user_id": user, "email": "ada@example.com",
                      "token": older.seal(plain, &to), "expires_at": "2026-12-07T04:00:00Z"});
    let event = Event::new("auth", types::USER_PASSWORD_RESET_REQUESTED, &data).unwrap();
    let outcomes = consumer::apply_batch(&db.pool, &queue().name, &notifier(), &[&event])
        .await
        .unwrap();
    assert_eq!(outcomes, [None]);
}
