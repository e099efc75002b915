//! Calling another FinFlow service: a service token, the envelope, trace context.
//!
//! A service authenticates to another with a token for the role `service:<name>`,
//! obtained from A by client credentials (`POST /api/v1/auth/token`) and cached until
//! shortly before it expires. Requests go to the target's sidecar, which validates the
//! token like any other; `/internal/*` routes open only to service roles.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use crate::error::{ApiError, ErrorCode};
use crate::telemetry;

/// Makes ring the process's rustls provider, once. reqwest is built here without a
/// provider of its own (no aws-lc-rs): until one is installed it builds no client, and
/// neither the OTLP exporter nor axum-server's TLS can start.
pub fn use_ring() {
    // An error means a provider is installed already, which is all this wants.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// reqwest's client builder after [`use_ring`]: every HTTP client starts here, so that
/// it speaks https as well as http.
pub fn builder() -> reqwest::ClientBuilder {
    use_ring();
    reqwest::Client::builder()
}

/// The text of the PEM file `path`, which the setting `setting` names: CAs trusted for
/// a server's certificate. A file that cannot be read or holds no certificate is an
/// error that names the setting.
pub fn pem_file(setting: &str, path: &std::path::Path) -> Result<String, String> {
    read_pem(setting, path).map(|(text, _)| text)
}

/// The certificates of the PEM file `path` ([`pem_file`]).
pub fn pem_certificates(
    setting: &str,
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    read_pem(setting, path).map(|(_, certs)| certs)
}

/// The text of a PEM file and its certificates, read and parsed once; an error names
/// `setting` and the file.
fn read_pem(
    setting: &str,
    path: &std::path::Path,
) -> Result<(String, Vec<rustls::pki_types::CertificateDer<'static>>), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    let fail = |e: &dyn std::fmt::Display| format!("{setting} {}: {e}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| fail(&e))?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&e))?;
    if certs.is_empty() {
        return Err(fail(&"holds no certificate"));
    }
    Ok((text, certs))
}

/// Why a client could not be built once ring is installed: rustls reads the system's
/// roots as the client is built.
const NO_CLIENT: &str =
    "no HTTP client: are the system's CA certificates installed (ca-certificates)?";

/// A client with reqwest's defaults, after [`use_ring`].
pub fn default_client() -> reqwest::Client {
    builder().build().expect(NO_CLIENT)
}

/// Refresh a cached token this long before it expires.
const EARLY_REFRESH: chrono::Duration = chrono::Duration::seconds(30);

/// Obtains and caches this service's token.
#[derive(Clone)]
pub struct TokenSource {
    token_url: String,
    client_id: String,
    secret: SecretString,
    http: reqwest::Client,
    cached: Arc<Mutex<Option<CachedToken>>>,
}

/// A token and when it expires.
type CachedToken = (String, DateTime<Utc>);

impl TokenSource {
    /// `auth_url` is A's base URL (its sidecar); `client_id` is this service's name.
    pub fn new(
        auth_url: &str,
        client_id: &str,
        secret: SecretString,
        http: reqwest::Client,
    ) -> Self {
        Self {
            token_url: format!("{}/api/v1/auth/token", auth_url.trim_end_matches('/')),
            client_id: client_id.to_owned(),
            secret,
            http,
            cached: Arc::new(Mutex::new(None)),
        }
    }

    /// A valid token, fetched when there is none or it is about to expire.
    pub async fn token(&self) -> Result<String, ApiError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, expires)) = cached.as_ref()
            && *expires - EARLY_REFRESH > Utc::now()
        {
            return Ok(token.clone());
        }
        #[derive(serde::Deserialize)]
        struct Issued {
            access_token: String,
            expires_at: DateTime<Utc>,
        }
        let issued: Issued = decode(
            self.http
                .post(&self.token_url)
                .json(&serde_json::json!({
                    "grant_type": "client_credentials",
                    "client_id": self.client_id,
                    "client_secret": self.secret.expose_secret(),
                }))
                .send()
                .await,
            "auth",
        )
        .await?;
        *cached = Some((issued.access_token.clone(), issued.expires_at));
        Ok(issued.access_token)
    }

    /// Forgets the cached token (after a 401, e.g. when A rotated keys).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }
}

/// A client for one service, authenticated as this service.
#[derive(Clone)]
pub struct ServiceClient {
    name: &'static str,
    base_url: String,
    tokens: TokenSource,
    http: reqwest::Client,
}

