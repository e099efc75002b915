//! Trace export, end to end over HTTP: a process with an OTLP endpoint sends its spans
//! there. One test in this file: `telemetry::init` installs the process's subscriber.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use finflow_platform::config::{HttpUrl, LogFormat, TelemetryConfig};
use finflow_platform::telemetry;

/// What a collector answers, and what it checks first: OTLP/HTTP in protobuf is a POST
/// to `/v1/traces` with `content-type: application/x-protobuf`; anything else it refuses.
async fn collector() -> (String, Arc<Mutex<Vec<Bytes>>>) {
    let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let seen = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                if headers.get("content-type").and_then(|v| v.to_str().ok())
                    != Some("application/x-protobuf")
                {
                    return StatusCode::UNSUPPORTED_MEDIA_TYPE;
                }
                seen.lock().unwrap().push(body);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, received)
}

#[tokio::test(flavor = "multi_thread")]
async fn with_an_otlp_endpoint_the_spans_reach_it_under_the_service_s_name() {
    let (endpoint, received) = collector().await;
    let config = TelemetryConfig {
        log_format: LogFormat::Json,
        otlp_endpoint: Some(HttpUrl::parse(&endpoint).unwrap()),
    };
    let guard = telemetry::init("finflow-telemetry-test", &config).expect("telemetry starts");
    tracing::info_span!("exported-span").in_scope(|| tracing::info!("inside"));
    // Dropped where a service's `main` drops it, in the runtime: flushes what is left.
    drop(guard);
    for _ in 0..100 {
        if !received.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bodies = received.lock().unwrap().concat();
    let contains = |needle: &[u8]| bodies.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"exported-span"), "the span was exported");
    assert!(
        contains(b"finflow-telemetry-test"),
        "under the service's name"
    );
}
