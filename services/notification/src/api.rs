//! HTTP handlers of service D.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use finflow_platform::error::{self, ErrorEnvelope};
use finflow_platform::text::{self, Documented};
use finflow_platform::{ApiError, ApiResult, Json, Path, Query, UserId};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat};
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// What a webhook may reach.
    pub policy: crate::targets::Policy,
}

/// What the document has beside what the routes' attributes bring: schemas no route
/// names; its title and description come from the service catalog
/// ([`finflow_platform::service::run`] sets them).
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(EventType)))]
pub(crate) struct ApiDoc;

/// The route table.
pub fn routes() -> OpenApiRouter<AppState> {
    finflow_platform::route_table!(ApiDoc:
        list; mark_read; preferences, set_preference; deliveries;
        create_webhook, list_webhooks; delete_webhook)
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
    responses((status = 200, body = Vec<Notification>),
        (status = 400, body = ErrorEnvelope, description = "unread is not true or false, or an unknown query parameter"),
        (status = 403, body = ErrorEnvelope, description = "not a user token")))]
async fn list(
    State(s): State<AppState>,
    UserId(me): UserId,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let rows: Vec<Notification> = sqlx::query_as(
        "SELECT id, event_type, title, body, read_at, created_at FROM notifications \
         WHERE user_id = $1 AND (NOT $2 OR read_at IS NULL) ORDER BY created_at DESC LIMIT 200",
    )
    .bind(me)
    .bind(q.unread.unwrap_or(false))
    .fetch_all(&s.pool)
    .await?;
    Ok(error::ok(rows))
}

#[utoipa::path(post, path = "/api/v1/notifications/{id}/read", tag = "notifications", params(("id" = Uuid, Path)),
    responses((status = 200, body = Notification), (status = 400, body = ErrorEnvelope, description = "the id is not a UUID"),
        (status = 403, body = ErrorEnvelope, description = "not a user token"), (status = 404, body = ErrorEnvelope)))]
async fn mark_read(
    State(s): State<AppState>,
    UserId(me): UserId,
    Path(id): Path<Uuid>,
) -> ApiResult {
    let row: Notification = sqlx::query_as(
        "UPDATE notifications SET read_at = coalesce(read_at, now()) WHERE id = $1 AND user_id = $2 \
         RETURNING id, event_type, title, body, read_at, created_at",
    )
    .bind(id)
    .bind(me)
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

/// The event types D notifies about: the bindings of [`crate::consumer::queue`] but the
/// mails about access ([`crate::consumer::TRANSACTIONAL`]), which no preference turns off
/// (documentation only: the handler checks the string against those lists).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
pub enum EventType {
    #[serde(rename = "user.created")]
    UserCreated,
    #[serde(rename = "user.kyc_updated")]
    UserKycUpdated,
    #[serde(rename = "wallet.status_changed")]
    WalletStatusChanged,
    #[serde(rename = "payment.completed")]
    PaymentCompleted,
    #[serde(rename = "payment.failed")]
    PaymentFailed,
    #[serde(rename = "payment.on_hold")]
    PaymentOnHold,
    #[serde(rename = "payment.reversed")]
    PaymentReversed,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPreference {
    /// One of the event types D notifies about ([`crate::consumer::queue`]).
    #[schema(value_type = EventType)]
    pub event_type: String,
    pub channel: Channel,
    pub enabled: bool,
}

#[utoipa::path(get, path = "/api/v1/notifications/preferences", tag = "notifications",
    responses((status = 200, body = Vec<Preference>, description = "explicit choices; anything absent is on"),
        (status = 403, body = ErrorEnvelope, description = "not a user token")))]
async fn preferences(State(s): State<AppState>, UserId(me): UserId) -> ApiResult {
    let rows: Vec<Preference> = sqlx::query_as(
        "SELECT event_type, channel, enabled FROM preferences WHERE user_id = $1 ORDER BY event_type, channel",
    )
    .bind(me)
    .fetch_all(&s.pool)
    .await?;
    Ok(error::ok(rows))
}

#[utoipa::path(put, path = "/api/v1/notifications/preferences", tag = "notifications", request_body = SetPreference,
    responses((status = 200, body = Preference),
        (status = 400, body = ErrorEnvelope, description = "not an event type D notifies about (mails about signing up and password changes are not optional), or not a channel"),
        (status = 403, body = ErrorEnvelope, description = "not a user token")))]
