//! The HTTP shell on a real socket: envelope rejections, platform routes, health of
//! real PostgreSQL, Redis and RabbitMQ.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::{get, post};
use finflow_platform::db::{MigrationRef, SchemaReport, TestDb};
use finflow_platform::error::{self, ApiResult};
use finflow_platform::health::{self, Health};
use finflow_platform::testing::body_of;
use finflow_platform::{Identity, Json, Money, Path, cache, events};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const MAX_BODY: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Deposit {
    money: Money,
    kind: Kind,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Card,
    Bank,
}

async fn deposit(Json(d): Json<Deposit>) -> ApiResult {
    let kind = match d.kind {
        Kind::Card => "card",
        Kind::Bank => "bank",
    };
    Ok(error::ok(json!({ "money": d.money, "kind": kind })))
}

async fn wallet(Path(id): Path<uuid::Uuid>, who: Identity) -> ApiResult {
    Ok(error::ok(json!({ "id": id, "owner": who.user_id()? })))
}

async fn boom() -> ApiResult {
    panic!("a bug")
}

/// A running test app and a client for it.
struct TestApp {
    addr: SocketAddr,
    client: reqwest::Client,
    shutdown: CancellationToken,
    _db: TestDb,
}

impl TestApp {
    async fn spawn(health: impl FnOnce(&TestDb) -> Health) -> Self {
        finflow_platform::telemetry::init_for_tests();
        let db = TestDb::new(None).await;
        let api = Router::new()
            .route("/api/v1/deposits", post(deposit))
            .route("/api/v1/wallets/{id}", get(wallet))
            .route("/api/v1/boom", get(boom));
        let app = finflow_platform::http::router(
            api,
            health(&db),
            utoipa::openapi::OpenApiBuilder::new().build(),
            MAX_BODY,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(finflow_platform::http::serve(listener, app, async move {
            stop.cancelled().await;
        }));
        Self {
            addr,
            client: finflow_platform::client::default_client(),
            shutdown,
            _db: db,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.expect("every answer is JSON"))
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut req = self.client.get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.expect("every answer is JSON"))
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn all_dependencies(db: &TestDb) -> Health {
    Health::builder("test", "0.0.0")
        .critical("database", health::Postgres(db.pool.clone()))
        .critical(
            "redis",
            health::Redis(
                cache::connect(&cache::test_url(), None)
                    .await
                    .expect("Redis answers"),
            ),
        )
        .critical("rabbitmq", health::RabbitMq::new(events::test_url()))
        .build()
}

fn assert_validation_error(status: StatusCode, body: &Value, reason: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR", "{body}");
    assert_eq!(body["error"]["details"]["reason"], reason, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn every_malformed_body_gets_400_validation_error_in_the_envelope() {
    let app = TestApp::spawn(|_| Health::builder("test", "0").build()).await;
    let json = "application/json";
    let path = "/api/v1/deposits";
    let cases: [(&str, String, &str); 7] = [
        (json, "{\"money\": ".into(), "malformed_json"),
        (
            json,
            r#"{"money": {"amount": 10, "currency": "USD"}, "kind": "card"}"#.into(),
            "invalid_field",
        ),
        (
            json,
            r#"{"money": {"amount": "10.001", "currency": "USD"}, "kind": "card"}"#.into(),
            "invalid_field",
        ),
        (json, r#"{"kind": "card"}"#.into(), "invalid_field"),
        (
            json,
            r#"{"money": {"amount": "1", "currency": "USD"}, "kind": "crypto"}"#.into(),
            "invalid_field",
        ),
        (
            "text/plain",
            r#"{"money": {"amount": "1", "currency": "USD"}, "kind": "card"}"#.into(),
            "content_type",
        ),
        (
            json,
            format!(
                r#"{{"money": {{"amount": "1", "currency": "USD"}}, "kind": "card", "pad": "{}"}}"#,
                "x".repeat(MAX_BODY)
            ),
            "body_too_large",
        ),
    ];
    for (content_type, body, reason) in cases {
        let (status, answer) = app.post_raw(path, content_type, body.clone()).await;
        assert_validation_error(status, &answer, reason);
    }
}

#[tokio::test]
async fn a_valid_body_gets_the_success_envelope_with_money_as_strings() {
    let app = TestApp::spawn(|_| Health::builder("test", "0").build()).await;
    let (status, body) = app
        .post_raw(
            "/api/v1/deposits",
            "application/json",
            r#"{"money": {"amount": "1500", "currency": "USD"}, "kind": "bank"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"success": true, "data": {"money": {"amount": "1500.00", "currency": "USD"}, "kind": "bank"}})
    );
}

#[tokio::test]
async fn unknown_routes_methods_and_bad_ids_answer_in_the_envelope() {
    let app = TestApp::spawn(|_| Health::builder("test", "0").build()).await;
    let (status, body) = app.get("/api/v1/nothing", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "NOT_FOUND");

    let (status, body) = app.get("/api/v1/deposits", &[]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "METHOD_NOT_ALLOWED");

    let user = uuid::Uuid::new_v4().to_string();
    let (status, body) = app
        .get("/api/v1/wallets/not-a-uuid", &[("x-user-id", &user)])
        .await;
    assert_validation_error(status, &body, "invalid_path");
}

#[tokio::test]
async fn identity_comes_from_the_sidecar_headers_or_the_request_is_unauthorized() {
    let app = TestApp::spawn(|_| Health::builder("test", "0").build()).await;
    let wallet = uuid::Uuid::new_v4();
    let (status, body) = app.get(&format!("/api/v1/wallets/{wallet}"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");

    let user = uuid::Uuid::new_v4().to_string();
    let (status, body) = app
        .get(
            &format!("/api/v1/wallets/{wallet}"),
            &[("x-user-id", &user)],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["owner"], user);
}

#[tokio::test]
async fn a_panicking_handler_answers_500_without_its_message() {
    let app = TestApp::spawn(|_| Health::builder("test", "0").build()).await;
    let (status, body) = app.get("/api/v1/boom", &[]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"]["code"], "INTERNAL_ERROR");
    assert!(!body.to_string().contains("a bug"));
}

#[tokio::test]
async fn health_reports_each_real_dependency_as_up_with_its_latency() {
    let mut deps = None;
    let db_for_health = TestDb::new(None).await;
    deps.replace(all_dependencies(&db_for_health).await);
    let app = TestApp::spawn(|_| deps.take().unwrap()).await;
    let (status, body) = app.get("/health", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "up");
    let deps = body["dependencies"].as_array().unwrap();
    let names: Vec<_> = deps.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["database", "redis", "rabbitmq"]);
    assert!(
        deps.iter()
            .all(|d| d["status"] == "up" && d["latency_ms"].is_u64())
    );

    let (status, body) = app.get("/ready", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Two migrations, the second marked incompatible with the release before it.
static FIXTURE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("tests/fixtures/schema");

#[test]
fn the_schema_is_the_newest_migration_and_names_those_marked_incompatible() {
    let report = SchemaReport::of(&[
        &finflow_platform::db::PLATFORM_MIGRATIONS,
        &FIXTURE_MIGRATIONS,
    ])
    .unwrap();
    assert_eq!(report.version, 20_270_101_000_002);
    assert_eq!(
        report.incompatible,
        [MigrationRef {
            version: 20_270_101_000_002,
            description: "drop legacy name".into(),
        }],
        "a mark is a line of its own, not the words inside another comment"
    );
    assert_eq!(SchemaReport::of(&[]), None);
}

#[tokio::test]
async fn health_reports_the_schema_the_build_expects() {
    let app = TestApp::spawn(|_| {
        Health::builder("test", "0")
            .schema(SchemaReport::of(&[&FIXTURE_MIGRATIONS]))
            .build()
    })
    .await;
    let (status, body) = app.get("/health", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["schema"],
        json!({"version": 20_270_101_000_002_i64,
               "incompatible": [{"version": 20_270_101_000_002_i64, "description": "drop legacy name"}]})
    );
    let bare = TestApp::spawn(|_| Health::builder("test", "0").build()).await;
    let (_, body) = bare.get("/health", &[]).await;
    assert!(body.get("schema").is_none(), "{body}");
}

#[tokio::test]
async fn health_is_503_when_a_critical_dependency_is_down_and_degraded_for_an_optional_one() {
    // A port nothing listens on, held for the whole test.
    let closed_port = finflow_platform::testing::ClosedPort::new().unwrap();
    let closed = closed_port.port;
    let app = TestApp::spawn(|db| {
        Health::builder("test", "0")
            .critical("database", health::Postgres(db.pool.clone()))
            .optional(
                "auth",
                health::Upstream::new(&format!("http://127.0.0.1:{closed}")),
            )
            .build()
    })
    .await;
    let (status, body) = app.get("/health", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["dependencies"][1]["status"], "down");

    let app = TestApp::spawn(|_| {
        Health::builder("test", "0")
            .critical(
                "rabbitmq",
                health::RabbitMq::new(secrecy::SecretString::from(format!(
                    "amqp://guest:guest@127.0.0.1:{closed}/%2f"
                ))),
            )
            .build()
    })
    .await;
    let (status, body) = app.get("/health", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "down");
    assert!(
        !body.to_string().contains("guest:guest"),
        "no credentials in /health"
    );
    let (status, _) = app.get("/ready", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_openapi_leaves_the_platform_routes_out() {
    let app = TestApp::spawn(|_| Health::builder("test", "0").build()).await;
    app.get("/api/v1/nothing", &[]).await;
    let text = body_of(app.client.get(app.url("/metrics"))).await;
    assert!(text.contains("finflow_http_requests_total"), "{text}");
    assert!(text.contains("status=\"404\""), "{text}");

    let (status, doc) = app.get("/openapi.json", &[]).await;
    assert_eq!(status, StatusCode::OK);
    // Answered by each pod's own sidecar, never through the gateway: not published.
    for path in ["/health", "/ready", "/metrics"] {
        assert!(
            doc["paths"].get(path).is_none(),
            "{path} published in {doc}"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn responses_carry_a_request_id_and_keep_the_callers() {
    let app = TestApp::spawn(|_| Health::builder("test", "0").build()).await;
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    let r = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
}

/// Sends `head` and a body of `len` bytes, reading the answer meanwhile; whether every
/// byte of the body was written, and the answer.
async fn send_whole(addr: SocketAddr, head: String, len: usize) -> (bool, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    let writing = async move {
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            write
                .write_all(&chunk[..chunk.len().min(len - sent)])
                .await?;
            sent += chunk.len().min(len - sent);
        }
        write.flush().await?;
        // Keeps the socket open while the answer is read.
        Ok::<_, std::io::Error>(write)
    };
    let reading = async move {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // The answer's head and envelope fit well within a few reads.
        while !String::from_utf8_lossy(&seen).contains("\"success\":false") {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    };
    let (written, answer) = tokio::join!(writing, reading);
    (written.is_ok(), answer)
}

#[tokio::test]
async fn an_answer_given_before_the_body_was_read_still_lets_the_caller_send_it_all() {
    let app = TestApp::spawn(|_| Health::builder("test", "0").build()).await;
    // A method the route does not take, a content type it refuses, a body over the
    // limit: each answered before the body is read. Without the body read and dropped
    // the connection is reset under the writer, which a proxy reports as a 502. The
    // bodies are larger than loopback's socket buffers, so the reset is certain.
    let cases = [
        ("PUT /api/v1/deposits", "application/json", 12 << 20, "405"),
        ("POST /api/v1/deposits", "text/plain", 12 << 20, "400"),
        ("POST /api/v1/deposits", "application/json", 12 << 20, "400"),
    ];
    for (request_line, content_type, len, status) in cases {
        let head = format!(
            "{request_line} HTTP/1.1\r\nhost: test\r\ncontent-type: {content_type}\r\n\
             content-length: {len}\r\n\r\n"
        );
        let (written, answer) = send_whole(app.addr, head, len).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{request_line}: {answer}"
        );
        assert!(written, "{request_line}: the body could not be sent whole");
    }
}
