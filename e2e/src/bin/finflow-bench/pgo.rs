//! The `pgo-train` load for `dev/pgo-proxy`: not a measurement.

use anyhow::Context;
use finflow_e2e::client::Client;
use finflow_e2e::launcher::Platform;
use finflow_e2e::tools::ensure_tool;
use reqwest::StatusCode;
use serde_json::json;

use crate::edge::{EDGE_PATH, EdgeRequests};
use crate::wrk::wrk;

/// What `dev/pgo-proxy`'s profile is made of. Mostly what the proxy does most: a known
/// token on keep-alive connections, through a sidecar and through the gateway (at 16
/// connections and at 1). Then, so that the profile-guided build does not treat them as
/// never run, its other paths: users signing up, in, refreshing and out through the
/// gateway (public paths with bodies, new tokens verified, every service's sidecar; no
/// logout, which would revoke the session the rounds use),
/// and refusals (no token, a bad token, a user token on an internal path).
pub(crate) async fn pgo_train(platform: &Platform, seconds: u64) -> anyhow::Result<()> {
    ensure_tool("wrk", "wrk").await?;
    let requests = EdgeRequests::new(platform).await?;
    let gateway = platform.client();
    let auth_sidecar = platform
        .services
        .iter()
        .find(|s| s.name == "auth")
        .context("no auth")?
        .sidecar_url
        .clone();
    for round in 0..8 {
        let user = gateway.new_user(&format!("pgo{round}")).await;
        let me = user.client.get(EDGE_PATH).await;
        me.data(StatusCode::OK);
        user.client
            .put(
                EDGE_PATH,
                json!({"full_name": format!("Trained User {round}")}),
            )
            .await
            .data(StatusCode::OK);
        let refresh = user.session["refresh_token"].as_str().unwrap_or_default();
        gateway
            .post("/api/v1/auth/refresh", json!({"refresh_token": refresh}))
            .await
            .data(StatusCode::OK);
        for path in [
            "/api/v1/wallets",
            "/api/v1/payments",
            "/api/v1/notifications",
        ] {
            user.client.get(path).await;
        }
        gateway.get(EDGE_PATH).await.error(StatusCode::UNAUTHORIZED);
        gateway
            .with_token("not.a.token")
            .get(EDGE_PATH)
            .await
            .error(StatusCode::UNAUTHORIZED);
        Client::new(&auth_sidecar)
            .with_token(user.session["access_token"].as_str().unwrap_or_default())
            .get("/internal/v1/users")
            .await
            .error(StatusCode::FORBIDDEN);
    }
    let through_gateway = format!("{}{EDGE_PATH}", platform.gateway_url);
    for (url, connections, secs) in [
        (&requests.sidecar_url, 16, seconds),
        (&requests.sidecar_url, 1, seconds.div_ceil(2)),
        (&through_gateway, 16, seconds.div_ceil(2)),
    ] {
        let (rps, _, _) = wrk(url, &requests.bearer, secs, connections).await?;
        eprintln!("trained {url} at {connections} connections: {rps:.0} req/s");
    }
    Ok(())
}
