//! Deliveries: email over SMTP and signed webhooks, retried with backoff.
//!
//! The consumer writes `deliveries` rows in the transaction that records the event, so a
//! delivery exists exactly when its event was processed. Several senders per process
//! (and every replica) share the table: each claims the due rows (up to a batch) in a
//! short transaction (`FOR UPDATE SKIP LOCKED`), which moves their next attempt a lease
//! ahead and stamps one claim id, then sends them all at once with no transaction open
//! and records the outcomes, in one transaction, only where the claim still stands:
//! delivered, or another attempt later, or failed after `max_attempts`. So a receiver
//! that hangs delays its batch's record by at most the send timeout, never another
//! send, and holds no row lock or pooled connection meanwhile; a sender that dies
//! mid-send leaves its deliveries to be retried when the lease ends (at least once:
//! receivers dedupe by the delivery id). Mails and webhooks have senders of their own
//! ([`Lane`]), and a webhook has one attempt in flight at a time: a user whose webhooks
//! hang delays neither anyone's mail nor another user's webhooks.

use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::Sha256;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::consumer::TRANSACTIONAL;

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
    pub mail_from: lettre::message::Mailbox,
    /// Built by `webhook_client`: resolves through `policy`, follows no redirect.
    pub http: reqwest::Client,
    /// What webhooks may reach, checked again at every send: the URL was vetted at
    /// registration, but what a name resolves to (and the rules) may have changed since.
    pub policy: crate::targets::Policy,
    pub max_attempts: i32,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// The longest a send may take (an SMTP conversation, a webhook call) before it
    /// counts as a failed attempt.
    pub send_timeout: Duration,
}

/// What the stored text of a mail about access ([`TRANSACTIONAL`]) becomes once it is
/// sent or given up: a verification mail's text holds the token that, with the
/// sign-up's password, verifies the address, and a reset mail's the token that sets a
/// new password, so neither is kept once the mail is out of D's hands.
const SENT_CREDENTIAL: &str =
    "(a mail about access: its text may have held a token and is not kept)";

/// What [`SENT_CREDENTIAL`] said before mails about access other than a sign-up's:
/// such a text holds no token either.
const SENT_SIGN_UP_MAIL: &str = "(a sign-up mail: its text held a token and is not kept)";

/// How often [`Sender::forget_sent_credentials`] runs, beside once at start.
const FORGET_EVERY: Duration = Duration::from_secs(3600);

/// How long past its send timeout a claimed delivery stays its sender's: the time to
/// record the outcome.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// Most webhook calls of one user in flight: claimed and not yet recorded ([`Lane::due`]).
pub const WEBHOOK_CALLS_PER_USER: i64 = 2;

/// How long a sender waits for its batch's sends before it records those that ended
/// together; each later one is recorded as it ends.
const RECORD_TOGETHER: Duration = Duration::from_millis(250);

/// Most deliveries one sender claims at once: sent together, the outcomes of those that
/// end within [`RECORD_TOGETHER`] recorded in one transaction (two commits for the lot
/// instead of two each).
const CLAIM_BATCH: i64 = 16;

/// What a sender works off. Mails and webhooks have senders of their own: receivers
/// that hang (a user's own webhooks, fed by events the user causes at will) hold up only
/// webhook senders, never a sign-up or password reset mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Email,
    Webhook,
}

