//! Test fixtures on real sockets: an echo app, a JWK set server, signing keys, and a
//! sidecar (or gateway) started with `run` on port 0.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use finflow_sidecar::{Config, run};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub const ISSUER: &str = "finflow-auth";
pub const AUDIENCE: &str = "finflow";
pub const HS256_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

/// An HTTP client that never goes through a proxy and never hangs a test.
pub fn client() -> reqwest::Client {
    finflow_platform::client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn spawn_server(router: Router) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (url, task)
}

/// Polls `check` every 20 ms until it holds, failing the test after 30 s.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------
// The echo app

/// The echo app's `/metrics`: one metric of its own and one family the sidecar reports
/// too (its health checks), with another `dependency`.
pub const ECHO_METRICS: &str = "# HELP echo_app_orders_total Orders taken\n\
# TYPE echo_app_orders_total counter\n\
echo_app_orders_total 42\n\
\n\
# TYPE finflow_dependency_up gauge\n\
finflow_dependency_up{dependency=\"database\"} 1\n";

#[derive(Default)]
struct EchoState {
    name: String,
    /// Requests that reached the app, health probes excepted.
    hits: AtomicUsize,
    /// Lets `/stream` send its second chunk.
    release: Notify,
}

/// A tiny app that answers every request with what it received, as JSON:
/// `{"app", "method", "path", "headers": {name: [values]}, "body"}`. Special paths:
/// `/slow` never answers, `/wait/<ms>` answers that long after it has the whole request,
/// `/status/<code>` answers that status (with a spoofed
/// `x-finflow-proxy-error`), `/stream` sends one chunk, then a second once released,
/// `/metrics` answers [`ECHO_METRICS`].
pub struct Echo {
    pub url: String,
    state: Arc<EchoState>,
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Echo {
    pub async fn start(name: &str) -> Self {
        let state = Arc::new(EchoState {
            name: name.to_owned(),
            ..EchoState::default()
        });
        let router = Router::new().fallback(echo).with_state(Arc::clone(&state));
        let (url, task) = spawn_server(router).await;
        Self { url, state, task }
    }

    /// Requests that reached the app, `/health` probes excepted.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Lets a `/stream` response send its second chunk.
    pub fn release_stream(&self) {
        self.state.release.notify_one();
    }
}

async fn echo(State(state): State<Arc<EchoState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    if path != "/health" {
        state.hits.fetch_add(1, Ordering::SeqCst);
    }
    if path == "/slow" {
        std::future::pending::<()>().await;
    }
    if path == "/metrics" {
        return (
            [(axum::http::header::CONTENT_TYPE, "text/plain")],
            ECHO_METRICS,
        )
            .into_response();
    }
    if path == "/stream" {
        let stream = futures_util::stream::unfold(0u8, move |step| {
            let state = Arc::clone(&state);
            async move {
                match step {
                    0 => Some((Ok::<_, std::io::Error>(Bytes::from("first\n")), 1)),
                    1 => {
                        state.release.notified().await;
                        Some((Ok(Bytes::from("second\n")), 2))
                    }
                    _ => None,
                }
            }
        });
        return Body::from_stream(stream).into_response();
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    if let Some(millis) = path.strip_prefix("/wait/") {
        tokio::time::sleep(Duration::from_millis(millis.parse().unwrap())).await;
    }
    let echoed = axum::Json(json!({
        "app": state.name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(ToString::to_string),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }));
    if path == "/close" {
        // The app ends the connection after this answer.
        return ([(axum::http::header::CONNECTION, "close")], echoed).into_response();
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        return (status, [("x-finflow-proxy-error", "spoofed")], echoed).into_response();
    }
    echoed.into_response()
}

/// The headers an echo response says the app received.
pub struct Received(pub Value);

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        let values = self.0["headers"][name].as_array()?;
        assert_eq!(values.len(), 1, "{name} arrived {} times", values.len());
        values[0].as_str().map(str::to_owned)
    }

    pub fn has(&self, name: &str) -> bool {
        !self.0["headers"][name].is_null()
    }
}

pub async fn received(response: reqwest::Response) -> Received {
    assert_eq!(response.status(), 200, "the request should reach the app");
    assert!(response.headers().get("x-finflow-proxy-error").is_none());
    Received(response.json().await.unwrap())
}

// ---------------------------------------------------------------------------------
// Keys, tokens and the JWK set server

/// An Ed25519 signing key with its `kid`.
#[derive(Clone)]
pub struct Key {
    pub kid: String,
    signing: SigningKey,
}

impl Key {
    pub fn generate(kid: &str) -> Self {
        let seed: [u8; 32] = rand::random();
        Self {
            kid: kid.to_owned(),
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The same kid with another key: what a forger would try.
    pub fn impostor(&self) -> Self {
        Self::generate(&self.kid)
    }

    pub fn public_bytes(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    pub fn jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(self.public_bytes()),
        })
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let der = self.signing.to_pkcs8_der().unwrap();
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes())).unwrap()
    }
}

pub fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
}

