//! The HTTP shell every service shares: platform routes, middleware, serving.
//!
//! [`router`] wraps a service's API router with `/health`, `/ready`, `/metrics` and
//! `/openapi.json`, envelope answers for unknown routes and methods, a body limit whose
//! rejection is a 400 in the envelope (through [`crate::extract::Json`]), panics turned
//! into `500 INTERNAL_ERROR`, request ids, request metrics and a span per request that
//! continues the caller's `traceparent`. [`serve`] runs it until a shutdown future
//! resolves, then drains connections in flight.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::error::{ApiError, ErrorCode, ErrorEnvelope};
use crate::health::{Health, HealthReport, Status};
use crate::telemetry;

/// Request latency buckets in seconds, from a cache hit to a slow report.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The process-wide Prometheus recorder (metrics are global by design of the `metrics` crate).
///
/// Histogram samples wait in the recorder until they are folded into their buckets,
/// which `render` does, and otherwise only upkeep: without a scrape, every request's
/// latency sample would stay in memory. So the first call also starts upkeep
/// ([`keep_up`]) every [`UPKEEP_EVERY`].
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed; /metrics shows ours only"
                );
            }
            if let Err(e) = keep_up(handle.clone(), UPKEEP_EVERY) {
                tracing::error!(error = %e, "cannot start metrics upkeep: histogram samples are kept until /metrics is scraped");
            }
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets (the exporter's own
/// default for the recorders it starts itself).
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// A recorder with the platform's buckets, not installed.
pub fn metrics_recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &LATENCY_BUCKETS)
        .expect("the bucket list is not empty")
        .build_recorder()
}

/// Runs `handle`'s upkeep every `every`, for as long as the process lives, on a thread
/// of its own: it needs no runtime, and a busy runtime cannot delay it.
pub fn keep_up(handle: PrometheusHandle, every: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                handle.run_upkeep();
            }
        })
        .map(drop)
}

#[derive(OpenApi)]
#[openapi(
    paths(health_report, ready, metrics_text),
    components(schemas(HealthReport, ErrorEnvelope))
)]
struct PlatformApi;

/// Wraps a service's API with the platform routes and middleware.
///
/// `openapi` is the service's document; `/openapi.json` serves it as published for
/// clients of the gateway ([`crate::openapi::publish`]).
pub fn router(
    api: Router,
    health: Health,
    mut openapi: utoipa::openapi::OpenApi,
    max_body_bytes: usize,
) -> Router {
    openapi.merge(PlatformApi::openapi());
    let mut openapi_json = serde_json::to_value(&openapi).unwrap_or_default();
    crate::openapi::publish(&mut openapi_json);
    let platform = Router::new()
        .route("/health", get(health_report))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(health)
        .route(
            "/openapi.json",
            get(move || std::future::ready(axum::Json(openapi_json))),
        );
    let _ = metrics_handle();
    api.merge(platform)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(drain_unread_body))
        .layer(middleware::from_fn(track_metrics))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal(&"a handler panicked").into_response()
        }))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

fn request_span(req: &Request<Body>) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "http",
        method = %req.method(),
        route,
        request_id,
    );
    telemetry::set_parent_from_http(&span, req.headers());
    span
}

async fn track_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        "finflow_http_requests_total",
        "method" => method.clone(), "route" => route.clone(), "status" => status
    )
    .increment(1);
    metrics::histogram!(
        "finflow_http_request_duration_seconds",
        "method" => method, "route" => route
    )
    .record(started.elapsed().as_secs_f64());
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

/// Liveness plus the health of every dependency.
#[utoipa::path(get, path = "/health", tag = "platform",
    responses((status = 200, body = HealthReport), (status = 503, body = HealthReport)))]
pub async fn health_report(State(health): State<Health>) -> Response {
    let report = health.report(false).await;
    let status = if report.status == Status::Down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(report)).into_response()
}

/// Ready to take traffic: serving and every critical dependency answers.
#[utoipa::path(get, path = "/ready", tag = "platform",
    responses((status = 200, body = HealthReport), (status = 503, body = HealthReport)))]
pub async fn ready(State(health): State<Health>) -> Response {
    let mut report = health.report(true).await;
    if !health.is_serving() {
        report.status = Status::Down;
    }
    let status = if report.status == Status::Up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "platform",
    responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics_text(State(_): State<Health>) -> Response {
    let handle = metrics_handle();
    handle.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets requests in
/// flight finish. Client addresses are available through `ConnectInfo<SocketAddr>`.
///
/// Connections get TCP_NODELAY: a response whose head and body leave in two writes (a
/// proxied or streamed body) would otherwise wait for the peer's delayed ACK, up to
/// 40 ms a hop, on every request of a client that waits for its answer.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// The future [`shutdown_signal`] returns, boxed so it can be passed around.
pub type ShutdownSignal = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested");
}

/// Waits for a signal, marks the service not ready, waits `drain` so load balancers
/// notice, and resolves: the future to hand to [`serve`].
pub async fn drain_on_signal(health: Health, drain: Duration) {
    shutdown_signal().await;
    health.stop_serving();
    tokio::time::sleep(drain).await;
}

/// The most of a request body a service reads and drops after answering without it.
const DRAIN_BYTES: usize = 16 << 20;
/// And for how long.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads and drops what a handler left of its request's body before the answer goes
/// out.
///
/// An answer given before the body was read (405, a wrong content type, a body over
/// the limit, a refusal that needed no body) would otherwise be followed by a close
/// with unread bytes, which resets the connection: the caller (the sidecar, still
/// writing the body) then sees a failed write instead of the answer, and reports 502.
/// Past [`DRAIN_BYTES`] or [`DRAIN_TIME`] the answer says `Connection: close`.
async fn drain_unread_body(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let left = Arc::new(Mutex::new(None));
    let tracked = Body::new(Tracked {
        inner: Some(body),
        left: Arc::clone(&left),
    });
    let mut response = next.run(Request::from_parts(parts, tracked)).await;
    let unread = left.lock().expect("drain lock").take();
    if let Some(unread) = unread {
        let mut frames = unread.into_data_stream();
        let mut dropped = 0usize;
        let drained = tokio::time::timeout(DRAIN_TIME, async {
            while let Some(Ok(chunk)) = frames.next().await {
                dropped += chunk.len();
                if dropped > DRAIN_BYTES {
                    return false;
                }
            }
            true
        })
        .await;
        if drained != Ok(true) {
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
    }
    response
}

/// A request body that hands back what is left of it when dropped unfinished.
struct Tracked {
    inner: Option<Body>,
    left: Arc<Mutex<Option<Body>>>,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.inner.as_mut() {
            Some(inner) => std::pin::Pin::new(inner).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map_or_else(
            || http_body::SizeHint::with_exact(0),
            http_body::Body::size_hint,
        )
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take()
            && !http_body::Body::is_end_stream(&inner)
            && let Ok(mut left) = self.left.lock()
        {
            *left = Some(inner);
        }
    }
}
