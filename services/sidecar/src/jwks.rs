//! The cached JWK set: fetched in the background, refetched on an unknown `kid`.
//!
//! At start the set is fetched in the background, retried with backoff until it
//! arrives (until then `/ready` says so and protected paths answer 503), then refreshed
//! every `JWKS_REFRESH_SECS`; a failed refresh keeps the keys already known. A token
//! whose `kid` is not in the set triggers one refetch, and such refetches happen at most
//! once per `JWKS_MIN_REFRESH_SECS`, so forged kids cannot turn the sidecar into a
//! flood of requests against the issuer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use finflow_platform::health::Check;
use http::{Request, Uri};
use http_body_util::{BodyExt, Limited};

use crate::jwt::Keys;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWK set accepted.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// First retry delay after a failed fetch; doubled up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The client that fetches the JWK set: http, or https verified against the system's
/// roots and any `JWKS_CA_FILE` certificates.
pub type JwksClient = Client<HttpsConnector<HttpConnector>, Body>;

/// A [`JwksClient`] trusting the system's roots and the PEM certificates in `ca_file`.
pub fn client(ca_file: Option<&std::path::Path>) -> Result<JwksClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A system certificate rustls cannot use is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        for cert in finflow_platform::client::pem_certificates("JWKS_CA_FILE", path)? {
            roots
                .add(cert)
                .map_err(|e| format!("JWKS_CA_FILE {}: {e}", path.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(crate::upstream::CONNECT_TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector))
}

/// The verification keys of a JWK set, as last fetched.
pub struct JwksCache {
    uri: Uri,
    client: JwksClient,
    keys: RwLock<Option<Arc<Keys>>>,
    /// When the last refetch caused by an unknown `kid` happened; the lock also makes
    /// concurrent requests with unknown kids wait for one refetch instead of each doing one.
    last_on_demand: tokio::sync::Mutex<Option<Instant>>,
    min_refresh: Duration,
}

impl JwksCache {
    pub fn new(uri: Uri, client: JwksClient, min_refresh: Duration) -> Self {
        Self {
            uri,
            client,
            keys: RwLock::new(None),
            last_on_demand: tokio::sync::Mutex::new(None),
            min_refresh,
        }
    }

    /// The keys as last fetched; `None` until a fetch has succeeded.
    pub fn current(&self) -> Option<Arc<Keys>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Fetches the set and replaces the cached keys; on failure the old keys stay.
    pub async fn fetch(&self) -> Result<usize, String> {
        let result = self.download().await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("finflow_sidecar_jwks_fetches_total", "outcome" => outcome).increment(1);
        match result {
            Ok((keys, skipped)) => {
                let count = keys.len();
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(keys));
                tracing::info!(keys = count, skipped, "JWK set loaded");
                Ok(count)
            }
            Err(e) => {
                tracing::warn!(error = %e, uri = %self.uri, "JWK set fetch failed");
                Err(e)
            }
        }
    }

    async fn download(&self) -> Result<(Keys, usize), String> {
        let request = Request::get(self.uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
            .map_err(|e| format!("unreachable: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(response.into_body(), MAX_JWKS_BYTES).collect(),
        )
        .await
        .map_err(|_| format!("no complete body within {FETCH_TIMEOUT:?}"))?
        .map_err(|e| format!("unreadable body: {e}"))?
        .to_bytes();
        Keys::from_jwks(&body)
    }

    /// After a token named a `kid` missing from `seen`: the keys to try again with, or
    /// `None` when no newer keys can be had now. Returns newer keys fetched meanwhile
    /// by someone else; otherwise refetches, unless the last such refetch was less than
    /// `JWKS_MIN_REFRESH_SECS` ago.
    pub async fn refresh_for_unknown_kid(&self, seen: &Arc<Keys>) -> Option<Arc<Keys>> {
        let mut last = self.last_on_demand.lock().await;
        if let Some(current) = self.current()
            && !Arc::ptr_eq(&current, seen)
        {
            return Some(current);
        }
        if last.is_some_and(|at| at.elapsed() < self.min_refresh) {
            return None;
        }
        *last = Some(Instant::now());
        self.fetch().await.ok()?;
        self.current()
    }

    /// Fetches now, then every `every`; after a failure retries with backoff.
    pub async fn keep_fresh(self: Arc<Self>, every: Duration) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let delay = match self.fetch().await {
                Ok(_) => {
                    backoff = INITIAL_BACKOFF;
                    every
                }
                Err(_) => {
                    let delay = backoff.min(every);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    delay
                }
            };
            tokio::time::sleep(delay).await;
        }
    }
}

/// How often the epoch file is read.
const EPOCH_POLL: Duration = Duration::from_secs(1);

/// Follows the issuer's epoch file: when its content changes (the auth service went
/// live with another version), refetches the JWK set at once and forgets verified
/// tokens, so keys the issuer dropped stop admitting tokens now rather than at the next
/// refresh. The file is polled: a ConfigMap volume is updated by swapping a symlink,
/// which file-change notifications do not reliably report.
pub async fn follow_epoch(
    path: std::path::PathBuf,
    cache: Arc<JwksCache>,
    verified: Arc<crate::sidecar::VerifiedTokens>,
) {
    let read = || {
        std::fs::read_to_string(&path)
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let mut seen = read();
    loop {
        tokio::time::sleep(EPOCH_POLL).await;
        let now = read();
        if now.is_some() && now != seen {
            tracing::info!(
                epoch = now.as_deref().unwrap_or(""),
                "issuer epoch changed; refetching the JWK set"
            );
            metrics::counter!("finflow_sidecar_jwks_epoch_changes_total").increment(1);
            // Forget first: a token checked against a dropped key must not pass while
            // the fetch is under way.
            verified.clear();
            if cache.fetch().await.is_ok() {
                verified.clear();
                seen = now;
            }
        }
    }
}

/// `/ready` on the admin port: up once a JWK set has been loaded.
pub struct JwksLoaded(pub Arc<JwksCache>);

impl Check for JwksLoaded {
    fn probe(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        let loaded = self.0.current().is_some();
        Box::pin(async move {
            if loaded {
                Ok(())
            } else {
                Err("no JWK set fetched yet".to_owned())
            }
        })
    }
}