async fn set_preference(
    State(s): State<AppState>,
    UserId(me): UserId,
    Json(req): Json<SetPreference>,
) -> ApiResult {
    if !crate::consumer::queue().bindings.contains(&req.event_type)
        || crate::consumer::TRANSACTIONAL.contains(&req.event_type.as_str())
    {
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
    .bind(me)
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
    responses((status = 200, body = Vec<Delivery>), (status = 403, body = ErrorEnvelope, description = "not a user token")))]
async fn deliveries(State(s): State<AppState>, UserId(me): UserId) -> ApiResult {
    let rows: Vec<Delivery> = sqlx::query_as(
        "SELECT id, event_type, channel, target, status, attempts, last_error, delivered_at, created_at \
         FROM deliveries WHERE user_id = $1 ORDER BY created_at DESC LIMIT 200",
    )
    .bind(me)
    .fetch_all(&s.pool)
    .await?;
    Ok(error::ok(rows))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    #[schema(schema_with = text::schema::<WebhookUrl>)]
    pub url: String,
}

/// Longest webhook URL, in characters, padding included.
const MAX_URL_CHARS: usize = 2048;

/// A webhook's URL as it is stored: trimmed, `http://` or `https://` in any case, then
/// printable ASCII. What a URL parser would drop or read its own way (control
/// characters, a scheme without `//`) and what a screen or a log shows other than it
/// is (bidi controls, look-alike letters) are refused, not stored; the host is vetted
/// after ([`crate::targets::Policy::vet`]).
pub struct WebhookUrl;

impl WebhookUrl {
    pub fn parse(raw: &str) -> Result<&str, ApiError> {
        let url = text::trimmed("url", raw, MAX_URL_CHARS)?;
        let scheme = ["http://", "https://"].into_iter().find(|s| {
            url.get(..s.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(s))
        });
        match scheme {
            Some(scheme)
                if url.len() > scheme.len() && url.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Ok(url)
            }
            _ => Err(ApiError::invalid_field(
                "url",
                "url must be an http(s) URL of printable ASCII characters",
            )),
        }
    }
}

impl Documented for WebhookUrl {
    fn documented() -> ObjectBuilder {
        text::described(
            "Where events are POSTed: an http or https URL of printable ASCII (percent-encode \
             anything else; an international domain name in its `xn--` form), surrounding \
             white space trimmed, at most 2048 characters, without user name or password, \
             whose host is or resolves to a public address.",
            // Stricter than `parse`, which also trims padding: with padding in the
            // pattern and no `format`, a fuzzer made up "URLs" from the pattern alone
            // (`\u{85}HTTPS://0...`, a URL to 0.0.0.0) that D rightly refuses.
            r"^[Hh][Tt][Tt][Pp][Ss]?://[!-~]+$".to_owned(),
            "https://hooks.example.com/finflow",
        )
        .format(Some(SchemaFormat::Custom("uri".to_owned())))
        .max_length(Some(MAX_URL_CHARS))
    }
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

/// Webhooks one user may have at once.
pub const MAX_WEBHOOKS_PER_USER: i64 = 10;

/// Webhooks one user may add (and so be mailed about) an hour: each addition mails the
/// owner, and deleting and adding one again at will would flood the mail senders.
pub const MAX_WEBHOOKS_ADDED_PER_HOUR: i64 = 10;

/// One user's webhook registrations and removals one at a time, so that two at once
/// cannot both pass the cap, and a registration cannot slip past a password change's
/// removal: every event is sent to each of a user's webhooks, and without a cap one
/// user could have D send thousands of signed requests to any public host per event.
async fn lock_webhooks(tx: &mut sqlx::PgConnection, user: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))")
        .bind(user)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Holds `user`'s webhook registrations for an hour (a password was replaced), after