impl Lane {
    /// The deliveries of the lane that are due, oldest first, at most `$1`, locked for
    /// the claim. A webhook has one attempt in flight at a time, so a sender's batch
    /// holds at most one delivery of each and a webhook that hangs holds one place, not
    /// a whole batch; a receiver is sent one call at a time. A user has at most
    /// [`WEBHOOK_CALLS_PER_USER`] webhook calls in flight (claimed and not yet
    /// recorded; senders claiming at once rank the same heads, so they skip each
    /// other's rather than take more), so users whose webhooks hang, fed by events they
    /// cause at will, hold two places each, not every sender's batch. The webhooks'
    /// candidates are four batches' worth, so that senders claiming at once, which see
    /// the same candidates and skip each other's, still fill their batches.
    fn due(self) -> String {
        match self {
            Self::Email => "SELECT id FROM deliveries \
                 WHERE status = 'pending' AND channel = 'email' AND next_attempt_at <= now() \
                 ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED"
                .to_owned(),
            Self::Webhook => format!(
                "WITH in_flight AS ( \
                   SELECT user_id, count(*) AS calls FROM deliveries \
                   WHERE status = 'pending' AND claim IS NOT NULL AND channel = 'webhook' \
                     AND next_attempt_at > now() \
                   GROUP BY user_id) \
                 SELECT id FROM deliveries WHERE id IN ( \
                   SELECT id FROM ( \
                     SELECT heads.id, heads.next_attempt_at, \
                       coalesce(in_flight.calls, 0) + row_number() OVER ( \
                         PARTITION BY heads.user_id ORDER BY heads.next_attempt_at, heads.id) \
                         AS user_calls \
                     FROM ( \
                       SELECT d.id, d.user_id, d.next_attempt_at, row_number() OVER ( \
                         PARTITION BY d.webhook_id ORDER BY d.next_attempt_at, d.id) AS turn \
                       FROM deliveries d \
                       WHERE d.status = 'pending' AND d.channel = 'webhook' \
                         AND d.next_attempt_at <= now() \
                         AND NOT EXISTS (SELECT 1 FROM deliveries f \
                           WHERE f.webhook_id = d.webhook_id AND f.status = 'pending' \
                             AND f.claim IS NOT NULL AND f.next_attempt_at > now())) heads \
                     LEFT JOIN in_flight ON in_flight.user_id = heads.user_id \
                     WHERE heads.turn = 1) ranked \
                   WHERE user_calls <= {WEBHOOK_CALLS_PER_USER} \
                   ORDER BY next_attempt_at LIMIT 4 * $1) \
                 AND status = 'pending' AND next_attempt_at <= now() \
                 ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
        }
    }
}

#[derive(sqlx::FromRow)]
struct Due {
    id: Uuid,
    claim: Uuid,
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
    /// Runs `senders` concurrent senders of each [`Lane`] until cancelled; each works
    /// off its lane's due deliveries a batch at a time and, when none is due, waits
    /// `poll`.
    pub async fn run(self, senders: usize, poll: Duration, stop: CancellationToken) {
        let mut running = tokio::task::JoinSet::new();
        for lane in [Lane::Email, Lane::Webhook] {
            for _ in 0..senders.max(1) {
                let sender = self.clone();
                let stop = stop.clone();
                running.spawn(async move { sender.work(lane, poll, stop).await });
            }
        }
        let forgetter = self.clone();
        running.spawn(async move {
            while !stop.is_cancelled() {
                match forgetter.forget_sent_credentials().await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(deliveries = n, "texts of sent mails about access forgotten")
                    }
                    Err(e) => tracing::warn!(error = %e, "forgetting sent mails' texts failed"),
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(FORGET_EVERY) => {}
                }
            }
        });
        while running.join_next().await.is_some() {}
    }

    /// Replaces the stored text of the mails about access ([`TRANSACTIONAL`]) sent or
    /// given up in the last two days that still have theirs. A sender forgets the text
    /// as it records the outcome; this catches the mails a sender of a release that did
    /// not count their type as one sent (blue and green both send, and a rollback runs
    /// the older release again). Older tokens have expired. Returns how many it changed.
    pub async fn forget_sent_credentials(&self) -> Result<u64, sqlx::Error> {
        sqlx::query(
            "UPDATE deliveries SET body = $2 \
             WHERE event_type = ANY($1) AND status IN ('delivered', 'failed') \
               AND created_at > now() - interval '2 days' AND body NOT IN ($2, $3)",
        )
        .bind(&TRANSACTIONAL[..])
        .bind(SENT_CREDENTIAL)
        .bind(SENT_SIGN_UP_MAIL)
        .execute(&self.pool)
        .await
        .map(|done| done.rows_affected())
    }

    async fn work(&self, lane: Lane, poll: Duration, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let idle = match self.deliver_next(lane).await {
                Ok(sent) => !sent,
                Err(e) => {
                    tracing::warn!(error = %e, "delivery round failed");
                    true
                }
            };
            if idle {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(poll) => {}
                }
            }
        }
    }

    /// Claims the due deliveries of `lane` (up to [`CLAIM_BATCH`]), sends them at once
    /// and records what became of them; false when none was due. What ends within
    /// [`RECORD_TOGETHER`] is recorded together (one transaction for the lot); what
    /// takes longer (a receiver that hangs) is recorded as each ends, so the batch's
    /// other calls are not held as in flight until its slowest one gives up.
    pub async fn deliver_next(&self, lane: Lane) -> Result<bool, sqlx::Error> {
        use futures_util::StreamExt;
        let claimed = self.claim(lane).await?;
        if claimed.is_empty() {
            return Ok(false);
        }
        let mut sends: futures_util::stream::FuturesUnordered<_> = claimed
            .iter()
            .map(|d| async move {
                if d.attempts > self.max_attempts {
                    // Every attempt so far outlived its lease (its sender hung or died):
                    // the attempts are spent all the same.
                    return (d, Err("no attempt finished within its lease".to_owned()));
                }
                let send = async {
                    match d.channel.as_str() {
                        "email" => self.send_email(d).await,
                        _ => self.send_webhook(d).await,
                    }
                };
                // lettre bounds only the SMTP connect; this bounds the whole
                // conversation, so a send never outlives its lease.
                let result = tokio::time::timeout(self.send_timeout, send)
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.send_timeout)));
                (d, result)
            })
            .collect();
        let together = tokio::time::Instant::now() + RECORD_TOGETHER;
        let mut ended = Vec::with_capacity(claimed.len());
        while let Ok(Some(outcome)) = tokio::time::timeout_at(together, sends.next()).await {
            ended.push(outcome);
        }
        // A record that fails leaves its deliveries claimed until the lease ends (then
        // they are retried); the sends still under way go on and are recorded, not
        // dropped mid-call to be made again.
        let mut failed = None;
        if let Err(e) = self.record(ended).await {
            tracing::warn!(error = %e, "recording deliveries failed");
            failed.get_or_insert(e);
        }
        while let Some(outcome) = sends.next().await {
            let mut ended = vec![outcome];
            // With those that ended meanwhile (timeouts of one moment come together).
            while let Some(Some(more)) = futures_util::FutureExt::now_or_never(sends.next()) {
                ended.push(more);
            }
            if let Err(e) = self.record(ended).await {
                tracing::warn!(error = %e, "recording deliveries failed");
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(true), Err)
    }

    /// Takes the due deliveries, up to [`CLAIM_BATCH`], for a lease under one claim id,
    /// counting the attempt now: an attempt whose sender dies still counts towards
    /// giving up. The lease is on the database's clock, which is the one
    /// `next_attempt_at` is compared with.
    async fn claim(&self, lane: Lane) -> Result<Vec<Due>, sqlx::Error> {
        let lease = (self.send_timeout + LEASE_MARGIN).as_secs_f64();
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH due AS ({}) \
             UPDATE deliveries d SET claim = $2, attempts = d.attempts + 1, \
               next_attempt_at = now() + make_interval(secs => $3) \
             FROM due WHERE d.id = due.id \
             RETURNING d.id, d.claim, d.channel, d.target, d.event_type, d.subject, d.body, d.payload, d.attempts, \
               (SELECT w.secret FROM webhooks w WHERE w.id = d.webhook_id) AS secret",
            lane.due()
        )))
        .bind(CLAIM_BATCH)
        .bind(Uuid::new_v4())
        .bind(lease)
        .fetch_all(&self.pool)
        .await
    }

    /// Records the outcomes of a claim's attempts where the claim still stands, in one
    /// transaction: the delivered ones in one statement.
    async fn record(&self, ended: Vec<(&Due, Result<(), String>)>) -> Result<(), sqlx::Error> {
        let Some((first, _)) = ended.first() else {
            return Ok(());
        };
        let claim = first.claim;
        let mut tx = self.pool.begin().await?;
        let delivered: Vec<Uuid> = ended
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(d, _)| d.id)
            .collect();
        let recorded: std::collections::HashSet<Uuid> = if delivered.is_empty() {
            std::collections::HashSet::new()
        } else {
            sqlx::query_scalar(
                "UPDATE deliveries SET status = 'delivered', delivered_at = now(), \
                 last_error = NULL, claim = NULL, body = CASE WHEN event_type = ANY($3) \
                   THEN $4 ELSE body END \
                 WHERE id = ANY($1) AND claim = $2 RETURNING id",
            )
            // Planned for these ids each time: a plan cached while the table was small
            // would go on scanning all of it once it has grown (until an analyze replans it).
            .persistent(false)
            .bind(&delivered)
            .bind(claim)
            .bind(&TRANSACTIONAL[..])
            .bind(SENT_CREDENTIAL)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
        };
        let mut outcomes = Vec::with_capacity(ended.len());
        for (d, result) in ended {
            let attempts = d.attempts;
            let (stands, outcome) = match result {
                Ok(()) => (recorded.contains(&d.id), "delivered"),
                Err(error) => {
                    let give_up = attempts >= self.max_attempts;
                    let wait = finflow_platform::events::backoff(
                        u32::try_from(attempts - 1).unwrap_or(0),
                        self.retry_base,
                        self.retry_cap,
                    );
                    let updated = sqlx::query(
                        "UPDATE deliveries SET status = $3, last_error = $4, \
                         next_attempt_at = now() + make_interval(secs => $5), claim = NULL, \
                         body = CASE WHEN $3 = 'failed' AND event_type = ANY($6) \
                           THEN $7 ELSE body END \
                         WHERE id = $1 AND claim = $2",
                    )
                    .bind(d.id)
                    .bind(d.claim)
                    .bind(if give_up { "failed" } else { "pending" })
                    .bind(&error)
                    .bind(wait.as_secs_f64())
                    .bind(&TRANSACTIONAL[..])
                    .bind(SENT_CREDENTIAL)
                    .execute(&mut *tx)
                    .await?;
                    tracing::info!(delivery = %d.id, channel = %d.channel, attempts, give_up, %error, "delivery failed");
                    (
                        updated.rows_affected() > 0,
                        if give_up { "failed" } else { "retry" },
                    )
                }
            };
            outcomes.push((d, stands, outcome));
        }
        tx.commit().await?;
        for (d, stands, outcome) in outcomes {
            if stands {
                metrics::counter!("finflow_notification_deliveries_total", "channel" => d.channel.clone(), "outcome" => outcome).increment(1);
            } else {
                // The lease ran out first and another sender took the delivery over: its
                // attempt is the one on record.
                tracing::warn!(delivery = %d.id, outcome, "a delivery outlived its lease; outcome not recorded");
            }
        }
        Ok(())
    }

    async fn send_email(&self, d: &Due) -> Result<(), String> {
        let message = Message::builder()
            .from(self.mail_from.clone())
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
        let url = reqwest::Url::parse(&d.target).map_err(|e| format!("not a URL: {e}"))?;
        // A literal address never reaches the client's resolver: check it here. A name
        // is checked by the resolver, on the addresses the connection will use.
        self.policy
            .check_literal(&url)
            .map_err(|e| format!("refused: {e}"))?;
        let body = serde_json::to_vec(&d.payload).map_err(|e| e.to_string())?;
        let response = self
            .http
            .post(url)
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
            .map_err(|e| describe(&e.without_url()))?;
        // A redirect is not followed (the client's policy) and is no delivery.
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {}", response.status()))
        }
    }
}

/// A send error with its causes (the resolver's refusal is a cause several levels
/// down), without the URL.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
