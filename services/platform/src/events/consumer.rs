//! The consumer runner: ACK after commit, each event applied once.
//!
//! Deliveries that are already waiting (up to the prefetch) are applied together, in
//! one transaction ([`apply_batch`]): one multi-row insert of their ids into the dedupe
//! table, the handlers ([`Handler::handle_batch`]), one commit, then one ACK for the
//! batch. A commit is what PostgreSQL charges most for, and one per event was most of
//! an event's cost. When a handler fails, the batch (or, for a handler that answers per
//! event, that event) is given back and each of its events is retried alone, as every
//! event was before ([`apply_once`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Event, Publisher, QueueSpec, backoff, declare_queue};
use crate::telemetry;

/// Why a handler could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying: a dependency is down, a lock timed out, a row is not there yet.
    #[error("transient: {0}")]
    Transient(String),
    /// Will never succeed: the event is malformed or contradicts the consumer's state.
    /// The message goes to the dead-letter queue at once.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        Self::Transient(e.to_string())
    }
}

/// Applies one event. It runs inside the transaction that also records the event id,
/// so its writes and the dedupe record commit together or not at all.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a Event,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;

    /// Applies several new events in the caller's transaction, answering per event. An
    /// event answered with an error must leave no write behind: the caller gives back
    /// its dedupe record and retries it alone, through [`Handler::handle`]. An `Err` is
    /// the batch's: nothing of it is committed, and each event is retried alone.
    ///
    /// The default runs `handle` for each in turn and gives up the batch at the first
    /// failure ([`each_in_turn`]): failures are rare, and a savepoint per event would
    /// cost two more statements each for all the batches that succeed. A handler that
    /// can do a batch's work together (one call to a dependency for all of them) does
    /// it here.
    fn handle_batch<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [&'a Event],
    ) -> impl Future<Output = Result<Vec<Result<(), HandlerError>>, HandlerError>> + Send + 'a
    where
        Self: Sized,
    {
        each_in_turn(self, tx, events)
    }
}

/// Runs `handler` for each event in turn; the first failure fails the batch.
pub async fn each_in_turn<H: Handler>(
    handler: &H,
    tx: &mut PgConnection,
    events: &[&Event],
) -> Result<Vec<Result<(), HandlerError>>, HandlerError> {
    for event in events {
        handler.handle(tx, event).await?;
    }
    Ok(events.iter().map(|_| Ok(())).collect())
}

/// What happened to one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler ran and its transaction committed.
    Applied,
    /// The event id was already processed; nothing ran.
    Duplicate,
}

impl Outcome {
    /// Its label on `finflow_events_consumed_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
        }
    }
}

/// Default [`ConsumerSpec::retry_for`]: a pod restart (image pulled, probes passed)
/// takes tens of seconds.
pub const RETRY_FOR: Duration = Duration::from_secs(60);

/// Settings of one consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Name recorded with processed event ids (usually the queue name).
    pub consumer: String,
    pub queue: QueueSpec,
    /// Unacknowledged messages held at once.
    pub prefetch: u16,
    /// How long a batch waits after its first delivery for more, up to `prefetch`: one
    /// transaction then applies what several relay scans published. Zero takes only
    /// what has already arrived.
    pub linger: Duration,
    /// How long a message that keeps failing transiently is retried (from its first
    /// failure) before it is dead-lettered: long enough to span a dependency's restart,
    /// so what reaches the dead-letter queue is poison, not bad timing.
    pub retry_for: Duration,
    /// First retry delay; doubles each attempt, with jitter.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
    /// The pod's role file (`FINFLOW_ROLE_FILE`): no consumption while it says `preview`.
    pub role_file: Option<std::path::PathBuf>,
}

impl ConsumerSpec {
    pub fn new(queue: QueueSpec) -> Self {
        Self {
            consumer: queue.name.clone(),
            queue,
            prefetch: 16,
            linger: Duration::ZERO,
            retry_for: RETRY_FOR,
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_secs(10),
            role_file: std::env::var_os(ROLE_FILE_ENV).map(std::path::PathBuf::from),
        }
    }
}