/// any under way.
pub(crate) async fn hold_webhooks(
    tx: &mut sqlx::PgConnection,
    user: Uuid,
) -> Result<(), sqlx::Error> {
    lock_webhooks(tx, user).await?;
    sqlx::query(
        "INSERT INTO webhook_holds (user_id, until) VALUES ($1, now() + interval '1 hour') \
         ON CONFLICT (user_id) DO UPDATE SET until = EXCLUDED.until",
    )
    .bind(user)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses((status = 201, body = Webhook,
            description = "added; the owner is mailed that it was (its host only), and a password replaced removes it"),
        (status = 400, body = ErrorEnvelope,
            description = "not an http(s) URL of printable ASCII, too long, with credentials, or its host is or resolves to an address that is not public"),
        (status = 403, body = ErrorEnvelope, description = "not a user token"),
        (status = 409, body = ErrorEnvelope, description = "the user has MAX_WEBHOOKS_PER_USER (10) already (details.reason = webhook_limit), or the account's password was replaced within the hour (details.reason = password_replaced)"),
        (status = 429, body = ErrorEnvelope, description = "MAX_WEBHOOKS_ADDED_PER_HOUR (10) added within the hour; see Retry-After")))]
async fn create_webhook(
    State(s): State<AppState>,
    UserId(user): UserId,
    Json(req): Json<CreateWebhook>,
) -> ApiResult {
    let url = WebhookUrl::parse(&req.url)?;
    // An account that may add none is refused before its URL costs a name lookup (a
    // flood of names that never answer would hold the resolver's threads); asked
    // again under the lock, which the lookup must not be held under.
    refuse_unless_room(&s.pool, user).await?;
    // D sends from inside the platform: a URL that reaches inside it is refused here,
    // and checked again at every delivery (`targets`).
    // Stored as given: the parser's spelling can be longer than the limit the client
    // was held to (percent-encoding, a `/` for an empty path), and deliveries parse it
    // again anyway.
    s.policy
        .vet(url)
        .await
        .map_err(|reason| ApiError::invalid_field("url", reason))?;
    let mut tx = s.pool.begin().await?;
    lock_webhooks(&mut tx, user).await?;
    refuse_unless_room(&mut *tx, user).await?;
    let secret = format!("whsec_{}", hex::encode(rand::random::<[u8; 24]>()));
    let hook: Webhook = sqlx::query_as(
        "INSERT INTO webhooks (id, user_id, url, secret) VALUES ($1, $2, $3, $4) RETURNING id, url, secret, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(url)
    .bind(&secret)
    .fetch_one(&mut *tx)
    .await?;
    tell_webhook_added(&mut tx, user, &hook).await?;
    tx.commit().await?;
    Ok(error::with_status(StatusCode::CREATED, hook))
}

/// Refuses a webhook to `user` while their password was replaced within the hour
/// (409 `password_replaced`), when they have [`MAX_WEBHOOKS_PER_USER`] (409
/// `webhook_limit`), or added [`MAX_WEBHOOKS_ADDED_PER_HOUR`] within the hour (429).
async fn refuse_unless_room(db: impl sqlx::PgExecutor<'_>, user: Uuid) -> Result<(), ApiError> {
    let (registered, added, held): (i64, i64, bool) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM webhooks WHERE user_id = $1), \
           (SELECT count(*) FROM deliveries WHERE user_id = $1 AND event_type = 'webhook.added' \
              AND created_at > now() - interval '1 hour'), \
           EXISTS (SELECT 1 FROM webhook_holds WHERE user_id = $1 AND until > now())",
    )
    .bind(user)
    .fetch_one(db)
    .await?;
    if held {
        return Err(ApiError::conflict(
            "the account's password was replaced within the hour: webhooks can be added again an hour after it",
        )
        .with_details(serde_json::json!({ "reason": "password_replaced" })));
    }
    if registered >= MAX_WEBHOOKS_PER_USER {
        return Err(ApiError::conflict(format!(
            "at most {MAX_WEBHOOKS_PER_USER} webhooks per user: delete one first"
        ))
        .with_details(serde_json::json!({ "reason": "webhook_limit" })));
    }
    if added >= MAX_WEBHOOKS_ADDED_PER_HOUR {
        return Err(ApiError::rate_limited(
            "too many webhooks added within the hour, try again later",
            3600,
        ));
    }
    Ok(())
}