impl ServiceClient {
    /// `name` is the target (for error messages), `base_url` its sidecar.
    pub fn new(
        name: &'static str,
        base_url: &str,
        tokens: TokenSource,
        http: reqwest::Client,
    ) -> Self {
        Self {
            name,
            base_url: base_url.trim_end_matches('/').to_owned(),
            tokens,
            http,
        }
    }

    /// An HTTP client with the timeouts service calls use.
    pub fn http_client() -> reqwest::Client {
        builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()
            .expect(NO_CLIENT)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn post<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        self.call(Method::PUT, path, Some(body)).await
    }

    /// Sends the request with the service token and the current trace context; on a
    /// 401 fetches a new token once and retries. Answers in the envelope are decoded:
    /// the target's `ApiError`s come back as `ApiError`s with the same code.
    async fn call<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        for attempt in 0..2 {
            let token = self.tokens.token().await?;
            let mut headers = http::HeaderMap::new();
            telemetry::inject_http(&mut headers);
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base_url))
                .bearer_auth(token)
                .headers(headers);
            if let Some(b) = body {
                req = req.json(b);
            }
            let response = req.send().await;
            if attempt == 0 && matches!(&response, Ok(r) if r.status() == StatusCode::UNAUTHORIZED)
            {
                self.tokens.invalidate().await;
                continue;
            }
            return decode(response, self.name).await;
        }
        Err(ApiError::dependency(self.name, &"unauthorized twice"))
    }
}

/// Decodes an envelope answer into `T`, or the target's error.
async fn decode<T: DeserializeOwned>(
    response: Result<reqwest::Response, reqwest::Error>,
    name: &str,
) -> Result<T, ApiError> {
    let response = response.map_err(|e| ApiError::dependency(name, &e.without_url()))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| ApiError::dependency(name, &e.without_url()))?;
    envelope(name, status, body)
}

/// `T` from an envelope that came with `status`, or the error it carries: a client
/// error keeps the target's code (it is the caller's business), a server error becomes
/// a dependency failure.
fn envelope<T: DeserializeOwned>(
    name: &str,
    status: StatusCode,
    body: serde_json::Value,
) -> Result<T, ApiError> {
    if status.is_success() {
        return serde_json::from_value(body["data"].clone())
            .map_err(|e| ApiError::dependency(name, &format!("unexpected answer: {e}")));
    }
    let code = serde_json::from_value::<String>(body["error"]["code"].clone()).unwrap_or_default();
    let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
    Err(match code_from_wire(&code) {
        // The target's proxy did not get this service's whole body in time: the
        // exchange failed, not the caller's request.
        Some(code) if status.is_client_error() && code != ErrorCode::RequestTimeout => {
            let mut err = ApiError::new(code, message);
            err.details = body["error"].get("details").cloned();
            err
        }
        _ => ApiError::dependency(name, &format!("{status}: {message}")),
    })
}

impl ServiceClient {
    /// One of several envelopes an answer carries (a batch's outcomes, each with its
    /// status), decoded as a whole answer with that status would be.
    pub fn outcome<T: DeserializeOwned>(
        &self,
        status: u16,
        body: serde_json::Value,
    ) -> Result<T, ApiError> {
        let status = StatusCode::from_u16(status)
            .map_err(|e| ApiError::dependency(self.name, &format!("unexpected answer: {e}")))?;
        envelope(self.name, status, body)
    }
}

fn code_from_wire(code: &str) -> Option<ErrorCode> {
    serde_json::from_value(serde_json::Value::String(code.to_owned())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_s_refusal_is_the_caller_s_but_its_proxy_s_timeout_is_a_failed_dependency() {
        let answer = |code: &str| serde_json::json!({"success": false, "error": {"code": code, "message": "m"}});
        let refused =
            envelope::<serde_json::Value>("wallet", StatusCode::CONFLICT, answer("CONFLICT"));
        assert_eq!(refused.unwrap_err().code, ErrorCode::Conflict);
        let late = answer("REQUEST_TIMEOUT");
        let failed = envelope::<serde_json::Value>("wallet", StatusCode::REQUEST_TIMEOUT, late);
        assert_eq!(failed.unwrap_err().code, ErrorCode::DependencyUnavailable);
    }
}
