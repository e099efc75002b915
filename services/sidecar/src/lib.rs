//! The FinFlow sidecar and, in gateway mode, the local entry point.
//!
//! # The model
//!
//! Apps never see a token and never trust a client: they bind to localhost and learn
//! who is calling only from headers their sidecar sets (`docs/architecture.md`, Identity). So
//! the sidecar is the one place where identity is established, and everything it does
//! to a request is in a fixed order:
//!
//! 1. hop-by-hop headers and every client-supplied identity header (`x-user-id`,
//!    `x-user-email`, `x-user-roles`, `x-kyc-status`, `x-account-tier` and every header
//!    of the claim map) are removed, on public paths too; a path not in normal form
//!    (dot or empty segments, encoded unreserved characters) is refused with `400`,
//!    since the app might read it differently from the checks below
//!    ([`paths::is_ambiguous`]);
//! 2. `/metrics` is never forwarded: `404`, token or not ([`paths::is_admin_only`]); the
//!    app's metrics reach Prometheus through the admin port's `/metrics` ([`admin`]);
//!    public paths (`PUBLIC_PATHS`) pass without a token; others need a valid
//!    `Authorization: Bearer` JWT, else `401` with `details.reason`
//!    (see [`jwt::Rejection`]); `/internal/*` is never public and needs a
//!    `service:<name>` role, else `403`;
//! 3. a per-caller token bucket (by `sub`, anonymous callers by address), else `429`;
//!    service tokens are not limited here: they call for users already limited at their
//!    own edge;
//! 4. verified claims become headers ([`headers::identity_headers`]), and
//!    `X-Forwarded-For/Host/Proto`, `X-Real-IP`, `X-Request-Id` and `traceparent` are set;
//! 5. the request is streamed to the app over a keep-alive connection that belongs to
//!    the client's connection and is driven by its task ([`upstream`]), and the
//!    response streamed back.
//!
//! Answers the proxy gives itself (400, 401, 403, 404, 408, 429, 502, 503, 504) are in
//! the JSON envelope and carry `x-finflow-proxy-error: <reason>`; an app's answers never
//! do.
//!
//! Gateway mode runs the same forwarding code ([`proxy`]) with another gate: the path
//! prefix picks a service's sidecar ([`paths::route`]), `/internal/*` is never routed,
//! and tokens are passed through for the sidecars to check.
//!
//! Decisions are pure functions, unit tested on their own: [`paths::is_public`],
//! [`paths::route`], [`jwt::validate`], [`headers::identity_headers`]. The I/O around
//! them (the JWK set cache, the rate limiter, the proxy) is tested on real sockets in
//! `tests/`.

pub mod admin;
pub mod config;
pub mod connections;
pub mod gateway;
pub mod headers;
pub mod jwks;
pub mod jwt;
pub mod limit;
pub mod openapi;
pub mod paths;
pub mod proxy;
pub mod server;
pub mod sidecar;
pub mod upstream;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use finflow_platform::health::{Health, Upstream};
use finflow_platform::http::{metrics_handle, serve};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Config, Mode};

use crate::config::{KeySource, ModeSettings, Settings};
use crate::gateway::GatewayGate;
use crate::jwks::{JwksCache, JwksLoaded};
use crate::jwt::Keys;
use crate::limit::RateLimit;
use crate::proxy::{Gate, Proxy};
use crate::sidecar::{SidecarGate, Verifier};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How often idle callers are dropped from the rate limiter.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

/// Why [`run`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("configuration is invalid: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Background tasks that end with [`run`].
#[derive(Default)]
struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.0.push(tokio::spawn(task));
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Serves the proxy on `listener` (and `/live`, `/ready`, `/metrics` on `admin`, when
/// given; a sidecar's `/metrics` includes its app's) until `shutdown` resolves, then
/// (after `SHUTDOWN_DRAIN_SECS`, with `/ready` answering 503) stops accepting and lets
/// requests in flight finish.
///
/// `config` is checked again here ([`Config::prepare`]), so an invalid one is an error
/// rather than a half-working proxy. Listeners are bound by the caller, which lets
/// tests use port 0.
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let settings = config.prepare().map_err(RunError::Config)?;
    let _ = metrics_handle();
    describe_metrics();
    let drain = settings.shutdown_drain;
    let loops = settings.event_loops;
    let limits = settings.limits;
    let mut tasks = Tasks::default();
    let (app, health, app_metrics) = build(settings, &mut tasks)?;

    let cancel = CancellationToken::new();
    {
        let (cancel, health) = (cancel.clone(), health.clone());
        tasks.spawn(async move {
            shutdown.await;
            health.stop_serving();
            if !drain.is_zero() {
                tracing::info!(?drain, "draining: /ready answers 503, still serving");
                tokio::time::sleep(drain).await;
            }
            cancel.cancel();
        });
    }
    let proxy = server::serve(listener, app, loops, limits, cancel.clone());
    let admin = async {
        match admin {
            Some(listener) => {
                serve(
                    listener,
                    admin::router(health, app_metrics),
                    cancel.clone().cancelled_owned(),
                )
                .await
            }
            None => Ok(()),
        }
    };
    tokio::try_join!(proxy, admin)?;
    Ok(())
}