/// Valid claims for `sub` with `roles`, as the auth service issues them.
pub fn claims(sub: &str, roles: &[&str]) -> Value {
    let now = now();
    json!({
        "sub": sub,
        "email": format!("{sub}@example.com"),
        "roles": roles,
        "kyc_status": "verified",
        "tier": "gold",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "jti": uuid::Uuid::new_v4().to_string(),
    })
}

pub fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A token with any header, no signature.
pub fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

struct JwksState {
    keys: Mutex<Vec<Value>>,
    fetches: AtomicUsize,
    available: AtomicBool,
}

/// Serves `/.well-known/jwks.json` and counts fetches; can be made to fail.
pub struct JwksServer {
    pub uri: String,
    state: Arc<JwksState>,
    task: JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    pub async fn start(keys: &[&Key]) -> Self {
        let state = Arc::new(JwksState {
            keys: Mutex::new(keys.iter().map(|k| k.jwk()).collect()),
            fetches: AtomicUsize::new(0),
            available: AtomicBool::new(true),
        });
        let router = Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .with_state(Arc::clone(&state));
        let (url, task) = spawn_server(router).await;
        Self {
            uri: format!("{url}/.well-known/jwks.json"),
            state,
            task,
        }
    }

    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    pub fn add(&self, key: &Key) {
        self.state.keys.lock().unwrap().push(key.jwk());
    }

    /// Serves exactly `keys` from now on (a key dropped by the issuer).
    pub fn replace(&self, keys: &[&Key]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk()).collect();
    }

    pub fn set_available(&self, available: bool) {
        self.state.available.store(available, Ordering::SeqCst);
    }
}

async fn jwks(State(state): State<Arc<JwksState>>) -> Response {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    if !state.available.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let keys = state.keys.lock().unwrap().clone();
    axum::Json(json!({ "keys": keys })).into_response()
}

// ---------------------------------------------------------------------------------
// The proxy under test

/// A sidecar or gateway started with `run` on port 0.
pub struct Proxy {
    pub url: String,
    pub admin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Proxy {
    /// Starts with `args` (flags as `--name=value`) added to the listen addresses.
    pub async fn start(args: &[String]) -> Self {
        finflow_platform::telemetry::init_for_tests();
        let mut argv: Vec<String> = vec![
            "finflow-sidecar".into(),
            "--listen=127.0.0.1:0".into(),
            "--admin=127.0.0.1:0".into(),
            "--log-format=pretty".into(),
        ];
        argv.extend(args.iter().cloned());
        let config = finflow_platform::config::try_load_from::<Config, _, _>(argv)
            .unwrap_or_else(|e| panic!("test configuration refused: {e:?}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let admin_url = format!("http://{}", admin.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(async move {
            run(config, listener, Some(admin), shutdown).await.unwrap();
        });
        Self {
            url,
            admin: admin_url,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Sends the shutdown signal without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Signals shutdown and waits for `run` to return `Ok`.
    pub async fn stop(mut self) {
        self.signal_shutdown();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("run returns after shutdown")
            .expect("run returns Ok");
    }

    /// A sidecar in JWKS mode in front of `app`, ready (app and keys) when returned.
    pub async fn sidecar(app: &Echo, jwks: &JwksServer, extra: &[&str]) -> Self {
        let mut args = vec![
            format!("--upstream={}", app.url),
            format!("--jwks-uri={}", jwks.uri),
            format!("--jwt-issuer={ISSUER}"),
            format!("--jwt-audiences=other,{AUDIENCE}"),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let proxy = Self::start(&args).await;
        proxy.wait_ready().await;
        proxy
    }

    /// A sidecar in HS256 mode in front of `upstream`; not waited on (the upstream may
    /// be down on purpose).
    pub async fn hs256_sidecar(upstream: &str, extra: &[&str]) -> Self {
        let mut args = vec![
            format!("--upstream={upstream}"),
            format!("--jwt-hs256-secret={HS256_SECRET}"),
            format!("--jwt-issuer={ISSUER}"),
            format!("--jwt-audiences={AUDIENCE}"),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::start(&args).await
    }

    pub async fn ready_status(&self) -> u16 {
        match client().get(format!("{}/ready", self.admin)).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub async fn wait_ready(&self) {
        wait_until("the sidecar to be ready", || async {
            self.ready_status().await == 200
        })
        .await;
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        client().get(format!("{}{path}", self.url))
    }
}

/// Asserts a proxy error: status, envelope code, `details.reason` and the
/// `x-finflow-proxy-error` header.
pub async fn assert_refused(response: reqwest::Response, status: u16, code: &str, reason: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(
        response
            .headers()
            .get("x-finflow-proxy-error")
            .map(|v| v.to_str().unwrap().to_owned())
            .as_deref(),
        Some(reason)
    );
    assert!(response.headers().get("x-request-id").is_some());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["details"]["reason"], reason, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

/// A sidecar's admin `/metrics`, which always answers 200.
pub async fn admin_metrics(sidecar: &Proxy) -> String {
    let response = client()
        .get(format!("{}/metrics", sidecar.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "a scrape never fails");
    response.text().await.unwrap()
}