/// Mails the owner that `hook` was added, whatever the preferences (which cannot name
/// it): a stolen access token is enough to add a webhook, and it feeds the account's
/// activity to whoever added it until the password is replaced. Only the host is told:
/// the rest of a URL may hold a receiver's own secret. Nothing when D knows no address.
async fn tell_webhook_added(
    tx: &mut sqlx::PgConnection,
    user: Uuid,
    hook: &Webhook,
) -> Result<(), sqlx::Error> {
    let host = reqwest::Url::parse(&hook.url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let body = format!(
        "A webhook was added to your FinFlow account at {}: every payment, wallet and\n\
         verification event of the account is now also sent to\n\
         {host}.\n\n\
         If it was you, there is nothing to do.\n\
         If it was not you, someone holds a session of your account: reset your password\n\
         (POST /api/v1/auth/password-reset), which signs out every session and removes\n\
         every webhook.",
        hook.created_at.format("%Y-%m-%d %H:%M UTC")
    );
    sqlx::query(
        "INSERT INTO deliveries (id, user_id, event_id, event_type, channel, target, subject, \
           body, payload, status) \
         SELECT $1, $2, $3, 'webhook.added', 'email', c.email, \
           'A webhook was added to your FinFlow account', $4, '{}', 'pending' \
         FROM contacts c WHERE c.user_id = $2",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(hook.id)
    .bind(body)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = Vec<Webhook>), (status = 403, body = ErrorEnvelope, description = "not a user token")))]
async fn list_webhooks(State(s): State<AppState>, UserId(me): UserId) -> ApiResult {
    let rows: Vec<Webhook> = sqlx::query_as(
        "SELECT id, url, NULL::text AS secret, created_at FROM webhooks WHERE user_id = $1 ORDER BY created_at",
    )
    .bind(me)
    .fetch_all(&s.pool)
    .await?;
    Ok(error::ok(rows))
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 200), (status = 400, body = ErrorEnvelope, description = "the id is not a UUID"),
        (status = 403, body = ErrorEnvelope, description = "not a user token"), (status = 404, body = ErrorEnvelope)))]
async fn delete_webhook(
    State(s): State<AppState>,
    UserId(me): UserId,
    Path(id): Path<Uuid>,
) -> ApiResult {
    let deleted = sqlx::query("DELETE FROM webhooks WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(me)
        .execute(&s.pool)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found("webhook not found"));
    }
    Ok(error::ok(serde_json::json!({ "deleted": true })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// URLs made of what the rule tells apart: schemes right and wrong, in any case,
    /// printable ASCII, white space, control, bidi and other non-ASCII characters.
    fn written_url() -> impl Strategy<Value = String> {
        let scheme = prop::sample::select(vec![
            "https://", "http://", "HTTPS://", "hTtP://", "https:", "https:/", "ftp://", "",
        ]);
        let part = prop_oneof![
            20 => prop::sample::select(vec!["hooks.example.com", "/", "a", ":8443", "?q=1", "%20", "#f"]),
            1 => prop::sample::select(vec![" ", "\t", "\u{1}", "\u{1f}", "\u{7f}", "\u{202e}", "\u{200b}", "é", "\u{3000}"]),
        ];
        let pad = prop::sample::select(vec!["", "", " ", "\t\n", "\u{3000}", "\u{1}"]);
        (pad.clone(), scheme, prop::collection::vec(part, 0..6), pad).prop_map(
            |(before, scheme, parts, after)| format!("{before}{scheme}{}{after}", parts.concat()),
        )
    }

    #[test]
    fn a_webhook_url_is_stored_as_printable_ascii_and_trimmed() {
        assert_eq!(
            WebhookUrl::parse(" HTTPS://hooks.example.com/x?a=1\t").unwrap(),
            "HTTPS://hooks.example.com/x?a=1"
        );
        for refused in [
            "\u{1}https://hooks.example.com/x",
            "https://hooks.example.com/x\u{1f}",
            "https://hooks.example.com/\u{202e}gnp.exe",
            "https://hooks.exämple.com/",
            "https:hooks.example.com",
            "https://",
            "https://hooks.example.com/a b",
        ] {
            assert!(WebhookUrl::parse(refused).is_err(), "{refused:?}");
        }
        let longest = format!("https://{}", "a".repeat(MAX_URL_CHARS - 8));
        assert!(WebhookUrl::parse(&longest).is_ok());
        assert!(
            WebhookUrl::parse(&format!("{longest} ")).is_err(),
            "padding counts"
        );
    }

    proptest! {
        #[test]
        fn the_documented_webhook_url_takes_what_parse_takes_once_trimmed(url in written_url()) {
            let documented = text::matcher(&text::schema::<WebhookUrl>());
            prop_assert_eq!(documented(url.trim()), WebhookUrl::parse(&url).is_ok(), "{:?}", url);
        }
    }
}
