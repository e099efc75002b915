//! The JWK set over https: verified against a CA the sidecar is told to trust
//! (`JWKS_CA_FILE`), refused from a server whose certificate nothing vouches for.

mod common;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::{AUDIENCE, Echo, ISSUER, Key, Proxy, claims};
use finflow_platform::testing::HttpsServer;
use serde_json::json;

/// A JWK set of `key` served over https under a CA of its own.
async fn https_jwks(key: &Key) -> (String, HttpsServer) {
    let jwk = key.jwk();
    let router = Router::new().route(
        "/.well-known/jwks.json",
        get(move || std::future::ready(axum::Json(json!({ "keys": [jwk.clone()] })))),
    );
    let server = HttpsServer::start(router).await;
    (format!("{}/.well-known/jwks.json", server.base), server)
}

async fn sidecar(app: &Echo, jwks_uri: &str, extra: &[String]) -> Proxy {
    let mut args = vec![
        format!("--upstream={}", app.url),
        format!("--jwks-uri={jwks_uri}"),
        format!("--jwt-issuer={ISSUER}"),
        format!("--jwt-audiences={AUDIENCE}"),
    ];
    args.extend(extra.iter().cloned());
    Proxy::start(&args).await
}

/// `GET /api/v1/wallets` through `proxy` with a user token signed by `key`.
async fn wallets_as_a_user(proxy: &Proxy, key: &Key) -> reqwest::Response {
    let token = key.sign(&claims("u-1", &["user"]));
    proxy
        .get("/api/v1/wallets")
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_jwk_set_over_https_from_a_trusted_ca_verifies_tokens() {
    let key = Key::generate("k1");
    let (uri, server) = https_jwks(&key).await;
    let ca_file = server.certificate.ca_file();
    let app = Echo::start("wallet").await;
    let proxy = sidecar(&app, &uri, &[format!("--jwks-ca-file={}", ca_file.arg())]).await;
    proxy.wait_ready().await;
    let answer = wallets_as_a_user(&proxy, &key).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(app.hits(), 1);
}

#[tokio::test]
async fn a_jwk_set_over_https_from_an_untrusted_certificate_is_never_loaded() {
    let key = Key::generate("k1");
    let (uri, _server) = https_jwks(&key).await;
    let app = Echo::start("wallet").await;
    let proxy = sidecar(&app, &uri, &[]).await;
    // Not ready without keys; give its fetches time to fail.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(proxy.ready_status().await, 503);
    let answer = wallets_as_a_user(&proxy, &key).await;
    assert_ne!(answer.status(), 200);
    assert_eq!(
        app.hits(),
        0,
        "no token verified with keys from an unverified server"
    );
}