/// Waits until an admin port at `admin` answers `/live` with 200, polling, for at
/// most `within`. An unspecified address (`0.0.0.0`, `::`) is asked on loopback.
pub async fn wait_live(admin: SocketAddr, within: Duration) -> Result<(), String> {
    let host = match admin.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let uri: http::Uri = format!("http://{}/live", SocketAddr::new(host, admin.port()))
        .parse()
        .map_err(|e| format!("no URI for {admin}: {e}"))?;
    let client = proxy::http_client();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let asked = tokio::time::timeout(Duration::from_secs(2), client.get(uri.clone())).await;
        let last = match asked {
            Ok(Ok(response)) if response.status() == http::StatusCode::OK => return Ok(()),
            Ok(Ok(response)) => format!("{uri} answered {}", response.status()),
            Ok(Err(e)) => format!("{uri}: {e}"),
            Err(_) => format!("{uri} did not answer within 2s"),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("not live after {within:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The proxy, the health checks `/ready` reports and, in sidecar mode, where the admin
/// `/metrics` reads the app's metrics.
fn build(
    settings: Settings,
    tasks: &mut Tasks,
) -> Result<(Arc<Proxy>, Health, Option<admin::AppMetrics>), RunError> {
    let strip = settings.claim_headers.stripped();
    match settings.mode {
        ModeSettings::Sidecar(sidecar) => {
            let verified = Arc::new(sidecar::VerifiedTokens::default());
            let mut health = Health::builder("finflow-sidecar", VERSION)
                .critical("upstream", Upstream::new(&sidecar.upstream.as_base()));
            let verifier = match sidecar.keys {
                KeySource::Hs256(secret) => {
                    Verifier::Fixed(Keys::hs256(secret.expose_secret().as_bytes()))
                }
                KeySource::Jwks {
                    uri,
                    refresh_every,
                    min_refresh,
                    epoch_file,
                    ca_file,
                } => {
                    let client = match jwks::client(ca_file.as_deref()) {
                        Ok(client) => client,
                        Err(e) => return Err(RunError::Config(vec![e])),
                    };
                    let cache = Arc::new(JwksCache::new(uri, client, min_refresh));
                    tasks.spawn(Arc::clone(&cache).keep_fresh(refresh_every));
                    if let Some(path) = epoch_file {
                        tasks.spawn(jwks::follow_epoch(
                            path,
                            Arc::clone(&cache),
                            Arc::clone(&verified),
                        ));
                    }
                    health = health.critical("jwks", JwksLoaded(Arc::clone(&cache)));
                    Verifier::Jwks(cache)
                }
            };
            let limit = Arc::new(RateLimit::new(sidecar.rate_per_second, sidecar.rate_burst));
            {
                let limit = Arc::clone(&limit);
                tasks.spawn(async move {
                    let mut every = tokio::time::interval(FORGET_IDLE_EVERY);
                    loop {
                        every.tick().await;
                        limit.forget_idle();
                    }
                });
            }
            let app_metrics = admin::AppMetrics::new(&sidecar.upstream, proxy::http_client());
            let gate = Gate::Sidecar(Box::new(SidecarGate {
                upstream: sidecar.upstream,
                verifier,
                policy: sidecar.policy,
                public_paths: sidecar.public_paths,
                limit,
                claim_headers: settings.claim_headers,
                verified,
            }));
            let proxy = Proxy::new(gate, settings.upstream_timeout, strip, settings.spans)
                .trusting(settings.trusted_proxies);
            Ok((Arc::new(proxy), health.build(), Some(app_metrics)))
        }
        ModeSettings::Gateway(gateway) => {
            let mut health = Health::builder("finflow-gateway", VERSION);
            for (service, base) in &gateway.routes {
                health = health.optional(service.name, Upstream::new(&base.as_base()));
            }
            let health = health.build();
            if gateway.routes.is_empty() {
                tracing::warn!("gateway mode without any ROUTES: every route answers 503");
            }
            let documents =
                openapi::Documents::new(gateway.routes.clone(), proxy::http_client(), VERSION);
            let gate = Gate::Gateway(GatewayGate::new(gateway));
            let own = Router::new()
                .route(
                    "/health",
                    get(finflow_platform::http::health_report).with_state(health.clone()),
                )
                .route(
                    "/openapi.json",
                    get(openapi::document).with_state(documents),
                )
                .method_not_allowed_fallback(admin::method_not_allowed);
            let proxy = Proxy::new(gate, settings.upstream_timeout, strip, settings.spans)
                .trusting(settings.trusted_proxies)
                .answering(&["/health", "/openapi.json"], own);
            Ok((Arc::new(proxy), health, None))
        }
    }
}

fn describe_metrics() {
    metrics::describe_counter!(
        "finflow_sidecar_requests_total",
        "Requests answered by the proxy, by status, origin (upstream: the upstream's answer; \
         proxy: the proxy's own) and traffic (probe: /health, /ready, /live; api: the rest)"
    );
    metrics::describe_counter!(
        "finflow_sidecar_jwt_rejections_total",
        "Tokens refused on protected paths, by reason"
    );
    metrics::describe_histogram!(
        "finflow_sidecar_upstream_duration_seconds",
        metrics::Unit::Seconds,
        "Time until the upstream's response head, by traffic (probe or api)"
    );
    metrics::describe_counter!(
        "finflow_sidecar_jwks_fetches_total",
        "JWK set fetches, by outcome"
    );
}