/// Applies `events` in one transaction: their ids recorded by one insert (sorted, so
/// two consumers never wait on each other's ids in opposite orders), the new ones
/// through [`Handler::handle_batch`]. Per event: `Some` outcome, or `None` when it
/// failed (it left no write and its id is given back: the caller retries it alone;
/// when the batch failed, every event is `None` and nothing was committed). An error
/// means nothing was committed.
pub async fn apply_batch<H: Handler>(
    pool: &PgPool,
    consumer: &str,
    handler: &H,
    events: &[&Event],
) -> Result<Vec<Option<Outcome>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut ids: Vec<(uuid::Uuid, &str)> = events
        .iter()
        .map(|e| (e.id, e.event_type.as_str()))
        .collect();
    ids.sort_unstable();
    ids.dedup_by_key(|(id, _)| *id);
    let (id_list, types): (Vec<uuid::Uuid>, Vec<&str>) = ids.into_iter().unzip();
    let new: std::collections::HashSet<uuid::Uuid> = sqlx::query_scalar(
        "INSERT INTO processed_events (consumer, event_id, event_type) \
         SELECT $1, id, t FROM UNNEST($2::uuid[], $3::text[]) AS u(id, t) ORDER BY id \
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(consumer)
    .bind(&id_list)
    .bind(&types)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    // Each new event once (a redelivered copy in the same batch is a duplicate).
    let mut seen = std::collections::HashSet::new();
    let fresh: Vec<bool> = events
        .iter()
        .map(|e| new.contains(&e.id) && seen.insert(e.id))
        .collect();
    let to_apply: Vec<&Event> = events
        .iter()
        .zip(&fresh)
        .filter(|(_, f)| **f)
        .map(|(e, _)| *e)
        .collect();
    let mut results = match handler.handle_batch(&mut tx, &to_apply).await {
        Ok(results) => results.into_iter(),
        Err(e) => {
            tracing::debug!(error = %e, "a batch failed; its events are applied alone");
            tx.rollback().await?;
            return Ok(vec![None; events.len()]);
        }
    };
    let mut failed = std::collections::HashSet::new();
    for event in &to_apply {
        let result = results
            .next()
            .unwrap_or_else(|| Err(HandlerError::Transient("the handler gave no answer".into())));
        if let Err(e) = &result {
            tracing::debug!(event_id = %event.id, error = %e, "event failed in a batch; retried alone");
            sqlx::query("DELETE FROM processed_events WHERE consumer = $1 AND event_id = $2")
                .bind(consumer)
                .bind(event.id)
                .execute(&mut *tx)
                .await?;
            failed.insert(event.id);
        }
    }
    let outcomes = events
        .iter()
        .zip(fresh)
        .map(|(event, fresh)| match (fresh, failed.contains(&event.id)) {
            // Its other deliveries in this batch are retried with it.
            (_, true) => None,
            (true, false) => Some(Outcome::Applied),
            (false, false) => Some(Outcome::Duplicate),
        })
        .collect();
    tx.commit().await?;
    Ok(outcomes)
}

/// Runs `handler` once for `event` unless `consumer` has already processed it.
pub async fn apply_once<H: Handler>(
    pool: &PgPool,
    consumer: &str,
    handler: &H,
    event: &Event,
) -> Result<Outcome, HandlerError> {
    let mut tx = pool.begin().await?;
    // Concurrent deliveries of one id serialize on the primary key: the second waits for
    // the first to commit, then inserts nothing and is a duplicate.
    let inserted = sqlx::query(
        "INSERT INTO processed_events (consumer, event_id, event_type) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(event.id)
    .bind(&event.event_type)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        return Ok(Outcome::Duplicate);
    }
    handler.handle(&mut tx, event).await?;
    tx.commit().await?;
    Ok(Outcome::Applied)
}

/// Where the pod's live role is (`preview` or `active`), as the operator publishes it
/// through a downward-API file that follows the pod's `finflow.dev/role` label.
pub const ROLE_FILE_ENV: &str = "FINFLOW_ROLE_FILE";

/// Whether the pod whose role is in `role_file` must leave shared queues alone: with a
/// role file configured, anything but `active` pauses. The operator labels each new pod
/// with its role moments after it starts (it watches pods); until then the file is
/// empty, and a pod that may be a green preview must not take live work. Without a role
/// file (processes outside the operator, the local launcher) the pod consumes.
pub fn is_preview(role_file: Option<&std::path::Path>) -> bool {
    role_file
        .is_some_and(|path| std::fs::read_to_string(path).map_or(true, |role| role_pauses(&role)))
}

fn role_pauses(role: &str) -> bool {
    role.trim() != "active"
}

/// How often the role is looked at.
const ROLE_POLL: Duration = Duration::from_secs(2);

