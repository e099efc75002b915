//! The JWK set over https: verified against a CA the sidecar is told to trust
//! (`JWKS_CA_FILE`), refused from a server whose certificate nothing vouches for.

mod common;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::{AUDIENCE, Echo, ISSUER, Key, Proxy, claims};
use serde_json::json;

/// A JWK set of `key` served over TLS for `localhost` by a certificate of a CA of its
/// own; the set's URI and the CA's PEM.
async fn https_jwks(key: &Key) -> (String, String, tokio::task::JoinHandle<()>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "finflow test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &rcgen::Issuer::new(ca_params, ca_key))
        .unwrap();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        server.pem().into_bytes(),
        server_key.serialize_pem().into_bytes(),
    )
    .await
    .unwrap();
    let jwk = key.jwk();
    let router = Router::new().route(
        "/.well-known/jwks.json",
        get(move || std::future::ready(axum::Json(json!({ "keys": [jwk.clone()] })))),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        axum_server::from_tcp_rustls(listener, tls)
            .unwrap()
            .serve(router.into_make_service())
            .await
            .unwrap();
    });
    (
        format!("https://localhost:{port}/.well-known/jwks.json"),
        ca.pem(),
        task,
    )
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

#[tokio::test]
async fn a_jwk_set_over_https_from_a_trusted_ca_verifies_tokens() {
    let key = Key::generate("k1");
    let (uri, ca, _server) = https_jwks(&key).await;
    let dir = std::env::temp_dir().join(format!("finflow-jwks-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let app = Echo::start("wallet").await;
    let proxy = sidecar(
        &app,
        &uri,
        &[format!("--jwks-ca-file={}", ca_file.display())],
    )
    .await;
    proxy.wait_ready().await;
    let token = key.sign(&claims("u-1", &["user"]));
    let answer = proxy
        .get("/api/v1/wallets")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(app.hits(), 1);
}

#[tokio::test]
async fn a_jwk_set_over_https_from_an_untrusted_certificate_is_never_loaded() {
    let key = Key::generate("k1");
    let (uri, _ca, _server) = https_jwks(&key).await;
    let app = Echo::start("wallet").await;
    let proxy = sidecar(&app, &uri, &[]).await;
    // Not ready without keys; give its fetches time to fail.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(proxy.ready_status().await, 503);
    let token = key.sign(&claims("u-1", &["user"]));
    let answer = proxy
        .get("/api/v1/wallets")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_ne!(answer.status(), 200);
    assert_eq!(
        app.hits(),
        0,
        "no token verified with keys from an unverified server"
    );
}
