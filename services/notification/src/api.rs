//! HTTP handlers of service D.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use chrono::{DateTime, Utc};
use finflow_platform::error::{self, ErrorEnvelope};
use finflow_platform::{ApiError, ApiResult, Identity, Json, Path, Query};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// What a webhook may reach.
    pub policy: crate::targets::Policy,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/notifications", get(list))
        .route("/api/v1/notifications/{id}/read", post(mark_read))
        .route(
            "/api/v1/notifications/preferences",
            get(preferences).put(set_preference),
        )
        .route("/api/v1/notifications/deliveries", get(deliveries))
        .route("/api/v1/webhooks", post(create_webhook).get(list_webhooks))
        .route("/api/v1/webhooks/{id}", delete(delete_webhook))
        .with_state(state)
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct Notification {
    pub id: Uuid,
    pub event_type: String,
    pub title: String,
    pub body: String,
    pub read_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    unread: Option<bool>,
}

#[utoipa::path(get, path = "/api/v1/notifications", tag = "notifications", params(("unread" = Option<bool>, Query)),
    responses((status = 200, body = Vec<Notification>)))]
async fn list(State(s): State<AppState>, who: Identity, Query(q): Query<ListQuery>) -> ApiResult {
    let rows: Vec<Notification> = sqlx::query_as(
        "SELECT id, event_type, title, body, read_at, created_at FROM notifications \
         WHERE user_id = $1 AND (NOT $2 OR read_at IS NULL) ORDER BY created_at DESC LIMIT 200",
    )
    .bind(who.user_id()?)
    .bind(q.unread.unwrap_or(false))
    .fetch_all(&s.pool)
    .await?;
    Ok(error::ok(rows))
}

#[utoipa::path(post, path = "/api/v1/notifications/{id}/read", tag = "notifications", params(("id" = Uuid, Path)),
    responses((status = 200, body = Notification), (status = 404, body = ErrorEnvelope)))]
async fn mark_read(State(s): State<AppState>, who: Identity, Path(id): Path<Uuid>) -> ApiResult {
    let row: Notification = sqlx::query_as(
        "UPDATE notifications SET read_at = coalesce(read_at, now()) WHERE id = $1 AND user_id = $2 \
         RETURNING id, event_type, title, body, read_at, created_at",
    )
    .bind(id)
    .bind(who.user_id()?)
    .fetch_optional(&s.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("notification not found"))?;
    Ok(error::ok(row))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Webhook,
    InApp,
}

impl Channel {
    fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Webhook => "webhook",
            Self::InApp => "in_app",
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema, sqlx::FromRow)]
#[serde(deny_unknown_fields)]
pub struct Preference {
    pub event_type: String,
    pub channel: String,
    pub enabled: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPreference {
    pub event_type: String,
    pub channel: Channel,
    pub enabled: bool,
}

#[utoipa::path(get, path = "/api/v1/notifications/preferences", tag = "notifications",
    responses((status = 200, body = Vec<Preference>, description = "explicit choices; anything absent is on")))]
async fn preferences(State(s): State<AppState>, who: Identity) -> ApiResult {
    let rows: Vec<Preference> = sqlx::query_as(
        "SELECT event_type, channel, enabled FROM preferences WHERE user_id = $1 ORDER BY event_type, channel",
    )
    .bind(who.user_id()?)
    .fetch_all(&s.pool)
    .await?;
    Ok(error::ok(rows))
}

#[utoipa::path(put, path = "/api/v1/notifications/preferences", tag = "notifications", request_body = SetPreference,
    responses((status = 200, body = Preference), (status = 400, body = ErrorEnvelope)))]
async fn set_preference(
    State(s): State<AppState>,
    who: Identity,
    Json(req): Json<SetPreference>,
) -> ApiResult {
    if !crate::consumer::queue().bindings.contains(&req.event_type) {
        return Err(ApiError::invalid_field(
            "event_type",
            "not an event type D notifies about",
        ));
    }
    let row: Preference = sqlx::query_as(
        "INSERT INTO preferences (user_id, event_type, channel, enabled) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id, event_type, channel) DO UPDATE SET enabled = EXCLUDED.enabled \
         RETURNING event_type, channel, enabled",
    )
    .bind(who.user_id()?)
    .bind(&req.event_type)
    .bind(req.channel.as_str())
    .bind(req.enabled)
    .fetch_one(&s.pool)
    .await?;
    Ok(error::ok(row))
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct Delivery {
    pub id: Uuid,
    pub event_type: String,
    pub channel: String,
    pub target: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// The caller's delivery log.
#[utoipa::path(get, path = "/api/v1/notifications/deliveries", tag = "notifications",
    responses((status = 200, body = Vec<Delivery>)))]
async fn deliveries(State(s): State<AppState>, who: Identity) -> ApiResult {
    let rows: Vec<Delivery> = sqlx::query_as(
        "SELECT id, event_type, channel, target, status, attempts, last_error, delivered_at, created_at \
         FROM deliveries WHERE user_id = $1 ORDER BY created_at DESC LIMIT 200",
    )
    .bind(who.user_id()?)
    .fetch_all(&s.pool)
    .await?;
    Ok(error::ok(rows))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where events are POSTed (http or https).
    pub url: String,
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    /// Shown once, at creation: the HMAC-SHA256 key of the `X-Finflow-Signature` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses((status = 201, body = Webhook), (status = 400, body = ErrorEnvelope)))]
async fn create_webhook(
    State(s): State<AppState>,
    who: Identity,
    Json(req): Json<CreateWebhook>,
) -> ApiResult {
    let url = req.url.trim();
    if url.len() > 2048 || url.contains(char::is_whitespace) {
        return Err(ApiError::invalid_field("url", "url must be an http(s) URL"));
    }
    // D sends from inside the platform: a URL that reaches inside it is refused here,
    // and checked again at every delivery (`targets`).
    let url = s
        .policy
        .vet(url)
        .await
        .map_err(|reason| ApiError::invalid_field("url", reason))?;
    let secret = format!("whsec_{}", hex::encode(rand::random::<[u8; 24]>()));
    let hook: Webhook = sqlx::query_as(
        "INSERT INTO webhooks (id, user_id, url, secret) VALUES ($1, $2, $3, $4) RETURNING id, url, secret, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(who.user_id()?)
    .bind(url.as_str())
    .bind(&secret)
    .fetch_one(&s.pool)
    .await?;
    Ok(error::with_status(StatusCode::CREATED, hook))
}

#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks", responses((status = 200, body = Vec<Webhook>)))]
async fn list_webhooks(State(s): State<AppState>, who: Identity) -> ApiResult {
    let rows: Vec<Webhook> = sqlx::query_as(
        "SELECT id, url, NULL::text AS secret, created_at FROM webhooks WHERE user_id = $1 ORDER BY created_at",
    )
    .bind(who.user_id()?)
    .fetch_all(&s.pool)
    .await?;
    Ok(error::ok(rows))
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 200), (status = 404, body = ErrorEnvelope)))]
async fn delete_webhook(
    State(s): State<AppState>,
    who: Identity,
    Path(id): Path<Uuid>,
) -> ApiResult {
    let deleted = sqlx::query("DELETE FROM webhooks WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(who.user_id()?)
        .execute(&s.pool)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found("webhook not found"));
    }
    Ok(error::ok(serde_json::json!({ "deleted": true })))
}