/// Consumes `spec.queue` until `shutdown` is cancelled, reconnecting with backoff. While
/// the pod is a preview ([`is_preview`]) it consumes nothing: a green worker never takes
/// live work before promotion.
pub async fn run<H: Handler>(
    pool: PgPool,
    broker: impl Into<super::Broker>,
    spec: ConsumerSpec,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    let broker = broker.into();
    let mut failures = 0_u32;
    while !shutdown.is_cancelled() {
        if is_preview(spec.role_file.as_deref()) {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(ROLE_POLL) => continue,
            }
        }
        match consume(&pool, &broker, &spec, &*handler, &shutdown, &mut failures).await {
            Ok(()) => return,
            Err(_) if is_preview(spec.role_file.as_deref()) => {}
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(queue = %spec.queue.name, error = %e, "consumer lost its broker, retrying");
                }
                let wait = backoff(
                    failures,
                    Duration::from_millis(200),
                    Duration::from_secs(10),
                );
                failures = failures.saturating_add(1);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn consume<H: Handler>(
    pool: &PgPool,
    broker: &super::Broker,
    spec: &ConsumerSpec,
    handler: &H,
    shutdown: &CancellationToken,
    failures: &mut u32,
) -> lapin::Result<()> {
    let connection = broker.connect(&spec.consumer).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(spec.prefetch, BasicQosOptions::default())
        .await?;
    declare_queue(&channel, &spec.queue).await?;
    let mut deliveries = channel
        .basic_consume(
            spec.queue.name.as_str().into(),
            spec.consumer.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    if *failures > 0 {
        tracing::info!(queue = %spec.queue.name, "consumer reconnected");
    }
    *failures = 0;
    let mut role_check = tokio::time::interval(ROLE_POLL);
    let mut dead = DeadLetters {
        broker,
        name: format!("{}-dead-letters", spec.consumer),
        open: None,
    };
    loop {
        let delivery = tokio::select! {
            // Shutdown first: no new batch is started once it is asked for.
            biased;
            () = shutdown.cancelled() => {
                // Unacked messages go back to the queue when the channel closes.
                connection.close(200, "shutdown".into()).await.ok();
                return Ok(());
            }
            _ = role_check.tick() => {
                if is_preview(spec.role_file.as_deref()) {
                    tracing::info!(queue = %spec.queue.name, "this pod became a preview: consumption paused");
                    connection.close(200, "preview".into()).await.ok();
                    return Err(lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                        lapin::ConnectionState::Closed,
                    )));
                }
                continue;
            }
            next = deliveries.next() => match next {
                Some(delivery) => delivery?,
                None => return Err(lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                    lapin::ConnectionState::Closed,
                ))),
            },
        };
        // What lapin already holds joins it, and what arrives while the batch lingers:
        // under load a batch, idle one event.
        let mut batch = vec![delivery];
        let mut broken = None;
        let until = tokio::time::Instant::now() + spec.linger;
        while batch.len() < usize::from(spec.prefetch) {
            let next = match deliveries.next().now_or_never() {
                Some(next) => next,
                None if spec.linger.is_zero() => break,
                None => tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    next = tokio::time::timeout_at(until, deliveries.next()) => match next {
                        Ok(next) => next,
                        Err(_) => break,
                    },
                },
            };
            match next {
                Some(Ok(delivery)) => batch.push(delivery),
                Some(Err(e)) => {
                    broken = Some(e);
                    break;
                }
                None => break,
            }
        }
        let settled = process_batch(pool, spec, handler, &mut dead, batch, shutdown).await?;
        if !settled {
            // A delivery was left to the broker (shutdown during its retries): no ACK of
            // this channel may follow, or a `multiple` one would settle it unapplied.
            connection.close(200, "shutdown".into()).await.ok();
            return Ok(());
        }
        if let Some(e) = broken {
            return Err(e);
        }
    }
}

/// The most events applied in one transaction: a batch of deliveries that carry bundles
/// is applied in groups of deliveries of at most this many events (a bundle holds at
/// most [`super::BUNDLE_MAX`]), so a handler that sends a batch on (C's worker to B's
/// `/internal/transfers/batch`) stays within what its dependency takes.
pub const BATCH_EVENTS: usize = 100;

/// Dead-letters single events of a bundle: a connection of its own, opened the first
/// time it is needed (a publishing connection can be blocked by a broker alarm; the
/// consumer's must keep draining).
struct DeadLetters<'u> {
    broker: &'u super::Broker,
    name: String,
    open: Option<(lapin::Connection, Publisher)>,
}

