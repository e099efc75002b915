//! The admin port (`/live`, `/ready`, `/metrics`) and the gateway's own `/health`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use finflow_platform::error::{ApiError, ErrorCode};
use finflow_platform::health::{Health, Status};
use finflow_platform::http::metrics_handle;

/// `/live`, `/ready` and `/metrics`. `/ready` reports the critical checks of `health`
/// (the sidecar: its app's `/health` within 2 s and, in JWKS mode, a loaded key set)
/// and answers 503 from the moment shutdown begins.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(health)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn live() -> Response {
    axum::Json(serde_json::json!({ "status": "up" })).into_response()
}

async fn ready(State(health): State<Health>) -> Response {
    let mut report = health.report(true).await;
    if !health.is_serving() {
        report.status = Status::Down;
    }
    let status = if report.status == Status::Up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

/// The gateway's `/health`: each configured service's `/health`, as the kit reports it.
pub async fn health_report(State(health): State<Health>) -> Response {
    let report = health.report(false).await;
    let status = if report.status == Status::Down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(report)).into_response()
}

async fn metrics_text() -> Response {
    let handle = metrics_handle();
    handle.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}
