//! Deliveries: email over SMTP and signed webhooks, retried with backoff.
//!
//! The consumer writes `deliveries` rows in the transaction that records the event, so a
//! delivery exists exactly when its event was processed. This worker claims due rows
//! (`FOR UPDATE SKIP LOCKED`, so replicas share the table), sends, and records the
//! outcome: delivered, or another attempt later, or failed after `max_attempts`.

use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::Sha256;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The header carrying a webhook's signature: `t=<unix seconds>,v1=<hex HMAC-SHA256>`
/// over `"<t>.<body>"` with the webhook's secret (Stripe's scheme: the timestamp in the
/// signed text stops replays of old deliveries).
pub const SIGNATURE_HEADER: &str = "x-finflow-signature";
/// The delivery id, stable across retries, for receivers that dedupe.
pub const DELIVERY_HEADER: &str = "x-finflow-delivery";
pub const EVENT_HEADER: &str = "x-finflow-event";

/// Signs `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Checks a signature header against `body` (what a receiver does), allowing `tolerance`
/// seconds of age.
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if (now - t).abs() > tolerance {
        return false;
    }
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

/// Settings of the delivery worker.
#[derive(Clone)]
pub struct Sender {
    pub pool: PgPool,
    pub smtp: AsyncSmtpTransport<Tokio1Executor>,
    pub mail_from: String,
    pub http: reqwest::Client,
    pub max_attempts: i32,
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

#[derive(sqlx::FromRow)]
struct Due {
    id: Uuid,
    channel: String,
    target: String,
    event_type: String,
    subject: String,
    body: String,
    payload: serde_json::Value,
    attempts: i32,
    secret: Option<String>,
}

impl Sender {
    /// Works off due deliveries until cancelled; wakes every `poll`.
    pub async fn run(self, poll: Duration, stop: CancellationToken) {
        loop {
            // Drain what is due, but let shutdown interrupt a long backlog between batches.
            while !stop.is_cancelled() {
                match self.deliver_due().await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "delivery round failed");
                        break;
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// One batch; returns how many deliveries were attempted.
    pub async fn deliver_due(&self) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let due: Vec<Due> = sqlx::query_as(
            "SELECT d.id, d.channel, d.target, d.event_type, d.subject, d.body, d.payload, d.attempts, w.secret \
             FROM deliveries d LEFT JOIN webhooks w ON w.id = d.webhook_id \
             WHERE d.status = 'pending' AND d.next_attempt_at <= now() \
             ORDER BY d.next_attempt_at LIMIT 20 FOR UPDATE OF d SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await?;
        for d in &due {
            let result = match d.channel.as_str() {
                "email" => self.send_email(d).await,
                _ => self.send_webhook(d).await,
            };
            let attempts = d.attempts + 1;
            match result {
                Ok(()) => {
                    sqlx::query(
                        "UPDATE deliveries SET status = 'delivered', attempts = $2, delivered_at = now(), last_error = NULL WHERE id = $1",
                    )
                    .bind(d.id)
                    .bind(attempts)
                    .execute(&mut *tx)
                    .await?;
                    metrics::counter!("finflow_notification_deliveries_total", "channel" => d.channel.clone(), "outcome" => "delivered").increment(1);
                }
                Err(error) => {
                    let give_up = attempts >= self.max_attempts;
                    let wait = finflow_platform::events::backoff(
                        u32::try_from(d.attempts).unwrap_or(u32::MAX),
                        self.retry_base,
                        self.retry_cap,
                    );
                    let next = Utc::now()
                        + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
                    sqlx::query(
                        "UPDATE deliveries SET status = $2, attempts = $3, last_error = $4, next_attempt_at = $5 WHERE id = $1",
                    )
                    .bind(d.id)
                    .bind(if give_up { "failed" } else { "pending" })
                    .bind(attempts)
                    .bind(&error)
                    .bind(next)
                    .execute(&mut *tx)
                    .await?;
                    tracing::info!(delivery = %d.id, channel = %d.channel, attempts, give_up, %error, "delivery failed");
                    metrics::counter!("finflow_notification_deliveries_total", "channel" => d.channel.clone(), "outcome" => if give_up { "failed" } else { "retry" }).increment(1);
                }
            }
        }
        tx.commit().await?;
        Ok(due.len())
    }

    async fn send_email(&self, d: &Due) -> Result<(), String> {
        let message = Message::builder()
            .from(
                self.mail_from
                    .parse()
                    .map_err(|e| format!("MAIL_FROM: {e}"))?,
            )
            .to(d.target.parse().map_err(|e| format!("recipient: {e}"))?)
            .subject(&d.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(d.body.clone())
            .map_err(|e| e.to_string())?;
        self.smtp
            .send(message)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn send_webhook(&self, d: &Due) -> Result<(), String> {
        let secret = d.secret.as_deref().ok_or("the webhook was removed")?;
        let body = serde_json::to_vec(&d.payload).map_err(|e| e.to_string())?;
        let response = self
            .http
            .post(&d.target)
            .header("content-type", "application/json")
            .header(
                SIGNATURE_HEADER,
                sign(secret, Utc::now().timestamp(), &body),
            )
            .header(DELIVERY_HEADER, d.id.to_string())
            .header(EVENT_HEADER, &d.event_type)
            .body(body)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {}", response.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_body_secret_and_time() {
        let header = sign("s3cret", 1_700_000_000, b"{\"a\":1}");
        assert!(verify("s3cret", &header, b"{\"a\":1}", 1_700_000_010, 300));
        assert!(
            !verify("s3cret", &header, b"{\"a\":2}", 1_700_000_010, 300),
            "tampered body"
        );
        assert!(
            !verify("other", &header, b"{\"a\":1}", 1_700_000_010, 300),
            "wrong secret"
        );
        assert!(
            !verify("s3cret", &header, b"{\"a\":1}", 1_700_001_000, 300),
            "replayed later"
        );
        assert!(!verify(
            "s3cret",
            "garbage",
            b"{\"a\":1}",
            1_700_000_010,
            300
        ));
    }
}
