//! The events D consumes: one queue, one transaction per event.
//!
//! Most events tell a user what happened, on the channels they chose (`wants`). Sign-up
//! mails ([`TRANSACTIONAL`]) are different: they go by email only, to the address the
//! event names (which no contact may have yet), whatever the preferences.

use finflow_contracts::user::{RegistrationRepeated, UserCreated, VerificationRequested};
use finflow_platform::events::consumer::{Handler, HandlerError};
use finflow_platform::events::{Event, QueueSpec, types};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::templates;

pub fn queue() -> QueueSpec {
    QueueSpec::new(
        "notification.events",
        &[
            types::USER_CREATED,
            types::USER_VERIFICATION_REQUESTED,
            types::USER_REGISTRATION_REPEATED,
            types::USER_KYC_UPDATED,
            types::WALLET_STATUS_CHANGED,
            types::PAYMENT_COMPLETED,
            types::PAYMENT_FAILED,
            types::PAYMENT_ON_HOLD,
            types::PAYMENT_REVERSED,
        ],
    )
}

/// Event types whose mail is part of signing up: sent by email only (no in-app
/// notification, no webhook), to the address in the event, whatever the preferences,
/// which cannot name them (`api::set_preference`). The address may not be verified (a
/// verification request) or may not be the caller's (someone else's sign-up), so D
/// learns no contact from them and mails only text of its own besides A's token.
pub const TRANSACTIONAL: [&str; 2] = [
    types::USER_VERIFICATION_REQUESTED,
    types::USER_REGISTRATION_REPEATED,
];

/// Where a transactional mail goes: the user and the address the event names.
fn addressee(event: &Event) -> Result<(Uuid, String), serde_json::Error> {
    if event.event_type == types::USER_VERIFICATION_REQUESTED {
        let requested: VerificationRequested = event.data_as()?;
        Ok((requested.user_id, requested.email))
    } else {
        let repeated: RegistrationRepeated = event.data_as()?;
        Ok((repeated.user_id, repeated.email))
    }
}

/// An event to its user in one statement, since each round trip costs PostgreSQL CPU.
/// `reach` is what the user wants (each channel on unless turned off), their address
/// and, by the join, their webhooks. PostgreSQL runs every data-modifying CTE, used or
/// not, so each insert is gated by `reach` in its WHERE. `deliveries_once_key` keeps a
/// delivery once per event, channel and target. Returns whether email was wanted but
/// no address is known.
const NOTIFY: &str = "\
    WITH reach AS ( \
      SELECT \
        coalesce((SELECT enabled FROM preferences p WHERE p.user_id = $1 AND p.event_type = $2 \
                   AND p.channel = 'in_app'), true) AS in_app, \
        coalesce((SELECT enabled FROM preferences p WHERE p.user_id = $1 AND p.event_type = $2 \
                   AND p.channel = 'email'), true) AS email, \
        coalesce((SELECT enabled FROM preferences p WHERE p.user_id = $1 AND p.event_type = $2 \
                   AND p.channel = 'webhook'), true) AS webhook, \
        (SELECT email FROM contacts c WHERE c.user_id = $1) AS address \
    ), in_app_row AS ( \
      INSERT INTO notifications (id, user_id, event_id, event_type, title, body) \
      SELECT $7, $1, $3, $2, $4, $5 FROM reach WHERE reach.in_app \
    ), email_row AS ( \
      INSERT INTO deliveries (id, user_id, event_id, event_type, channel, target, subject, body, payload, status) \
      SELECT $8, $1, $3, $2, 'email', reach.address, $4, $5, $6, 'pending' FROM reach \
      WHERE reach.email AND reach.address IS NOT NULL \
      ON CONFLICT DO NOTHING \
    ), webhook_rows AS ( \
      INSERT INTO deliveries (id, user_id, event_id, event_type, channel, target, webhook_id, subject, body, payload, status) \
      SELECT gen_random_uuid(), $1, $3, $2, 'webhook', w.url, w.id, $4, $5, $6, 'pending' \
      FROM reach JOIN webhooks w ON w.user_id = $1 WHERE reach.webhook \
      ON CONFLICT DO NOTHING \
    ) \
    SELECT reach.email AND reach.address IS NULL AS email_skipped FROM reach";

/// Queues `message` as an email of `event` to `to`, once per event and address.
async fn queue_email(
    tx: &mut PgConnection,
    user: Uuid,
    event: &Event,
    to: &str,
    message: &templates::Message,
    payload: &serde_json::Value,
) -> Result<(), sqlx::Error> {
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
    .bind(payload)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn malformed(event: &Event, why: impl std::fmt::Display) -> HandlerError {
    HandlerError::Permanent(format!("malformed {}: {why}", event.event_type))
}

/// A sign-up mail ([`TRANSACTIONAL`]): one email to the event's address, nothing else.
/// A malformed one is dead-lettered, not dropped: someone waits for it.
async fn transactional(tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
    let (user_id, email) = addressee(event).map_err(|e| malformed(event, e))?;
    let message = templates::render(event).ok_or_else(|| malformed(event, "no message to send"))?;
    // The token is a credential: the mail carries it, the stored payload does not.
    let mut payload =
        serde_json::to_value(event).map_err(|e| HandlerError::Permanent(e.to_string()))?;
    if let Some(data) = payload
        .get_mut("data")
        .and_then(serde_json::Value::as_object_mut)
    {
        data.remove("token");
    }
    queue_email(tx, user_id, event, &email, &message, &payload).await?;
    Ok(())
}

pub struct Notifier;

impl Handler for Notifier {
    async fn handle(&self, tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        if TRANSACTIONAL.contains(&event.event_type.as_str()) {
            return transactional(tx, event).await;
        }
        if event.event_type == types::USER_CREATED {
            let user: UserCreated = event
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
        let payload =
            serde_json::to_value(event).map_err(|e| HandlerError::Permanent(e.to_string()))?;
        let email_skipped: bool = sqlx::query_scalar(NOTIFY)
            .bind(user)
            .bind(&event.event_type)
            .bind(event.id)
            .bind(&message.title)
            .bind(&message.body)
            .bind(&payload)
            .bind(Uuid::now_v7()) // the notification
            .bind(Uuid::now_v7()) // the email delivery
            .fetch_one(&mut *tx)
            .await?;
        if email_skipped {
            tracing::warn!(%user, "no email known for the user; email skipped");
        }
        Ok(())
    }
}
