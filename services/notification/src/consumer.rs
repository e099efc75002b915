//! The events D consumes: one queue, one transaction per event.

use finflow_platform::events::consumer::{Handler, HandlerError};
use finflow_platform::events::{Event, QueueSpec, types};
use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::templates;

pub fn queue() -> QueueSpec {
    QueueSpec::new(
        "notification.events",
        &[
            types::USER_CREATED,
            types::USER_KYC_UPDATED,
            types::WALLET_STATUS_CHANGED,
            types::PAYMENT_COMPLETED,
            types::PAYMENT_FAILED,
            types::PAYMENT_ON_HOLD,
            types::PAYMENT_REVERSED,
        ],
    )
}

#[derive(Deserialize)]
struct NewUser {
    user_id: Uuid,
    email: String,
    full_name: String,
}

/// Whether `user` wants `event_type` on `channel` (email and in-app default on, and
/// webhooks on once one is registered).
async fn wants(
    tx: &mut PgConnection,
    user: Uuid,
    event_type: &str,
    channel: &str,
) -> Result<bool, sqlx::Error> {
    let explicit: Option<bool> = sqlx::query_scalar(
        "SELECT enabled FROM preferences WHERE user_id = $1 AND event_type = $2 AND channel = $3",
    )
    .bind(user)
    .bind(event_type)
    .bind(channel)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(explicit.unwrap_or(true))
}

pub struct Notifier;

impl Handler for Notifier {
    async fn handle(&self, tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        if event.event_type == types::USER_CREATED {
            let user: NewUser = event
                .data_as()
                .map_err(|e| HandlerError::Permanent(format!("malformed user.created: {e}")))?;
            sqlx::query(
                "INSERT INTO contacts (user_id, email, full_name) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, full_name = EXCLUDED.full_name, updated_at = now()",
            )
            .bind(user.user_id)
            .bind(&user.email)
            .bind(&user.full_name)
            .execute(&mut *tx)
            .await?;
        }
        let Some(message) = templates::render(event) else {
            return Ok(());
        };
        let user = message.user_id;
        if wants(tx, user, &event.event_type, "in_app").await? {
            sqlx::query(
                "INSERT INTO notifications (id, user_id, event_id, event_type, title, body) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(Uuid::now_v7())
            .bind(user)
            .bind(event.id)
            .bind(&event.event_type)
            .bind(&message.title)
            .bind(&message.body)
            .execute(&mut *tx)
            .await?;
        }
        let payload =
            serde_json::to_value(event).map_err(|e| HandlerError::Permanent(e.to_string()))?;
        if wants(tx, user, &event.event_type, "email").await? {
            let email: Option<String> =
                sqlx::query_scalar("SELECT email FROM contacts WHERE user_id = $1")
                    .bind(user)
                    .fetch_optional(&mut *tx)
                    .await?;
            match email {
                Some(to) => {
                    sqlx::query(
                        "INSERT INTO deliveries (id, user_id, event_id, event_type, channel, target, subject, body, payload, status) \
                         VALUES ($1, $2, $3, $4, 'email', $5, $6, $7, $8, 'pending') ON CONFLICT DO NOTHING",
                    )
                    .bind(Uuid::now_v7())
                    .bind(user)
                    .bind(event.id)
                    .bind(&event.event_type)
                    .bind(to)
                    .bind(&message.title)
                    .bind(&message.body)
                    .bind(&payload)
                    .execute(&mut *tx)
                    .await?;
                }
                None => tracing::warn!(%user, "no email known for the user; email skipped"),
            }
        }
        if wants(tx, user, &event.event_type, "webhook").await? {
            sqlx::query(
                "INSERT INTO deliveries (id, user_id, event_id, event_type, channel, target, webhook_id, subject, body, payload, status) \
                 SELECT gen_random_uuid(), $1, $2, $3, 'webhook', w.url, w.id, $4, $5, $6, 'pending' \
                 FROM webhooks w WHERE w.user_id = $1 ON CONFLICT DO NOTHING",
            )
            .bind(user)
            .bind(event.id)
            .bind(&event.event_type)
            .bind(&message.title)
            .bind(&message.body)
            .bind(&payload)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}
