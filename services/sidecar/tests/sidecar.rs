//! The sidecar on real sockets: an echo app behind it, a JWK set server beside it.

mod common;

use std::time::Duration;

use common::{
    AUDIENCE, Echo, HS256_SECRET, JwksServer, Key, Proxy, admin_metrics, assert_refused, claims,
    client, hs256, received, unsigned, wait_until,
};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USER: &str = "7f1c0a52-0000-4000-8000-000000000001";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

struct Setup {
    app: Echo,
    jwks: JwksServer,
    key: Key,
    sidecar: Proxy,
}

async fn setup(extra: &[&str]) -> Setup {
    let app = Echo::start("app").await;
    let key = Key::generate("key-1");
    let jwks = JwksServer::start(&[&key]).await;
    let sidecar = Proxy::sidecar(&app, &jwks, extra).await;
    Setup {
        app,
        jwks,
        key,
        sidecar,
    }
}

impl Setup {
    async fn with_token(&self, path: &str, token: &str) -> reqwest::Response {
        self.sidecar
            .get(path)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Sends `token` to a protected route and checks it is refused for `reason`
    /// without reaching the app.
    async fn assert_token_refused(&self, token: &str, reason: &str) {
        let response = self.with_token("/api/v1/wallets", token).await;
        assert!(response.headers().get("www-authenticate").is_some());
        assert_refused(response, 401, "UNAUTHORIZED", reason).await;
        assert_eq!(self.app.hits(), 0, "a refused request reached the app");
    }
}

fn with(mut claims: Value, field: &str, value: Value) -> Value {
    claims[field] = value;
    claims
}

#[tokio::test]
async fn a_token_with_alg_none_is_refused() {
    let s = setup(&[]).await;
    let token = unsigned(
        &json!({"alg": "none", "typ": "JWT", "kid": s.key.kid}),
        &claims(USER, &["user"]),
    );
    s.assert_token_refused(&token, "algorithm_not_allowed")
        .await;
}

#[tokio::test]
async fn an_hs256_token_signed_with_the_public_key_is_refused_as_algorithm_confusion() {
    let s = setup(&[]).await;
    let claims = claims(USER, &["admin"]);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(s.key.kid.clone());
    for secret in [
        s.key.public_bytes().to_vec(),
        s.key.jwk()["x"].as_str().unwrap().as_bytes().to_vec(),
    ] {
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap();
        s.assert_token_refused(&token, "algorithm_not_allowed")
            .await;
    }
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let s = setup(&[]).await;
    let token = s.key.sign(&with(
        claims(USER, &["user"]),
        "exp",
        json!(common::now() - 3600),
    ));
    s.assert_token_refused(&token, "expired").await;
}

#[tokio::test]
async fn a_token_whose_nbf_is_in_the_future_is_refused() {
    let s = setup(&[]).await;
    let token = s.key.sign(&with(
        claims(USER, &["user"]),
        "nbf",
        json!(common::now() + 3600),
    ));
    s.assert_token_refused(&token, "not_yet_valid").await;
}

#[tokio::test]
async fn a_token_from_another_issuer_is_refused() {
    let s = setup(&[]).await;
    let token = s
        .key
        .sign(&with(claims(USER, &["user"]), "iss", json!("evil-issuer")));
    s.assert_token_refused(&token, "wrong_issuer").await;
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let s = setup(&[]).await;
    let token = s.key.sign(&with(
        claims(USER, &["user"]),
        "aud",
        json!(["billing", "crm"]),
    ));
    s.assert_token_refused(&token, "wrong_audience").await;
}

#[tokio::test]
async fn a_token_signed_by_another_key_under_the_same_kid_is_refused() {
    let s = setup(&[]).await;
    let token = s.key.impostor().sign(&claims(USER, &["user"]));
    s.assert_token_refused(&token, "bad_signature").await;
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_once_then_is_refused() {
    let s = setup(&["--jwks-min-refresh-secs=3600"]).await;
    let before = s.jwks.fetches();
    assert!(before >= 1, "the set was fetched at start");

    let stranger = Key::generate("key-unknown");
    s.assert_token_refused(&stranger.sign(&claims(USER, &["user"])), "unknown_kid")
        .await;
    assert_eq!(
        s.jwks.fetches(),
        before + 1,
        "one refetch for the unknown kid"
    );

    let another = Key::generate("key-unknown-2");
    s.assert_token_refused(&another.sign(&claims(USER, &["user"])), "unknown_kid")
        .await;
    assert_eq!(
        s.jwks.fetches(),
        before + 1,
        "no second refetch within JWKS_MIN_REFRESH_SECS"
    );
}

#[tokio::test]
async fn a_key_rotated_in_after_start_is_picked_up_by_the_refetch() {
    let s = setup(&[]).await;
    let before = s.jwks.fetches();
    let rotated = Key::generate("key-2");
    s.jwks.add(&rotated);
    let response = s
        .with_token("/api/v1/wallets", &rotated.sign(&claims(USER, &["user"])))
        .await;
    assert_eq!(received(response).await.header("x-user-id").unwrap(), USER);
    assert_eq!(s.jwks.fetches(), before + 1);
}

#[tokio::test]
async fn a_new_issuer_epoch_refetches_the_jwks_and_stops_tokens_of_a_dropped_key() {
    let epoch = std::env::temp_dir().join(format!("finflow-epoch-{}", uuid::Uuid::new_v4()));
    std::fs::write(&epoch, "1.0.0/blue\n").unwrap();
    let s = setup(&[
        &format!("--jwks-epoch-file={}", epoch.display()),
        "--jwks-refresh-secs=3600",
        "--jwks-min-refresh-secs=3600",
    ])
    .await;
    let token = s.key.sign(&claims(USER, &["user"]));
    assert_eq!(s.with_token("/api/v1/wallets", &token).await.status(), 200);

    // The issuer rolls back to a version that never had key-1.
    let other = Key::generate("key-rolled-back");
    s.jwks.replace(&[&other]);
    let before = s.jwks.fetches();
    assert_eq!(
        s.with_token("/api/v1/wallets", &token).await.status(),
        200,
        "without a new epoch the cached keys still admit it"
    );
    std::fs::write(&epoch, "0.9.0/green\n").unwrap();
    wait_until("the token of the dropped key is refused", || async {
        s.with_token("/api/v1/wallets", &token).await.status() == 401
    })
    .await;
    assert!(s.jwks.fetches() > before, "the new epoch refetched the set");
    let fresh = other.sign(&claims(USER, &["user"]));
    assert_eq!(s.with_token("/api/v1/wallets", &fresh).await.status(), 200);
    std::fs::remove_file(&epoch).ok();
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let s = setup(&[]).await;
    let good = s.key.sign(&claims(USER, &["user"]));
    let (_, body) = good.split_once('.').unwrap();
    let cases = [
        "not-a-jwt".to_owned(),
        "a.b.c".to_owned(),
        format!("{good}.extra"),
        format!("e30.{body}"),
    ];
    for token in cases {
        s.assert_token_refused(&token, "malformed").await;
    }
    let response = s
        .sidecar
        .get("/api/v1/wallets")
        .header("authorization", format!("Basic {good}"))
        .send()
        .await
        .unwrap();
    assert_refused(response, 401, "UNAUTHORIZED", "malformed").await;
    assert_eq!(s.app.hits(), 0);
}

#[tokio::test]
async fn a_protected_route_without_a_token_is_refused() {
    let s = setup(&[]).await;
    let response = s.sidecar.get("/api/v1/wallets").send().await.unwrap();
    assert_refused(response, 401, "UNAUTHORIZED", "missing_token").await;
    assert_eq!(s.app.hits(), 0);
}

#[tokio::test]
async fn client_identity_headers_never_reach_the_app_on_public_or_protected_paths() {
    let s = setup(&[]).await;
    let spoof = |request: reqwest::RequestBuilder| {
        request
            .header("x-user-id", "attacker")
            .header("X-User-Roles", "admin,service:payment")
            .header("x-user-email", "root@example.com")
            .header("x-kyc-status", "verified")
            .header("x-account-tier", "gold")
    };

    let public = received(
        spoof(s.sidecar.get("/api/v1/auth/login"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    for name in [
        "x-user-id",
        "x-user-roles",
        "x-user-email",
        "x-kyc-status",
        "x-account-tier",
    ] {
        assert!(!public.has(name), "{name} reached the app on a public path");
    }

    let token = s.key.sign(&claims(USER, &["user"]));
    let protected = received(
        spoof(s.sidecar.get("/api/v1/wallets"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(protected.header("x-user-id").unwrap(), USER);
    assert_eq!(protected.header("x-user-roles").unwrap(), "user");
    assert_eq!(
        protected.header("x-user-email").unwrap(),
        format!("{USER}@example.com")
    );
}

#[tokio::test]
async fn a_valid_token_reaches_the_app_with_identity_forwarding_request_id_and_trace() {
    let s = setup(&[]).await;
    let token = s.key.sign(&claims(USER, &["user", "admin"]));
    let sent_traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let response = s
        .sidecar
        .get("/api/v1/wallets/w1?page=2")
        .bearer_auth(&token)
        .header("x-request-id", "req-abc.123_X")
        .header("traceparent", &sent_traceparent)
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-abc.123_X");
    let host = s.sidecar.url.trim_start_matches("http://").to_owned();
    let got = received(response).await;

    assert_eq!(got.0["path"], "/api/v1/wallets/w1?page=2");
    assert_eq!(got.header("x-user-id").unwrap(), USER);
    assert_eq!(got.header("x-user-roles").unwrap(), "user,admin");
    assert_eq!(got.header("x-kyc-status").unwrap(), "verified");
    assert_eq!(got.header("x-account-tier").unwrap(), "gold");
    // The client is not a trusted proxy: what it claims to forward for is dropped.
    assert_eq!(got.header("x-forwarded-for").unwrap(), "127.0.0.1");
    assert_eq!(got.header("x-forwarded-host").unwrap(), host);
    assert_eq!(got.header("x-forwarded-proto").unwrap(), "http");
    assert_eq!(got.header("x-real-ip").unwrap(), "127.0.0.1");
    assert_eq!(got.header("x-request-id").unwrap(), "req-abc.123_X");
    assert_eq!(
        got.header("authorization").unwrap(),
        format!("Bearer {token}")
    );
    let traceparent = got.header("traceparent").unwrap();
    assert!(traceparent.contains(TRACE_ID), "{traceparent}");
    assert_ne!(
        traceparent, sent_traceparent,
        "the sidecar is a hop of its own"
    );
}

#[tokio::test]
async fn with_trace_export_on_each_request_is_a_span_in_the_callers_trace() {
    // The exporter itself is started by `main`; here only the proxy's span path runs.
    let s = setup(&["--otlp-endpoint=http://127.0.0.1:4318"]).await;
    let token = s.key.sign(&claims(USER, &["user"]));
    let sent_traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let response = s
        .sidecar
        .get("/api/v1/wallets")
        .bearer_auth(&token)
        .header("traceparent", &sent_traceparent)
        .send()
        .await
        .unwrap();
    let traceparent = received(response).await.header("traceparent").unwrap();
    assert!(traceparent.contains(TRACE_ID), "{traceparent}");
    assert_ne!(traceparent, sent_traceparent);
}

#[tokio::test]
async fn a_malformed_request_id_is_replaced_by_a_generated_one() {
    let s = setup(&[]).await;
    let response = s
        .sidecar
        .get("/health")
        .header("x-request-id", "not valid!")
        .send()
        .await
        .unwrap();
    let returned = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&returned).is_ok(), "{returned}");
    assert_eq!(
        received(response).await.header("x-request-id").unwrap(),
        returned
    );
}

#[tokio::test]
async fn a_user_token_cannot_open_internal_routes_but_a_service_token_can() {
    let s = setup(&[]).await;
    let user = s.key.sign(&claims(USER, &["user", "admin"]));
    let response = s.with_token("/internal/x", &user).await;
    assert_refused(response, 403, "FORBIDDEN", "service_token_required").await;
    assert_eq!(s.app.hits(), 0);

    let response = s.sidecar.get("/internal/x").send().await.unwrap();
    assert_refused(response, 401, "UNAUTHORIZED", "missing_token").await;
    assert_eq!(s.app.hits(), 0);

    let service = s.key.sign(&claims("service:payment", &["service:payment"]));
    let got = received(s.with_token("/internal/x", &service).await).await;
    assert_eq!(got.header("x-user-roles").unwrap(), "service:payment");
    assert_eq!(s.app.hits(), 1);
}

#[tokio::test]
async fn a_caller_over_its_rate_limit_gets_429_in_the_envelope() {
    let s = setup(&["--rate-limit-per-second=1", "--rate-limit-burst=2"]).await;
    let token = s.key.sign(&claims(USER, &["user"]));
    for _ in 0..2 {
        received(s.with_token("/api/v1/wallets", &token).await).await;
    }
    // The bucket refills at one request per second: keep asking until it is empty.
    let mut refused = None;
    for _ in 0..20 {
        let response = s.with_token("/api/v1/wallets", &token).await;
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
    }
    let response = refused.expect("the caller was never limited");
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_refused(response, 429, "RATE_LIMITED", "rate_limited").await;

    let other = s.key.sign(&claims("someone-else", &["user"]));
    received(s.with_token("/api/v1/wallets", &other).await).await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_client_is_whom_it_forwards_for() {
    // The test client is at 127.0.0.1, here the trusted proxy (a gateway, an ingress).
    let s = setup(&[
        "--trusted-proxies=10.0.0.0/8, 127.0.0.1",
        "--rate-limit-per-second=1",
        "--rate-limit-burst=1",
    ])
    .await;
    let from = |forwarded_for: &'static str| {
        s.sidecar
            .get("/health")
            .header("x-forwarded-for", forwarded_for)
            .send()
    };
    // 6.6.6.6 is what the client told the proxy; 203.0.113.9 is whom the proxy saw.
    let got = received(from("6.6.6.6, 203.0.113.9, 10.1.2.3").await.unwrap()).await;
    assert_eq!(got.header("x-real-ip").unwrap(), "203.0.113.9");
    assert_eq!(
        got.header("x-forwarded-for").unwrap(),
        "6.6.6.6, 203.0.113.9, 10.1.2.3, 127.0.0.1"
    );

    // Anonymous callers are limited per client, not per proxy: each of these has a
    // bucket of its own, and a second request of the first one is over its limit.
    // (Retried until refused: a stall of over a second between two requests refills
    // the one-per-second bucket.)
    received(from("198.51.100.1").await.unwrap()).await;
    let mut again = from("198.51.100.1").await.unwrap();
    for _ in 0..20 {
        if again.status() == 429 {
            break;
        }
        again = from("198.51.100.1").await.unwrap();
    }
    assert_refused(again, 429, "RATE_LIMITED", "rate_limited").await;
    // ...while another client behind the same proxy still has its whole bucket.
    received(from("198.51.100.2").await.unwrap()).await;
}

#[tokio::test]
async fn a_service_token_is_not_held_to_the_per_user_rate_limit() {
    let s = setup(&["--rate-limit-per-second=1", "--rate-limit-burst=2"]).await;
    let service = s.key.sign(&claims("service:payment", &["service:payment"]));
    for n in 1..=20 {
        let response = s.with_token("/internal/wallets/x", &service).await;
        assert_eq!(response.status(), 200, "service request {n}");
    }
    let user = s.key.sign(&claims(USER, &["user"]));
    let statuses: Vec<u16> = futures_util::future::join_all((0..5).map(|_| async {
        s.with_token("/api/v1/wallets", &user)
            .await
            .status()
            .as_u16()
    }))
    .await;
    assert!(
        statuses.contains(&429),
        "a user is still limited: {statuses:?}"
    );
    assert_eq!(
        s.app.hits(),
        20 + statuses.iter().filter(|&&c| c == 200).count()
    );
}

#[tokio::test]
async fn an_unreachable_upstream_answers_502_marked_as_a_proxy_error() {
    let closed = finflow_platform::testing::ClosedPort::new().unwrap();
    let upstream = format!("http://127.0.0.1:{}", closed.port);
    let sidecar = Proxy::hs256_sidecar(&upstream, &[]).await;
    let response = sidecar.get("/health").send().await.unwrap();
    assert_refused(
        response,
        502,
        "DEPENDENCY_UNAVAILABLE",
        "upstream_unreachable",
    )
    .await;
    assert_eq!(sidecar.ready_status().await, 503);
}

#[tokio::test]
async fn a_slow_upstream_answers_504_marked_as_a_proxy_error() {
    let app = Echo::start("app").await;
    let sidecar = Proxy::hs256_sidecar(&app.url, &["--upstream-timeout-ms=200"]).await;
    let token = hs256(&claims(USER, &["user"]), HS256_SECRET.as_bytes());
    let response = sidecar
        .get("/slow")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_refused(response, 504, "DEPENDENCY_UNAVAILABLE", "upstream_timeout").await;
}

/// How a test sends the JSON body `{"a":1}`.
#[derive(Clone, Copy)]
enum Framing {
    /// `Content-Length: 7`.
    Length,
    /// Two chunks, and a trailer after the last.
    ChunkedWithTrailer,
}

/// Sends a request with a token and the first byte of the body `{"a":1}` to `sidecar`;
/// the rest goes after `pause`, or never. Answers the head of the response.
async fn post_slowly(
    sidecar: &Proxy,
    path: &str,
    framing: Framing,
    pause: Option<Duration>,
) -> String {
    let token = hs256(&claims(USER, &["user"]), HS256_SECRET.as_bytes());
    let mut tcp = TcpStream::connect(sidecar.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (length, first, rest) = match framing {
        Framing::Length => ("Content-Length: 7", "{", r#""a":1}"#),
        Framing::ChunkedWithTrailer => (
            "Transfer-Encoding: chunked",
            "1\r\n{\r\n",
            "6\r\n\"a\":1}\r\n0\r\nX-Checksum: 1\r\n\r\n",
        ),
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n{length}\r\n\r\n{first}"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    if let Some(pause) = pause {
        tokio::time::sleep(pause).await;
        tcp.write_all(rest.as_bytes()).await.unwrap();
    }
    head_of_answer(&mut tcp).await
}

/// The head of the answer `from` reads, within 10 s.
async fn head_of_answer(from: &mut (impl AsyncRead + Unpin)) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), from.read(&mut buffer))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(read > 0, "closed without an answer: {answer:?}");
        answer.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A client that never finishes its body is not an app too slow to answer: `408
/// REQUEST_TIMEOUT`, not the `504` that the traffic analysis counts against the app's
/// rollout (so anyone able to send a request could fail one).
#[tokio::test]
async fn a_request_body_that_never_arrives_is_the_client_s_408_not_the_app_s_504() {
    let app = Echo::start("app").await;
    let sidecar = Proxy::hs256_sidecar(&app.url, &["--upstream-timeout-ms=300"]).await;
    let head = post_slowly(&sidecar, "/api/v1/things", Framing::Length, None).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        head.contains("x-finflow-proxy-error: request_body_timeout"),
        "{head}"
    );
}

/// The app's time starts when it has the whole request: a body that took most of the
/// timeout to arrive leaves the app all of it, however the body is framed (a chunked
/// one may end with trailers, after which nothing more is read of it).
#[tokio::test]
async fn the_app_has_the_whole_timeout_from_when_the_body_has_arrived() {
    let app = Echo::start("app").await;
    let sidecar = Proxy::hs256_sidecar(&app.url, &["--upstream-timeout-ms=1000"]).await;
    let pause = Some(Duration::from_millis(700));
    for framing in [Framing::Length, Framing::ChunkedWithTrailer] {
        let head = post_slowly(&sidecar, "/wait/500", framing, pause).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
}

/// The other way round: an app that stops reading a body the client sent at once holds
/// the body up itself, and its timeout is its own `504`, not the client's `408`.
#[tokio::test]
async fn an_app_that_stops_reading_the_body_times_out_as_the_app_s_504() {
    let app = Echo::start("app").await;
    let sidecar = Proxy::hs256_sidecar(&app.url, &["--upstream-timeout-ms=500"]).await;
    let token = hs256(&claims(USER, &["user"]), HS256_SECRET.as_bytes());
    let tcp = TcpStream::connect(sidecar.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut read, mut write) = tcp.into_split();
    // More than the sockets between client, sidecar and app buffer: the app's `/slow`
    // never reads it, so the rest waits on the app.
    let body = vec![b'x'; 16 << 20];
    let head = format!(
        "POST /slow HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let writer = tokio::spawn(async move {
        let _ = write.write_all(head.as_bytes()).await;
        let _ = write.write_all(&body).await;
        write
    });
    let head = head_of_answer(&mut read).await;
    writer.abort();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
}

#[tokio::test]
async fn upstream_errors_pass_through_without_the_proxy_error_header() {
    let s = setup(&[]).await;
    let token = s.key.sign(&claims(USER, &["user"]));
    let response = s.with_token("/status/503", &token).await;
    assert_eq!(response.status(), 503);
    assert!(
        response.headers().get("x-finflow-proxy-error").is_none(),
        "an app cannot pass its answer off as the proxy's"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["app"], "app");
}

#[tokio::test]
async fn an_app_that_closes_its_connection_after_each_answer_is_reconnected_to() {
    let s = setup(&[]).await;
    let token = s.key.sign(&claims(USER, &["user"]));
    // One client connection (one reqwest client keeps it alive); the sidecar's upstream
    // connection under it is closed by the app after every answer, so each request
    // makes a new one, driven by that same client connection's task.
    let client = client();
    for n in 1..=3 {
        let response = client
            .get(format!("{}/close", s.sidecar.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "request {n}");
        assert!(
            response.headers().get("connection").is_none(),
            "the app's hop-by-hop header is not forwarded"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["path"], "/close");
    }
    assert_eq!(s.app.hits(), 3);
}

#[tokio::test]
async fn request_and_response_bodies_are_streamed() {
    let s = setup(&[]).await;
    let token = s.key.sign(&claims(USER, &["user"]));
    let echoed: Value = client()
        .post(format!("{}/api/v1/payments", s.sidecar.url))
        .bearer_auth(&token)
        .body("{\"amount\": \"10.00\"}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["body"], "{\"amount\": \"10.00\"}");

    let mut response = s.with_token("/stream", &token).await;
    assert_eq!(response.status(), 200);
    // The app holds its second chunk until the first has crossed the proxy: a proxy
    // that buffered the response would never deliver the first.
    let first = tokio::time::timeout(Duration::from_secs(10), response.chunk())
        .await
        .expect("the first chunk arrives before the response is complete")
        .unwrap()
        .unwrap();
    assert_eq!(first, "first\n");
    s.app.release_stream();
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"second\n");
}

#[tokio::test]
async fn protected_paths_answer_503_until_the_jwks_can_be_fetched() {
    let app = Echo::start("app").await;
    let key = Key::generate("key-1");
    let jwks = JwksServer::start(&[&key]).await;
    jwks.set_available(false);
    let sidecar = Proxy::start(&[
        format!("--upstream={}", app.url),
        format!("--jwks-uri={}", jwks.uri),
        "--jwt-issuer=finflow-auth".to_owned(),
        format!("--jwt-audiences={AUDIENCE}"),
    ])
    .await;
    wait_until("a failed JWKS fetch", || async { jwks.fetches() >= 1 }).await;
    let token = key.sign(&claims(USER, &["user"]));

    let response = sidecar
        .get("/api/v1/wallets")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_refused(response, 503, "DEPENDENCY_UNAVAILABLE", "jwks_unavailable").await;
    assert_eq!(sidecar.ready_status().await, 503);
    received(sidecar.get("/health").send().await.unwrap()).await;

    jwks.set_available(true);
    sidecar.wait_ready().await;
    let response = sidecar
        .get("/api/v1/wallets")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(received(response).await.header("x-user-id").unwrap(), USER);
}

#[tokio::test]
async fn an_invalid_token_on_a_public_path_is_ignored_and_a_valid_one_is_forwarded() {
    let s = setup(&[]).await;
    let forged = s.key.impostor().sign(&claims("attacker", &["admin"]));
    let got = received(s.with_token("/api/v1/auth/login", &forged).await).await;
    assert!(!got.has("x-user-id"));
    assert!(!got.has("x-user-roles"));

    let token = s.key.sign(&claims(USER, &["user"]));
    let got = received(s.with_token("/api/v1/auth/logout", &token).await).await;
    assert_eq!(got.header("x-user-id").unwrap(), USER);
}

#[tokio::test]
async fn shared_secret_mode_accepts_hs256_and_refuses_eddsa() {
    let app = Echo::start("app").await;
    let sidecar = Proxy::hs256_sidecar(&app.url, &[]).await;
    let token = hs256(&claims(USER, &["user"]), HS256_SECRET.as_bytes());
    let got = received(
        sidecar
            .get("/api/v1/wallets")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.header("x-user-id").unwrap(), USER);

    let eddsa = Key::generate("k").sign(&claims(USER, &["user"]));
    let response = sidecar
        .get("/api/v1/wallets")
        .bearer_auth(&eddsa)
        .send()
        .await
        .unwrap();
    assert_refused(response, 401, "UNAUTHORIZED", "algorithm_not_allowed").await;
    assert_eq!(app.hits(), 1);
}

#[tokio::test]
async fn paths_not_in_normal_form_cannot_smuggle_a_request_past_the_checks() {
    let s = setup(&[]).await;
    // HTTP clients resolve dot segments before sending; a raw request does not.
    for path in [
        "/api/v1/auth/login/../../users/me",
        "/api/v1/auth/login/%2e%2e/%2E%2E/users/me",
        "//internal/x",
        "/%69nternal/x",
    ] {
        let mut stream =
            tokio::net::TcpStream::connect(s.sidecar.url.trim_start_matches("http://"))
                .await
                .unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(
            answer.contains("x-finflow-proxy-error: invalid_path"),
            "{answer}"
        );
        assert!(answer.contains("VALIDATION_ERROR"), "{answer}");
    }
    assert_eq!(s.app.hits(), 0);
}

#[tokio::test]
async fn an_answer_of_the_sidecar_s_own_to_a_request_with_a_body_says_the_connection_closes() {
    let s = setup(&[]).await;
    // Refused before its body is read (no token): the connection ends after the answer,
    // and a client that reused it (the gateway) would send its next request into a
    // closed connection and answer 502.
    let mut stream = tokio::net::TcpStream::connect(s.sidecar.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let body = r#"{"currency":"USD"}"#;
    stream
        .write_all(
            format!(
                "POST /api/v1/wallets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert_eq!(s.app.hits(), 0);

    // Without a body, the connection stays for the next request.
    let refused = s.sidecar.get("/api/v1/wallets").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get("connection").is_none());
}

#[tokio::test]
async fn the_admin_port_serves_live_ready_and_metrics() {
    let s = setup(&[]).await;
    s.sidecar.get("/api/v1/wallets").send().await.unwrap();

    let live = client()
        .get(format!("{}/live", s.sidecar.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    let ready: Value = client()
        .get(format!("{}/ready", s.sidecar.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "up");
    let names: Vec<&str> = ready["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["upstream", "jwks"]);

    let metrics = admin_metrics(&s.sidecar).await;
    for name in [
        "finflow_sidecar_requests_total{status=\"401\",origin=\"proxy\",traffic=\"api\"}",
        "finflow_sidecar_jwt_rejections_total{reason=\"missing_token\"}",
        "finflow_sidecar_jwks_fetches_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
}

#[tokio::test]
async fn the_upstream_duration_histogram_is_recorded() {
    let s = setup(&[]).await;
    received(s.sidecar.get("/health").send().await.unwrap()).await;
    let metrics = admin_metrics(&s.sidecar).await;
    assert!(
        metrics.contains("finflow_sidecar_upstream_duration_seconds_bucket"),
        "{metrics}"
    );
}

#[tokio::test]
async fn metrics_is_never_forwarded_with_a_token_or_without() {
    // Listed in PUBLIC_PATHS (a FinService may still list it), it is refused all the same.
    let configs: [&[&str]; 2] = [&[], &["--public-paths=/health,/metrics"]];
    for extra in configs {
        let s = setup(extra).await;
        let token = s.key.sign(&claims(USER, &["user"]));
        let response = s.sidecar.get("/metrics").send().await.unwrap();
        assert_refused(response, 404, "NOT_FOUND", "no_route").await;
        let response = s.with_token("/metrics", &token).await;
        assert_refused(response, 404, "NOT_FOUND", "no_route").await;
        assert_eq!(s.app.hits(), 0, "the app never saw /metrics ({extra:?})");
    }
}

#[tokio::test]
async fn the_admin_metrics_are_the_sidecars_then_the_apps() {
    let s = setup(&[]).await;
    s.sidecar.get("/api/v1/wallets").send().await.unwrap();
    let metrics = admin_metrics(&s.sidecar).await;
    for line in [
        "finflow_sidecar_requests_total{status=\"401\",origin=\"proxy\",traffic=\"api\"}",
        "finflow_sidecar_upstream_metrics_up 1\n",
        "echo_app_orders_total 42\n",
        "finflow_dependency_up{dependency=\"upstream\"}",
        "finflow_dependency_up{dependency=\"database\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    // Both report this family: it is one group under one TYPE line.
    assert_eq!(
        metrics.matches("# TYPE finflow_dependency_up ").count(),
        1,
        "{metrics}"
    );
}

#[tokio::test]
async fn the_admin_metrics_answer_without_the_app_and_say_so() {
    // Nothing listens on one; the other accepts connections and never answers.
    let closed = finflow_platform::testing::ClosedPort::new().unwrap();
    let silent = finflow_platform::testing::ClosedPort::new()
        .unwrap()
        .open()
        .unwrap();
    for upstream in [
        format!("http://127.0.0.1:{}", closed.port),
        format!("http://{}", silent.local_addr().unwrap()),
    ] {
        let sidecar = Proxy::hs256_sidecar(&upstream, &[]).await;
        let metrics = admin_metrics(&sidecar).await;
        assert!(
            metrics.contains("finflow_sidecar_upstream_metrics_up 0\n"),
            "{upstream}: {metrics}"
        );
        assert!(
            metrics.contains("# TYPE finflow_sidecar_requests_total counter"),
            "{upstream}: {metrics}"
        );
    }
}

#[tokio::test]
async fn on_shutdown_ready_turns_503_while_draining_and_run_returns() {
    let app = Echo::start("app").await;
    let key = Key::generate("key-1");
    let jwks = JwksServer::start(&[&key]).await;
    let mut draining = Proxy::sidecar(&app, &jwks, &["--shutdown-drain-secs=3600"]).await;
    draining.signal_shutdown();
    wait_until("/ready to answer 503", || async {
        draining.ready_status().await == 503
    })
    .await;
    received(draining.get("/health").send().await.unwrap()).await;

    let sidecar = Proxy::sidecar(&app, &jwks, &[]).await;
    let url = sidecar.url.clone();
    sidecar.stop().await;
    assert!(
        client().get(format!("{url}/health")).send().await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn stopping_closes_an_idle_keep_alive_connection_at_once() {
    use http_body_util::{BodyExt as _, Empty};
    let s = setup(&[]).await;
    let address = s.sidecar.url.trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get("/health")
        .header("host", "x")
        .body(Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let answer = sender.send_request(request).await.unwrap();
    assert_eq!(answer.status(), 200);
    answer.into_body().collect().await.unwrap();

    // The connection is idle and kept alive, and nothing more comes on it: the sidecar
    // must close it rather than wait for a request.
    s.sidecar.stop().await;
    let closed = tokio::time::timeout(Duration::from_secs(2), connection)
        .await
        .expect("the sidecar closes the idle connection when it stops");
    assert!(closed.unwrap().is_ok(), "closed cleanly, between requests");
    assert!(sender.is_closed());
}

/// Names of this process's threads that serve extra event loops.
fn loop_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("proxy-loop-"))
        .collect()
}

#[tokio::test]
async fn extra_event_loops_serve_connections_on_their_own_threads_and_end_with_the_proxy() {
    let app = Echo::start("app").await;
    let key = Key::generate("key-1");
    let jwks = JwksServer::start(&[&key]).await;
    let sidecar = Proxy::sidecar(&app, &jwks, &["--worker-threads=3"]).await;
    let mut threads = loop_threads();
    threads.sort();
    assert_eq!(threads, ["proxy-loop-1", "proxy-loop-2"]);

    // Separate clients make separate connections, which the loops accept between them.
    let token = key.sign(&claims(USER, &["user"]));
    let answers = futures_util::future::join_all((0..12).map(|_| {
        let request = client()
            .get(format!("{}/api/v1/wallets", sidecar.url))
            .bearer_auth(&token);
        async move { received(request.send().await.unwrap()).await }
    }))
    .await;
    for answer in &answers {
        assert_eq!(answer.header("x-user-id").as_deref(), Some(USER));
    }
    assert_eq!(app.hits(), 12);

    sidecar.stop().await;
    wait_until("the extra loops' threads to end", || async {
        loop_threads().is_empty()
    })
    .await;
}

#[tokio::test]
async fn waiting_until_live_returns_once_the_admin_port_answers_and_gives_up_otherwise() {
    let s = setup(&[]).await;
    let sidecar = &s.sidecar;
    let admin: std::net::SocketAddr = sidecar.admin.trim_start_matches("http://").parse().unwrap();
    finflow_sidecar::wait_live(admin, Duration::from_secs(5))
        .await
        .expect("a running sidecar is live");

    // A port nobody listens on: refused until the deadline, then an error naming why.
    let closed = finflow_platform::testing::ClosedPort::new().unwrap();
    let unused = std::net::SocketAddr::from(([127, 0, 0, 1], closed.port));
    let waited = finflow_sidecar::wait_live(unused, Duration::from_millis(300)).await;
    let error = waited.expect_err("nothing answers there");
    assert!(error.contains("not live after"), "{error}");
}
