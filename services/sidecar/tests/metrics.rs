//! What the sidecar counts, as the operator's traffic analysis reads it: in a file of its
//! own, since the metrics recorder is the test process's.

mod common;

use common::{Echo, JwksServer, Key, Proxy, admin_metrics, claims};

const USER: &str = "7f1c0a52-0000-4000-8000-000000000001";

/// The value of the sample `series` (name and labels as rendered) in `metrics`, 0 when
/// absent.
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn the_apps_5xx_the_proxys_own_answers_and_probes_are_counted_apart() {
    // The recorder is the test process's, so this file holds this test alone, and
    // counts are compared before and after.
    let app = Echo::start("app").await;
    let key = Key::generate("key-1");
    let jwks = JwksServer::start(&[&key]).await;
    let sidecar = Proxy::sidecar(&app, &jwks, &[]).await;
    let token = key.sign(&claims(USER, &["user"]));
    let with_token = |path: &str| sidecar.get(path).bearer_auth(&token).send();
    let series = [
        "finflow_sidecar_requests_total{status=\"503\",origin=\"upstream\",traffic=\"api\"}",
        "finflow_sidecar_requests_total{status=\"200\",origin=\"upstream\",traffic=\"api\"}",
        "finflow_sidecar_requests_total{status=\"200\",origin=\"upstream\",traffic=\"probe\"}",
        "finflow_sidecar_requests_total{status=\"401\",origin=\"proxy\",traffic=\"api\"}",
        "finflow_sidecar_upstream_duration_seconds_count{traffic=\"api\"}",
        "finflow_sidecar_upstream_duration_seconds_count{traffic=\"probe\"}",
    ];
    let before = admin_metrics(&sidecar).await;
    for _ in 0..2 {
        assert_eq!(with_token("/status/503").await.unwrap().status(), 503);
    }
    assert_eq!(with_token("/api/v1/wallets").await.unwrap().status(), 200);
    assert_eq!(sidecar.get("/health").send().await.unwrap().status(), 200);
    let refused = sidecar.get("/api/v1/wallets").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let after = admin_metrics(&sidecar).await;
    let counted: Vec<u64> = series
        .iter()
        .map(|series| sample(&after, series) - sample(&before, series))
        .collect();
    // 503 twice from the app; one answer and one probe; one token refused by the proxy
    // itself, which never reached the app; three forwarded requests and one probe timed.
    assert_eq!(counted, [2, 1, 1, 1, 3, 1], "{after}");
}