impl DeadLetters<'_> {
    async fn publish(
        &mut self,
        spec: &ConsumerSpec,
        event: &Event,
        headers: FieldTable,
    ) -> lapin::Result<()> {
        let publisher = match &self.open {
            Some((_, publisher)) => publisher.clone(),
            None => {
                let connection = self.broker.connect(&self.name).await?;
                let publisher = Publisher::new(&connection).await?;
                self.open = Some((connection, publisher.clone()));
                publisher
            }
        };
        if let Err(e) = publisher
            .dead_letter(&spec.queue.name, event, headers)
            .await
        {
            tracing::warn!(queue = %spec.queue.name, event_id = %event.id, error = %e,
                "could not dead-letter an event of a bundle; the bundle is redelivered");
            self.open = None;
            return Err(match e {
                super::PublishError::Amqp(e) => e,
                _ => closed(),
            });
        }
        Ok(())
    }
}

fn closed() -> lapin::Error {
    lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
        lapin::ConnectionState::Closed,
    ))
}

/// Applies a batch of deliveries ([`apply_batch`], in groups of at most [`BATCH_EVENTS`]
/// events) and ACKs each after the commit. An event that failed in it, or every event
/// of a group that could not commit, is applied alone, in place, with its retries
/// ([`settle`]). Answers false when shutdown left a delivery unsettled: the caller must
/// not ACK anything after it.
async fn process_batch<H: Handler>(
    pool: &PgPool,
    spec: &ConsumerSpec,
    handler: &H,
    dead: &mut DeadLetters<'_>,
    batch: Vec<Delivery>,
    shutdown: &CancellationToken,
) -> lapin::Result<bool> {
    metrics::counter!("finflow_messages_consumed_total", "queue" => spec.queue.name.clone())
        .increment(batch.len() as u64);
    let mut groups: Vec<Vec<(Delivery, Vec<Event>)>> = Vec::new();
    let mut in_group = 0;
    for delivery in batch {
        if let Some(events) = parse(spec, &delivery).await? {
            if groups.is_empty() || in_group + events.len() > BATCH_EVENTS {
                groups.push(Vec::new());
                in_group = 0;
            }
            in_group += events.len();
            if let Some(group) = groups.last_mut() {
                group.push((delivery, events));
            }
        }
    }
    for group in groups {
        if !process_group(pool, spec, handler, dead, group, shutdown).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn process_group<H: Handler>(
    pool: &PgPool,
    spec: &ConsumerSpec,
    handler: &H,
    dead: &mut DeadLetters<'_>,
    parsed: Vec<(Delivery, Vec<Event>)>,
    shutdown: &CancellationToken,
) -> lapin::Result<bool> {
    let total: usize = parsed.iter().map(|(_, events)| events.len()).sum();
    let outcomes = if total <= 1 {
        vec![None; total]
    } else {
        let events: Vec<&Event> = parsed.iter().flat_map(|(_, events)| events).collect();
        match apply_batch(pool, &spec.consumer, handler, &events).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                tracing::warn!(queue = %spec.queue.name, error = %e, "a batch did not commit; applying its events one by one");
                vec![None; events.len()]
            }
        }
    };
    if total > 1 && outcomes.iter().all(Option::is_some) {
        // One ACK for the whole group: everything unacknowledged on this channel up to
        // its last delivery is this group (groups and batches run one after another,
        // poison was rejected above, and nothing is left unsettled before it), and
        // RabbitMQ settles it in one command.
        for outcome in outcomes.into_iter().flatten() {
            count(spec, outcome.as_str());
        }
        if let Some((last, _)) = parsed.last() {
            last.ack(BasicAckOptions { multiple: true }).await?;
        }
        return Ok(true);
    }
    let mut outcomes = outcomes.into_iter();
    for (delivery, events) in parsed {
        let theirs: Vec<Option<Outcome>> = outcomes.by_ref().take(events.len()).collect();
        if !process_delivery(
            pool, spec, handler, dead, delivery, events, theirs, shutdown,
        )
        .await?
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Settles one delivery whose events have `outcomes` from a batch (`None`: not applied
/// there): the others are applied alone, in place and in order, with their retries. An
/// event refused for good is dead-lettered alone: the delivery itself when it carries
/// only that event, else a message of its own to `<queue>.dead`, so a bundle's good
/// events are never dead-lettered with it. The delivery is acknowledged once all its
/// events are settled; answers false, leaving it to the broker, when shutdown came
/// first (redelivered, its applied events are then duplicates).
#[allow(clippy::too_many_arguments)]
async fn process_delivery<H: Handler>(
    pool: &PgPool,
    spec: &ConsumerSpec,
    handler: &H,
    dead: &mut DeadLetters<'_>,
    delivery: Delivery,
    events: Vec<Event>,
    outcomes: Vec<Option<Outcome>>,
    shutdown: &CancellationToken,
) -> lapin::Result<bool> {
    let bundle = events.len() > 1;
    for (event, outcome) in events.iter().zip(outcomes) {
        if let Some(outcome) = outcome {
            count(spec, outcome.as_str());
            continue;
        }
        let span = tracing::info_span!(
            "consume",
            queue = %spec.queue.name,
            event_id = %event.id,
            event_type = %event.event_type,
            redelivered = delivery.redelivered,
        );
        telemetry::set_parent_from_amqp(&span, delivery.properties.headers().as_ref());
        match settle(pool, spec, handler, event, shutdown)
            .instrument(span)
            .await
        {
            Settled::Applied => {}
            Settled::Stopped => return Ok(false),
            Settled::Refused if bundle => {
                dead.publish(spec, event, trace_headers(&delivery)).await?;
            }
            Settled::Refused => {
                return delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                    .map(|_| true);
            }
        }
    }
    delivery.ack(BasicAckOptions::default()).await.map(|_| true)
}

/// A delivery's own headers (its trace context), without the broker's and the bundle's
/// (`x-` ones): what an event dead-lettered alone carries.
fn trace_headers(delivery: &Delivery) -> FieldTable {
    delivery
        .properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter(|(k, _)| !k.as_str().starts_with("x-"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<std::collections::BTreeMap<_, _>>()
                .into()
        })
        .unwrap_or_default()
}

/// The events a delivery carries (one, or a bundle), or `None` after dead-lettering one
/// that carries none.
async fn parse(spec: &ConsumerSpec, delivery: &Delivery) -> lapin::Result<Option<Vec<Event>>> {
    match super::decode(&delivery.data) {
        Ok(events) => Ok(Some(events)),
        Err(e) => {
            tracing::error!(queue = %spec.queue.name, error = %e, "poison message dead-lettered");
            count(spec, "poison");
            delivery
                .reject(BasicRejectOptions { requeue: false })
                .await
                .map(|_| None)
        }
    }
}

/// How an event applied alone ended.
enum Settled {
    /// Applied now, or found applied before.
    Applied,
    /// Refused for good, or failing past its retry budget: to be dead-lettered.
    Refused,
    /// Shutdown came during its retries: left to the broker.
    Stopped,
}

/// Applies `event` alone ([`apply_once`]), retrying transient failures with backoff for
/// `spec.retry_for` from the first one.
async fn settle<H: Handler>(
    pool: &PgPool,
    spec: &ConsumerSpec,
    handler: &H,
    event: &Event,
    shutdown: &CancellationToken,
) -> Settled {
    let mut attempt = 0_u32;
    let mut first_failure: Option<tokio::time::Instant> = None;
    loop {
        match apply_once(pool, &spec.consumer, handler, event).await {
            Ok(outcome) => {
                count(spec, outcome.as_str());
                return Settled::Applied;
            }
            Err(HandlerError::Permanent(reason)) => {
                tracing::error!(%reason, "event refused, dead-lettered");
                count(spec, "dead_lettered");
                return Settled::Refused;
            }
            Err(HandlerError::Transient(reason))
                if first_failure
                    .get_or_insert_with(tokio::time::Instant::now)
                    .elapsed()
                    < spec.retry_for =>
            {
                let wait = backoff(attempt, spec.retry_base, spec.retry_cap);
                tracing::warn!(%reason, attempt, ?wait, "event failed, will retry");
                count(spec, "retried");
                attempt += 1;
                tokio::select! {
                    // Not acked: the broker redelivers it to whoever consumes next.
                    () = shutdown.cancelled() => return Settled::Stopped,
                    () = tokio::time::sleep(wait) => {}
                }
            }
            Err(HandlerError::Transient(reason)) => {
                tracing::error!(%reason, attempts = attempt + 1, retried_for = ?spec.retry_for, "event failed every attempt, dead-lettered");
                count(spec, "dead_lettered");
                return Settled::Refused;
            }
        }
    }
}

fn count(spec: &ConsumerSpec, outcome: &'static str) {
    metrics::counter!(
        "finflow_events_consumed_total",
        "queue" => spec.queue.name.clone(),
        "outcome" => outcome
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_active_role_consumes_once_a_role_file_is_configured() {
        assert!(role_pauses("preview\n"));
        assert!(role_pauses(""), "not labelled yet");
        assert!(role_pauses("Active-ish"));
        assert!(!role_pauses("active\n"));
        assert!(!is_preview(None), "outside the operator");
        assert!(is_preview(Some(std::path::Path::new(
            "/nonexistent/finflow/role"
        ))));
    }
}
