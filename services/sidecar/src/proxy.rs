//! The forwarding core both modes share, and the proxy's own error answers.
//!
//! Every request goes through [`handle`]: a span continuing the caller's trace, then
//! hop-by-hop and client identity headers removed, then the mode's [`Gate`] decides
//! (and may add identity headers), then forwarding headers, the trace context and the
//! request id are set and the request is streamed to the upstream over the client
//! connection's own keep-alive connection ([`crate::upstream`]). The response is
//! streamed back.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use finflow_platform::error::{ApiError, ErrorCode};
use finflow_platform::telemetry;
use http::header::{HOST, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::gateway::GatewayGate;
use crate::headers::{self, PROXY_ERROR, X_REQUEST_ID};
use crate::jwt::Rejection;
use crate::paths::{self, is_ambiguous};
use crate::sidecar::SidecarGate;
use crate::upstream::{BodySent, ClientBody, UpstreamError, Upstreams};

/// The pooled HTTP/1 client that fetches the JWK set.
pub type HttpClient = Client<HttpConnector, Body>;

/// A client with keep-alive pooling and a connect timeout.
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(crate::upstream::CONNECT_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// An answer the proxy gives itself: the JSON envelope, the `x-finflow-proxy-error`
/// header with a short reason, and `details.reason` carrying the same reason.
#[derive(Debug)]
pub struct ProxyError {
    status: StatusCode,
    error: ApiError,
    reason: &'static str,
    /// The answer ends the connection ([`ProxyError::closing`]).
    close: bool,
}

impl ProxyError {
    /// An error with the code's own status.
    pub fn new(code: ErrorCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: code.status(),
            error: ApiError::new(code, message).with_details(json!({ "reason": reason })),
            reason,
            close: false,
        }
    }

    /// The same answer, saying `Connection: close`: given while the client's body is
    /// unread, it is followed by the connection's end, and a client that reused the
    /// connection (the gateway above all) would send its next request into it and
    /// fail (a 502 for a request it cannot send twice).
    #[must_use]
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The same envelope with another status (502 and 504 carry `DEPENDENCY_UNAVAILABLE`).
    #[must_use]
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// `401 UNAUTHORIZED` for a refused token.
    pub fn unauthorized(rejection: Rejection) -> Self {
        let message = match rejection {
            Rejection::MissingToken => "a bearer token is required",
            _ => "the bearer token is not valid",
        };
        Self::new(ErrorCode::Unauthorized, rejection.reason(), message)
    }

    /// `429 RATE_LIMITED` with `Retry-After`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let reason = "rate_limited";
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            error: ApiError::rate_limited("too many requests, slow down", retry_after_secs)
                .with_details(json!({ "reason": reason })),
            reason,
            close: false,
        }
    }

    /// `404 NOT_FOUND`: the gateway has no route for the path (internal paths included),
    /// or the path is a sidecar's admin-only `/metrics`.
    pub fn no_route() -> Self {
        Self::new(ErrorCode::NotFound, "no_route", "no such route")
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut response = self.error.into_response();
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(PROXY_ERROR, HeaderValue::from_static(self.reason));
        if self.close {
            headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if unauthorized {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// What decides, per mode, whether a request goes upstream and where.
pub enum Gate {
    Sidecar(Box<SidecarGate>),
    Gateway(GatewayGate),
}

impl Gate {
    async fn admit(
        &self,
        parts: &mut http::request::Parts,
        client: IpAddr,
    ) -> Result<&crate::config::BaseUrl, ProxyError> {
        match self {
            Self::Sidecar(gate) => gate.admit(parts, client).await,
            Self::Gateway(gate) => gate.admit(parts),
        }
    }
}

/// The proxy of one listener.
pub struct Proxy {
    gate: Gate,
    timeout: Duration,
    /// Identity headers removed from every client request.
    strip: Vec<HeaderName>,
    /// A span per request (traces are exported); else only the trace context hops.
    spans: bool,
    /// Routes the listener answers itself (the gateway's `/health` and
    /// `/openapi.json`), by exact path.
    local: Option<(&'static [&'static str], Router)>,
    /// Peers whose `X-Forwarded-For` is believed.
    trusted: Vec<ipnet::IpNet>,
    meters: Meters,
}

impl Proxy {
    pub fn new(gate: Gate, timeout: Duration, strip: Vec<HeaderName>, spans: bool) -> Self {
        Self {
            gate,
            timeout,
            strip,
            spans,
            local: None,
            trusted: Vec::new(),
            meters: Meters::new(),
        }
    }

    /// Believes the `X-Forwarded-For` of peers in `proxies` ([`headers::forwarded_client`]).
    #[must_use]
    pub fn trusting(mut self, proxies: Vec<ipnet::IpNet>) -> Self {
        self.trusted = proxies;
        self
    }

    /// Answers `paths` with `router` instead of forwarding them.
    #[must_use]
    pub fn answering(mut self, paths: &'static [&'static str], router: Router) -> Self {
        self.local = Some((paths, router));
        self
    }

    /// [`Self::forward_request`]; an answer of its own to a request with a body closes
    /// the connection ([`ProxyError::closing`]): that body is not all read.
    async fn forward(
        &self,
        request: Request<Incoming>,
        upstreams: &Upstreams,
        client: &Peer,
        request_id: &HeaderValue,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let has_body = !hyper::body::Body::is_end_stream(request.body());
        self.forward_request(request, upstreams, client, request_id)
            .await
            .map_err(|e| if has_body { e.closing() } else { e })
    }

    async fn forward_request(
        &self,
        request: Request<Incoming>,
        upstreams: &Upstreams,
        client: &Peer,
        request_id: &HeaderValue,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = request.into_parts();
        let traffic = Traffic::of(parts.uri.path());
        headers::remove_hop_by_hop(&mut parts.headers);
        headers::strip(&mut parts.headers, &self.strip);
        if is_ambiguous(parts.uri.path()) {
            return Err(ProxyError::new(
                ErrorCode::ValidationError,
                "invalid_path",
                "the path is not in normal form (dot or empty segments, encoded unreserved characters)",
            ));
        }
        let trusted = self.trusted.iter().any(|net| net.contains(&client.address));
        let forwarded = trusted
            .then(|| headers::forwarded_client(&parts.headers, &self.trusted))
            .flatten()
            .map(|address| (address, headers::address_value(address)));
        let (client_address, client_header) = forwarded
            .as_ref()
            .map_or((client.address, &client.header), |(a, h)| (*a, h));
        let base = self.gate.admit(&mut parts, client_address).await?;

        let host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let origin = headers::Origin {
            peer: &client.header,
            trusted,
            client: client_header,
        };
        headers::set_forwarding(&mut parts.headers, &origin, host, request_id);
        if self.spans {
            telemetry::inject_http(&mut parts.headers);
        } else {
            telemetry::hop_http(&mut parts.headers);
        }
        // Origin form: the upstream is named by the connection, not the request line.
        parts.uri = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
            .into();
        parts.version = Version::HTTP_11;

        // The client's deadline, and the upstream's too for a body known to be empty.
        let started = tokio::time::Instant::now();
        let (body, progress) = ClientBody::new(body);
        let (exchanged, upstream_from) = exchange(
            upstreams.send(base.authority(), Request::from_parts(parts, body)),
            progress,
            started,
            self.timeout,
        )
        .await;
        if let Some(from) = upstream_from {
            self.meters
                .upstream(traffic)
                .record(from.elapsed().as_secs_f64());
        }
        let response = match exchanged {
            Exchange::Answered(Ok(response)) => response,
            Exchange::Answered(Err(e)) => {
                tracing::warn!(error = %e, upstream = %base.as_base(), "upstream request failed");
                let (reason, message) = if e.is_connect() {
                    (
                        "upstream_unreachable",
                        "the upstream service is unreachable",
                    )
                } else {
                    ("upstream_error", "the upstream service failed to answer")
                };
                return Err(
                    ProxyError::new(ErrorCode::DependencyUnavailable, reason, message)
                        .with_status(StatusCode::BAD_GATEWAY),
                );
            }
            Exchange::TimedOut => {
                tracing::warn!(timeout = ?self.timeout, upstream = %base.as_base(), "upstream timed out");
                return Err(ProxyError::new(
                    ErrorCode::DependencyUnavailable,
                    "upstream_timeout",
                    "the upstream service did not answer in time",
                )
                .with_status(StatusCode::GATEWAY_TIMEOUT));
            }
            Exchange::ClientBody(BodySent::Broken) => {
                return Err(ProxyError::new(
                    ErrorCode::ValidationError,
                    "request_body_incomplete",
                    "the request body ended before it was complete",
                ));
            }
            Exchange::ClientBody(_) => {
                return Err(ProxyError::new(
                    ErrorCode::RequestTimeout,
                    "request_body_timeout",
                    "the request body did not arrive in time",
                ));
            }
        };
        let (mut parts, body) = response.into_parts();
        // The client's connection is ours: an HTTP/1.0 upstream does not make it 1.0.
        parts.version = Version::HTTP_11;
        headers::remove_hop_by_hop(&mut parts.headers);
        // Only a proxy may say an answer is its own: a sidecar removes the mark from its
        // app's answers; the gateway keeps it, since its upstreams are our sidecars.
        if matches!(self.gate, Gate::Sidecar(_)) {
            parts.headers.remove(PROXY_ERROR);
        }
        Ok(Response::from_parts(parts, Either::Left(body)))
    }
}

/// What came of sending a request upstream.
enum Exchange {
    /// The upstream answered, or its connection failed.
    Answered(Result<Response<Incoming>, UpstreamError>),
    /// The upstream did not answer within the timeout of having the whole request, or
    /// stopped taking the body.
    TimedOut,
    /// The client's body was not all there in time, or its connection broke while it
    /// was sent: the client's doing, which must not count as the upstream's.
    ClientBody(BodySent),
}

/// Waits for `send`'s answer. The client has `timeout` from `started` to send its whole
/// body; the upstream has `timeout` from when it had the whole request. Also returns
/// when the upstream's latency starts: none when the client's body was still owed (an
/// early answer, or the client's timeout), which a slow client would otherwise inflate.
async fn exchange(
    send: impl Future<Output = Result<Response<Incoming>, UpstreamError>>,
    progress: Option<watch::Receiver<BodySent>>,
    started: Instant,
    timeout: Duration,
) -> (Exchange, Option<Instant>) {
    let Some(mut progress) = progress else {
        let answered = tokio::time::timeout_at(started + timeout, send).await;
        let exchanged = answered.map_or(Exchange::TimedOut, Exchange::Answered);
        return (exchanged, Some(started));
    };
    tokio::pin!(send);
    let mut deadline = started + timeout;
    let mut watching = true;
    loop {
        // The body's news first: a body all there just as the first deadline passes
        // moves the deadline rather than losing the race to it.
        tokio::select! {
            biased;
            changed = progress.changed(), if watching => {
                let now = *progress.borrow_and_update();
                if let BodySent::All(at) = now {
                    deadline = at + timeout;
                }
                // Settled, or its sender gone with the body: nothing more to hear.
                watching = changed.is_ok() && now.is_partial();
            }
            answered = &mut send => {
                let sent = *progress.borrow();
                let upstream_from = match sent {
                    BodySent::All(at) => Some(at),
                    _ => None,
                };
                return match answered {
                    Err(_) if sent == BodySent::Broken => (Exchange::ClientBody(sent), None),
                    answered => (Exchange::Answered(answered), upstream_from),
                };
            }
            () = tokio::time::sleep_until(deadline) => match *progress.borrow() {
                BodySent::All(at) if at + timeout > deadline => deadline = at + timeout,
                BodySent::All(at) => return (Exchange::TimedOut, Some(at)),
                // The upstream stopped taking the body: its time is all of it.
                BodySent::Partly => return (Exchange::TimedOut, Some(started)),
                owed => return (Exchange::ClientBody(owed), None),
            },
        }
    }
}

/// An answer's body: the upstream's, streamed as is (no box per request), or the
/// proxy's own.
pub type ProxyBody = Either<Incoming, Body>;

/// The client end of a connection.
pub struct Peer {
    pub address: IpAddr,
    /// `address` as a header value (`X-Forwarded-For`, `X-Real-IP`).
    pub header: HeaderValue,
}

impl Peer {
    pub fn new(address: IpAddr) -> Self {
        Self {
            address,
            header: headers::address_value(address),
        }
    }
}

/// Answers one request of a client connection from `peer`, whose upstream connections
/// are `upstreams`.
pub async fn handle(
    proxy: &Proxy,
    upstreams: &Upstreams,
    peer: &Peer,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    if let Some((paths, router)) = &proxy.local
        && paths.contains(&request.uri().path())
    {
        return answer_locally(router, request).await.map(Either::Right);
    }
    let request_id = headers::request_id(request.headers());
    let traffic = Traffic::of(request.uri().path());
    let (span, response) = if proxy.spans {
        let span = tracing::info_span!(
            "proxy",
            method = %request.method(),
            path = %request.uri().path(),
            request_id = request_id.to_str().unwrap_or_default(),
            status = tracing::field::Empty,
            proxy_error = tracing::field::Empty,
        );
        telemetry::set_parent_from_http(&span, request.headers());
        let response = proxy
            .forward(request, upstreams, peer, &request_id)
            .instrument(span.clone())
            .await;
        (span, response)
    } else {
        // No span to enter per poll: `forward` makes the request a hop in the trace.
        let response = proxy.forward(request, upstreams, peer, &request_id).await;
        (tracing::Span::none(), response)
    };
    let origin = if response.is_ok() {
        Origin::Upstream
    } else {
        Origin::Proxy
    };
    let mut response = match response {
        Ok(response) => response,
        Err(error) => {
            span.record("proxy_error", error.reason());
            span.in_scope(|| {
                tracing::info!(
                    reason = error.reason(),
                    status = %error.status(),
                    request_id = request_id.to_str().unwrap_or_default(),
                    "refused by the proxy"
                );
            });
            error.into_response().map(Either::Right)
        }
    };
    response.headers_mut().insert(X_REQUEST_ID, request_id);
    span.record("status", response.status().as_u16());
    proxy.meters.count(response.status(), origin, traffic);
    response
}

async fn answer_locally(router: &Router, request: Request<Incoming>) -> Response {
    use tower::ServiceExt as _;
    match router.clone().oneshot(request.map(Body::new)).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Whether a request was a probe ([`paths::PROBE_PATHS`]) or traffic: label `traffic`,
/// `probe` or `api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    Api,
    Probe,
}

impl Traffic {
    fn of(path: &str) -> Self {
        if paths::is_probe(path) {
            Self::Probe
        } else {
            Self::Api
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Probe => "probe",
        }
    }
}

/// Who answered: the upstream (the app, or for the gateway a sidecar), or this proxy
/// itself (a refused token, no route, an upstream unreachable or too slow). Label
/// `origin`, `upstream` or `proxy`: a version's own 5xx are `upstream`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Upstream,
    Proxy,
}

