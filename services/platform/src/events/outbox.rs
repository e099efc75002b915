//! The transactional outbox and its relay.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::FutureExt as _;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Event, PublishError, Publisher, backoff, types};
use crate::telemetry;

/// The PostgreSQL channel `enqueue` notifies so the relay wakes at once.
pub const NOTIFY_CHANNEL: &str = "finflow_outbox";

/// The session advisory lock of the relay that scans a database's outbox.
const RELAY_LOCK: i64 = 0x6f75_7462_6f78; // "outbox"

/// The envelopes of `event_type` in the outbox, oldest first: what a test asserts a
/// change announced.
#[cfg(feature = "testing")]
pub async fn written(pool: &PgPool, event_type: &str) -> Vec<serde_json::Value> {
    let sql = "SELECT payload FROM outbox WHERE event_type = $1 ORDER BY seq";
    crate::db::column_of(pool, sql, event_type).await
}

/// Records `event` in the outbox as part of the caller's transaction, with the current
/// trace context. Nothing is published unless that transaction commits.
pub async fn enqueue(tx: &mut PgConnection, event: &Event) -> Result<(), sqlx::Error> {
    let headers = serde_json::to_value(telemetry::current_context_map())
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let payload = serde_json::to_value(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    // One round trip: the row, and the notification that is delivered on commit only,
    // like the row itself.
    sqlx::query(
        "WITH added AS (INSERT INTO outbox (event_id, event_type, payload, headers) \
           VALUES ($1, $2, $3, $4) RETURNING 1) \
         SELECT pg_notify($5, '') FROM added",
    )
    .bind(event.id)
    .bind(&event.event_type)
    .bind(payload)
    .bind(headers)
    .bind(NOTIFY_CHANNEL)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// An event as its outbox row holds it, for a caller that writes its own change and the
/// event in one statement: it inserts `(event_id, event_type, payload, headers)` into
/// `outbox` and calls `pg_notify(NOTIFY_CHANNEL, '')`, as [`enqueue`] does.
pub struct Staged {
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: serde_json::Value,
    pub headers: serde_json::Value,
}

/// `event` as its outbox row, with the current trace context.
pub fn stage(event: &Event) -> Result<Staged, sqlx::Error> {
    let encode = |e: serde_json::Error| sqlx::Error::Encode(Box::new(e));
    Ok(Staged {
        event_id: event.id,
        event_type: event.event_type.clone(),
        payload: serde_json::to_value(event).map_err(encode)?,
        headers: serde_json::to_value(telemetry::current_context_map()).map_err(encode)?,
    })
}

/// Records several events in the outbox as part of the caller's transaction, in one
/// statement (with the one notification it needs), in the given order.
pub async fn enqueue_all(tx: &mut PgConnection, events: &[Event]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let headers = serde_json::to_value(telemetry::current_context_map())
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let mut ids = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    for event in events {
        ids.push(event.id);
        types.push(event.event_type.as_str());
        payloads.push(serde_json::to_value(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?);
    }
    // `seq` follows the insert's order, which WITH ORDINALITY fixes as the given one.
    sqlx::query(
        "WITH added AS (INSERT INTO outbox (event_id, event_type, payload, headers) \
           SELECT id, t, p, $4 FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[]) \
             WITH ORDINALITY AS e(id, t, p, n) ORDER BY n RETURNING 1) \
         SELECT pg_notify($5, '') FROM (SELECT 1 FROM added LIMIT 1) AS any_row",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&payloads)
    .bind(headers)
    .bind(NOTIFY_CHANNEL)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Number of events not yet published (a health figure: it grows while RabbitMQ is down).
pub async fn pending(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(pool)
        .await
}

/// Publishes the outbox to RabbitMQ until cancelled.
pub struct Relay {
    pool: PgPool,
    broker: super::Broker,
    name: String,
    /// Rows published per transaction.
    pub batch_size: i64,
    /// Most events per message (at most [`super::BUNDLE_MAX`]): runs of one type are
    /// published as bundles ([`Publisher::bundled`]). 1, the default, publishes each
    /// event alone, which every consumer reads, including those from before bundles.
    pub bundle_max: usize,
    /// Longest wait between scans when no notification arrives.
    pub poll_interval: Duration,
    /// How long a notification waits for the commits right behind it, so that one scan
    /// (one transaction) publishes what many commits enqueued, and the relays of one
    /// database (API and worker, blue and green) do not all scan for every commit.
    pub coalesce: Duration,
    /// How long published rows are kept (for audit and replay) before they are deleted.
    pub retention: Duration,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("broker: {0}")]
    Publish(#[from] PublishError),
}

impl Relay {
    pub fn new(pool: PgPool, broker: impl Into<super::Broker>, name: impl Into<String>) -> Self {
        Self {
            pool,
            broker: broker.into(),
            name: name.into(),
            batch_size: 200,
            bundle_max: 1,
            poll_interval: Duration::from_secs(1),
            coalesce: Duration::from_millis(10),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// Runs until `shutdown` is cancelled, reconnecting to RabbitMQ with backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0_u32;
        while !shutdown.is_cancelled() {
            match self.connect_and_relay(&shutdown, &mut failures).await {
                Ok(()) => return,
                Err(e) => {
                    let wait = backoff(
                        failures,
                        Duration::from_millis(200),
                        Duration::from_secs(10),
                    );
                    if failures == 0 {
                        tracing::warn!(error = %e, "outbox relay lost its broker, retrying");
                    } else {
                        tracing::debug!(error = %e, ?wait, "outbox relay still cannot publish");
                    }
                    failures = failures.saturating_add(1);
                    metrics::gauge!("finflow_outbox_relay_up").set(0);
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    async fn connect_and_relay(
        &self,
        shutdown: &CancellationToken,
        failures: &mut u32,
    ) -> Result<(), RelayError> {
        let connection = self
            .broker
            .connect(&format!("{}-relay", self.name))
            .await
            .map_err(PublishError::from)?;
        let publisher = Publisher::new(&connection)
            .await
            .map_err(PublishError::from)?
            .bundled(self.bundle_max);
        // One relay of a database scans at a time: the one holding the session lock
        // [`RELAY_LOCK`] on its listening connection. The others stand by, asking for the
        // lock every poll interval, so a commit does not wake every relay (API and
        // worker, blue and green) to scan the same rows, all but one for nothing. The
        // lock goes with the connection, so a relay that dies or loses it hands over
        // within a poll interval; two relays that both scan are only wasteful (rows are
        // taken with SKIP LOCKED, and consumers dedupe). Without a listening connection
        // a relay scans alone, polling; notifications only cut latency.
        // The listening connection is the only one of a pool of its own, which goes
        // away with this call however it ends (even cancelled), and takes the session
        // and its lock with it: a pooled connection of the service must never keep the
        // lock after its relay stopped.
        let own = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with((*self.pool.connect_options()).clone());
        let mut listener = PgListener::connect_with(&own).await.ok();
        let mut leading = listener.is_none();
        let result = self
            .relay(
                &connection,
                &publisher,
                &mut listener,
                &mut leading,
                shutdown,
                failures,
            )
            .await;
        // Given back at once, not when the pool's connection closes.
        if leading && let Some(l) = listener.as_mut() {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(RELAY_LOCK)
                .execute(&mut *l)
                .await;
        }
        result
    }

    /// Scans and publishes (or stands by) until cancelled or the broker fails.
    async fn relay(
        &self,
        connection: &lapin::Connection,
        publisher: &Publisher,
        listener: &mut Option<PgListener>,
        leading: &mut bool,
        shutdown: &CancellationToken,
        failures: &mut u32,
    ) -> Result<(), RelayError> {
        // Swept when this relay first leads, so rows another release's relay published
        // lose their secrets at once, not an hour after a rollout.
        let mut last_cleanup: Option<tokio::time::Instant> = None;
        loop {
            if !*leading && let Some(l) = listener.as_mut() {
                *leading = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                    .bind(RELAY_LOCK)
                    .fetch_one(&mut *l)
                    .await
                    .unwrap_or(false);
                if *leading && l.listen(NOTIFY_CHANNEL).await.is_err() {
                    *listener = None;
                }
            }
            if !*leading {
                // Connected and ready to take over: up, as far as anyone watching knows.
                metrics::gauge!("finflow_outbox_relay_up").set(1);
                *failures = 0;
                tokio::select! {
                    () = shutdown.cancelled() => {
                        connection.close(200, "shutdown".into()).await.ok();
                        return Ok(());
                    }
                    () = tokio::time::sleep(self.poll_interval) => continue,
                }
            }
            let published = self.publish_batch(publisher).await?;
            if *failures > 0 {
                tracing::info!("outbox relay is publishing again");
                *failures = 0;
            }
            metrics::gauge!("finflow_outbox_relay_up").set(1);
            if last_cleanup.is_none_or(|at| at.elapsed() > Duration::from_secs(3600)) {
                self.delete_old().await?;
                last_cleanup = Some(tokio::time::Instant::now());
            }
            if published as i64 >= self.batch_size {
                continue;
            }
            let notified = async {
                match listener.as_mut() {
                    Some(l) => {
                        let _ = l.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => {
                    connection.close(200, "shutdown".into()).await.ok();
                    return Ok(());
                }
                () = notified => {
                    tokio::time::sleep(self.coalesce).await;
                    // The commits of that wait are all in the next scan (a commit is
                    // visible before its notification is sent): their notifications ask
                    // for nothing more. They are read off the socket, not only out of
                    // sqlx's buffer, which holds just those that arrived during a query
                    // on this connection; left there, each would wake a scan of its own,
                    // most of them finding nothing.
                    if let Some(l) = listener.as_mut() {
                        while let Some(Ok(Some(_))) = l.try_recv().now_or_never() {}
                    }
                }
                () = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }

    /// Publishes up to one batch in `seq` order and marks it published, in one
    /// transaction: the rows are marked as they are taken (one statement), and the mark
    /// is rolled back unless the broker confirmed them all. `SKIP LOCKED` lets several
    /// relays (blue and green, replicas) share the table without publishing a row
    /// concurrently.
    async fn publish_batch(&self, publisher: &Publisher) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let mut rows: Vec<(i64, serde_json::Value, serde_json::Value)> = sqlx::query_as(
            "UPDATE outbox SET published_at = now(), attempts = attempts + 1 WHERE seq IN \
               (SELECT seq FROM outbox WHERE published_at IS NULL \
                ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING seq, payload, headers",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        rows.sort_unstable_by_key(|(seq, _, _)| *seq);
        let mut seqs = Vec::with_capacity(rows.len());
        let mut batch = Vec::with_capacity(rows.len());
        let mut poison = Vec::new();
        for (seq, payload, headers) in rows {
            match serde_json::from_value::<Event>(payload) {
                Ok(event) => {
                    let context: BTreeMap<String, String> =
                        serde_json::from_value(headers).unwrap_or_default();
                    seqs.push(seq);
                    batch.push((event, telemetry::amqp_headers(&context)));
                }
                Err(e) => {
                    tracing::error!(seq, error = %e, "outbox row is not an event; skipped, kept with its error");
                    poison.push(seq);
                }
            }
        }
        if let Err(e) = publisher.publish_all(&batch).await {
            drop(tx);
            self.record_failure(&seqs, &e.to_string()).await;
            return Err(e.into());
        }
        if !poison.is_empty() {
            sqlx::query(
                "UPDATE outbox SET last_error = 'not an event envelope' WHERE seq = ANY($1)",
            )
            .bind(&poison)
            .execute(&mut *tx)
            .await?;
        }
        scrub_secrets(&mut tx, Some(&seqs)).await?;
        tx.commit().await?;
        metrics::counter!("finflow_outbox_published_total").increment(seqs.len() as u64);
        Ok(seqs.len() + poison.len())
    }

    async fn record_failure(&self, seqs: &[i64], error: &str) {
        let result = sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE seq = ANY($1)",
        )
        .bind(seqs)
        .bind(error)
        .execute(&self.pool)
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "could not record the publish failure");
        }
    }

    async fn delete_old(&self) -> Result<(), sqlx::Error> {
        // Rows another relay published (a release before this one, during a rollout)
        // still hold their secrets.
        scrub_secrets(&mut *self.pool.acquire().await?, None).await?;
        let secs = i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
        sqlx::query(
            "DELETE FROM outbox WHERE published_at < now() - $1::bigint * interval '1 second'",
        )
        .bind(secs)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Removes from published rows (those of `seqs`, or all) the `data` fields
/// [`types::SECRET_DATA`] names: a credential meant for the event's consumer stays in
/// the outbox only until the broker has it.
async fn scrub_secrets(conn: &mut PgConnection, seqs: Option<&[i64]>) -> Result<(), sqlx::Error> {
    let (types, fields): (Vec<&str>, Vec<&str>) = types::SECRET_DATA.iter().copied().unzip();
    // One joined row per event type (an UPDATE applies one of several that match), and
    // only a `data` that is an object: `-` on any other would fail the relay's batch.
    sqlx::query(
        "UPDATE outbox o SET payload = jsonb_set(o.payload, '{data}', (o.payload->'data') - s.fields) \
         FROM (SELECT event_type, array_agg(field) AS fields \
               FROM UNNEST($2::text[], $3::text[]) AS u(event_type, field) GROUP BY event_type) s \
         WHERE o.event_type = s.event_type AND o.published_at IS NOT NULL \
           AND ($1::bigint[] IS NULL OR o.seq = ANY($1)) \
           AND jsonb_typeof(o.payload->'data') = 'object' AND (o.payload->'data') ?| s.fields",
    )
    .bind(seqs)
    .bind(&types)
    .bind(&fields)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether an event with this id is in the outbox and published (for tests and tooling).
pub async fn is_published(pool: &PgPool, event_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT published_at IS NOT NULL FROM outbox WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(pool)
        .await
        .map(|r| r.unwrap_or(false))
}
