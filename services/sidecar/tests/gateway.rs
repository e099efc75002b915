//! Gateway mode on real sockets: two echo apps stand in for the auth and wallet sidecars.

mod common;

use common::{Echo, Proxy, assert_refused, client, received};
use serde_json::Value;

struct Setup {
    auth: Echo,
    wallet: Echo,
    gateway: Proxy,
}

async fn setup() -> Setup {
    let auth = Echo::start("auth").await;
    let wallet = Echo::start("wallet").await;
    let gateway = Proxy::start(&[
        "--mode=gateway".to_owned(),
        format!("--route=auth={}", auth.url),
        format!("--route=wallet={}/", wallet.url),
    ])
    .await;
    Setup {
        auth,
        wallet,
        gateway,
    }
}

#[tokio::test]
async fn the_gateway_routes_by_prefix_to_each_service_without_rewriting_the_path() {
    let s = setup().await;
    for (path, app) in [
        ("/api/v1/auth/login", "auth"),
        ("/api/v1/users/me", "auth"),
        ("/.well-known/jwks.json", "auth"),
        ("/api/v1/wallets/w1/balance?currency=USD", "wallet"),
        ("/api/v1/wallets", "wallet"),
    ] {
        let got = received(s.gateway.get(path).send().await.unwrap()).await;
        assert_eq!(got.0["app"], app, "{path}");
        assert_eq!(got.0["path"], path);
    }
    assert_eq!(s.auth.hits(), 3);
    assert_eq!(s.wallet.hits(), 2);
}

#[tokio::test]
async fn the_gateway_passes_the_token_through_and_sets_forwarding_headers_but_no_identity() {
    let s = setup().await;
    let sent_traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = s
        .gateway
        .get("/api/v1/wallets")
        .bearer_auth("a.b.c")
        .header("x-user-id", "attacker")
        .header("x-user-roles", "admin")
        .header("x-request-id", "gw-1")
        .header("traceparent", sent_traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "gw-1");
    let got = received(response).await;
    assert_eq!(got.header("authorization").unwrap(), "Bearer a.b.c");
    assert!(!got.has("x-user-id"));
    assert!(!got.has("x-user-roles"));
    assert_eq!(got.header("x-forwarded-for").unwrap(), "127.0.0.1");
    assert_eq!(got.header("x-real-ip").unwrap(), "127.0.0.1");
    assert_eq!(got.header("x-forwarded-proto").unwrap(), "http");
    assert_eq!(
        got.header("x-forwarded-host").unwrap(),
        s.gateway.url.trim_start_matches("http://")
    );
    assert_eq!(got.header("x-request-id").unwrap(), "gw-1");
    assert!(
        got.header("traceparent")
            .unwrap()
            .contains("4bf92f3577b34da6a3ce929d0e0e4736")
    );
}

#[tokio::test]
async fn the_gateway_never_routes_internal_paths() {
    let s = setup().await;
    for path in ["/internal/x", "/internal", "/internal/users/1"] {
        let response = s.gateway.get(path).send().await.unwrap();
        assert_refused(response, 404, "NOT_FOUND", "no_route").await;
    }
    assert_eq!(s.auth.hits() + s.wallet.hits(), 0);
}

#[tokio::test]
async fn unknown_paths_answer_404_in_the_envelope() {
    let s = setup().await;
    for path in ["/", "/api/v2/wallets", "/api/v1/walletsx", "/metrics"] {
        let response = s.gateway.get(path).send().await.unwrap();
        assert_refused(response, 404, "NOT_FOUND", "no_route").await;
    }
    assert_eq!(s.auth.hits() + s.wallet.hits(), 0);
}

#[tokio::test]
async fn a_route_to_an_unconfigured_service_answers_503_no_upstream() {
    let s = setup().await;
    for path in ["/api/v1/payments/p1", "/api/v1/kyc/documents", "/dashboard"] {
        let response = s.gateway.get(path).send().await.unwrap();
        assert_refused(response, 503, "DEPENDENCY_UNAVAILABLE", "no_upstream").await;
    }
}

#[tokio::test]
async fn the_gateway_health_reports_each_configured_service() {
    let auth = Echo::start("auth").await;
    let wallet = Echo::start("wallet").await;
    let closed = finflow_platform::testing::ClosedPort::new().unwrap();
    let kyc = format!("http://127.0.0.1:{}", closed.port);
    let gateway = Proxy::start(&[
        "--mode=gateway".to_owned(),
        format!("--route=auth={}", auth.url),
        format!("--route=wallet={}", wallet.url),
        format!("--route=kyc={kyc}"),
    ])
    .await;

    let response = client()
        .get(format!("{}/health", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "a service down degrades the gateway"
    );
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["service"], "finflow-gateway");
    assert_eq!(report["status"], "degraded", "{report}");
    let deps: Vec<(&str, &str)> = report["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap(), d["status"].as_str().unwrap()))
        .collect();
    assert_eq!(deps, [("auth", "up"), ("wallet", "up"), ("kyc", "down")]);
}