impl Origin {
    pub fn label(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Proxy => "proxy",
        }
    }
}

const ORIGINS: [Origin; 2] = [Origin::Upstream, Origin::Proxy];
const TRAFFICS: [Traffic; 2] = [Traffic::Api, Traffic::Probe];

/// Metric handles looked up once, not per request.
struct Meters {
    /// The upstream latency of traffic, and of probes.
    upstream: [metrics::Histogram; 2],
    /// Responses by status, origin and traffic, for the common statuses.
    statuses: Vec<(StatusCode, [metrics::Counter; 4])>,
}

impl Meters {
    const REQUESTS: &'static str = "finflow_sidecar_requests_total";
    const UPSTREAM: &'static str = "finflow_sidecar_upstream_duration_seconds";

    fn new() -> Self {
        let statuses = [
            200, 201, 202, 204, 400, 401, 403, 404, 409, 422, 429, 500, 502, 503, 504,
        ]
        .into_iter()
        .filter_map(|code| StatusCode::from_u16(code).ok())
        .map(|status| {
            let counters = std::array::from_fn(|i| {
                let (origin, traffic) = (ORIGINS[i / 2], TRAFFICS[i % 2]);
                Self::counter(status, origin, traffic)
            });
            (status, counters)
        })
        .collect();
        Self {
            upstream: TRAFFICS
                .map(|traffic| metrics::histogram!(Self::UPSTREAM, "traffic" => traffic.label())),
            statuses,
        }
    }

    fn counter(status: StatusCode, origin: Origin, traffic: Traffic) -> metrics::Counter {
        metrics::counter!(Self::REQUESTS, "status" => status.as_str().to_owned(),
            "origin" => origin.label(), "traffic" => traffic.label())
    }

    fn upstream(&self, traffic: Traffic) -> &metrics::Histogram {
        &self.upstream[usize::from(traffic == Traffic::Probe)]
    }

    fn count(&self, status: StatusCode, origin: Origin, traffic: Traffic) {
        let slot =
            usize::from(origin == Origin::Proxy) * 2 + usize::from(traffic == Traffic::Probe);
        match self.statuses.iter().find(|(s, _)| *s == status) {
            Some((_, counters)) => counters[slot].increment(1),
            None => Self::counter(status, origin, traffic).increment(1),
        }
    }
}
