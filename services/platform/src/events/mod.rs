//! Events over RabbitMQ (`docs/architecture.md`, Events).
//!
//! The model, end to end:
//! 1. A producer calls [`outbox::enqueue`] inside the transaction that changes its state,
//!    so the event exists exactly when the change does.
//! 2. The [`outbox::Relay`] publishes unpublished rows to the topic exchange
//!    `finflow.events` with publisher confirms and marks them published. RabbitMQ being
//!    down delays events; it never loses them. A crash between confirm and mark publishes
//!    a row twice, which is why step 3 dedupes.
//! 3. A [`consumer`] runs the handler and records the event id in `processed_events` in one
//!    transaction, and ACKs only after that commits: a redelivered message changes nothing.
//!    Transient failures retry with backoff; poison messages and exhausted retries are
//!    rejected into the dead-letter exchange `finflow.dlx` and land in `<queue>.dead`.

pub mod consumer;
pub mod depth;
pub mod outbox;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The topic exchange every event is published to, with its type as routing key.
pub const EVENTS_EXCHANGE: &str = "finflow.events";
/// Where rejected messages go; each queue's dead letters route by the queue's name.
pub const DEAD_LETTER_EXCHANGE: &str = "finflow.dlx";
/// Suffix of the queue holding a queue's dead letters.
pub const DEAD_QUEUE_SUFFIX: &str = ".dead";

/// The event types of the contract.
pub use finflow_contracts::events as types;

/// The event envelope: `{"id", "type", "version", "occurred_at", "source", "data"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub version: u32,
    pub occurred_at: DateTime<Utc>,
    pub source: String,
    pub data: serde_json::Value,
}

impl Event {
    /// A new version-1 event with a fresh time-ordered id.
    pub fn new(
        source: &str,
        event_type: &str,
        data: &impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            id: Uuid::now_v7(),
            event_type: event_type.to_owned(),
            version: 1,
            occurred_at: Utc::now(),
            source: source.to_owned(),
            data: serde_json::to_value(data)?,
        })
    }

    /// The payload as a typed value.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.data.clone())
    }
}

/// The most events a relay puts in one message: a run of consecutive events of one type
/// travels as a bundle, a JSON array of envelopes (see [`Publisher::bundled`]).
pub const BUNDLE_MAX: usize = 64;

/// The header of a message that carries a bundle: how many events are in it.
pub const BUNDLE_HEADER: &str = "x-finflow-events";

/// Why a message body carries no event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not an event envelope or a bundle of them: {0}")]
    Json(#[from] serde_json::Error),
    #[error("an empty bundle")]
    Empty,
}

/// The events a message body carries: one envelope, or a bundle of them in order.
pub fn decode(body: &[u8]) -> Result<Vec<Event>, DecodeError> {
    let is_bundle = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[');
    if !is_bundle {
        return Ok(vec![serde_json::from_slice(body)?]);
    }
    let events: Vec<Event> = serde_json::from_slice(body)?;
    if events.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(events)
}

/// Splits `events` into the messages [`Publisher::publish_all`] sends: runs of
/// consecutive events of one type, at most `max` each. Consecutive only, so the
/// messages keep the events' order.
pub fn bundles<T>(events: &[(Event, T)], max: usize) -> Vec<&[(Event, T)]> {
    events
        .chunk_by(|(a, _), (b, _)| a.event_type == b.event_type)
        .flat_map(|run| run.chunks(max.max(1)))
        .collect()
}

/// The AMQP properties of a message carrying `event` (the first of a bundle).
pub fn properties(event: &Event, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(event.id.to_string()))
        .with_type(ShortString::from(event.event_type.as_str()))
        .with_app_id(ShortString::from(event.source.as_str()))
        .with_timestamp(u64::try_from(event.occurred_at.timestamp()).unwrap_or(0))
        .with_headers(headers)
}

impl crate::config::AmqpConfig {
    /// The broker of `AMQP_URL`, trusting the CAs of `AMQP_CA_FILE` (read here, once).
    pub fn broker(&self) -> Result<Broker, String> {
        let broker = Broker::new(self.amqp_url.clone());
        match &self.amqp_ca_file {
            None => Ok(broker),
            Some(path) => Ok(broker.trusting(&crate::client::pem_file("AMQP_CA_FILE", path)?)),
        }
    }
}

/// The broker and how to trust it: `AMQP_URL`, and for `amqps://` the system's roots
/// and the CAs of `AMQP_CA_FILE`. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    url: SecretString,
    ca_pem: Option<Arc<str>>,
}

impl From<SecretString> for Broker {
    fn from(url: SecretString) -> Self {
        Self::new(url)
    }
}

impl Broker {
    /// The broker at `url`, trusted (over `amqps://`) by the system's roots.
    pub fn new(url: SecretString) -> Self {
        Self { url, ca_pem: None }
    }

    /// Trusts the CAs of `ca_pem` (PEM certificates) beside the system's roots.
    pub fn trusting(self, ca_pem: &str) -> Self {
        Self {
            ca_pem: Some(ca_pem.into()),
            ..self
        }
    }

    /// Opens a connection named `name` (visible in RabbitMQ's tooling).
    pub async fn connect(&self, name: &str) -> lapin::Result<Connection> {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: self.ca_pem.as_deref().map(str::to_owned),
        };
        Connection::connect_with_config(
            self.url.expose_secret(),
            props,
            tls,
            lapin::runtime::default_runtime()?,
        )
        .await
    }
}

#[cfg(feature = "testing")]
/// The RabbitMQ tests use: `FINFLOW_AMQP_URL`, else the default local broker.
pub fn test_url() -> SecretString {
    std::env::var("FINFLOW_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
        .into()
}

#[cfg(feature = "testing")]
/// A RabbitMQ vhost of its own for one test (or one test platform), deleted on drop.
///
/// Queues are named `<consumer>.<purpose>` and exchanges are fixed by the contract, so
/// two instances of a service on one vhost share their queues and see each other's
/// events. A vhost per test keeps tests that run in parallel apart.
pub struct TestVhost {
    name: String,
    pub url: SecretString,
}

#[cfg(feature = "testing")]
impl TestVhost {
    /// Creates `finflow_test_<uuid>` through `dev/backing-services vhost add`, on the
    /// broker of [`test_url`].
    pub fn new() -> Self {
        let name = format!("finflow_test_{}", Uuid::new_v4().simple());
        Self::named(&name)
    }

    /// The broker at this vhost.
    pub fn broker(&self) -> Broker {
        Broker::new(self.url.clone())
    }

    /// Creates the vhost `name` (idempotent).
    pub fn named(name: &str) -> Self {
        let status = std::process::Command::new(backing_script())
            .args(["vhost", "add", name])
            .env("FINFLOW_AMQP_URL", test_url().expose_secret())
            .status()
            .unwrap_or_else(|e| panic!("cannot run dev/backing-services: {e}"));
        assert!(
            status.success(),
            "could not create the RabbitMQ vhost {name}"
        );
        let base = test_url();
        let base = base.expose_secret();
        let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
        Self {
            name: name.to_owned(),
            url: format!("{server}/{name}").into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(feature = "testing")]
impl Default for TestVhost {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "testing")]
impl Drop for TestVhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new(backing_script())
            .args(["vhost", "delete", &self.name])
            .env("FINFLOW_AMQP_URL", test_url().expose_secret())
            .status();
    }
}

#[cfg(feature = "testing")]
fn backing_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dev/backing-services")
}

/// Declares the two exchanges. Idempotent: every producer and consumer calls it.
pub async fn declare_exchanges(channel: &Channel) -> lapin::Result<()> {
    for name in [EVENTS_EXCHANGE, DEAD_LETTER_EXCHANGE] {
        channel
            .exchange_declare(
                name.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// A consumer's durable queue: `<consumer>.<purpose>`, bound to event types (topic patterns).
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    pub bindings: Vec<String>,
}

impl QueueSpec {
    pub fn new(name: impl Into<String>, bindings: &[&str]) -> Self {
        Self {
            name: name.into(),
            bindings: bindings.iter().map(|b| (*b).to_owned()).collect(),
        }
    }

    /// The queue holding this queue's dead letters.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}{DEAD_QUEUE_SUFFIX}", self.name)
    }
}

/// Declares the queue, its dead-letter queue and its bindings.
///
/// Quorum queues: durable, replicated when RabbitMQ is clustered, and their delivery
/// limit dead-letters a message that keeps killing its consumer, which no in-process
/// retry count can catch.
pub async fn declare_queue(channel: &Channel, spec: &QueueSpec) -> lapin::Result<()> {
    declare_exchanges(channel).await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let dead = spec.dead_letter_queue();
    channel
        .queue_declare(dead.as_str().into(), durable, quorum_args())
        .await?;
    channel
        .queue_bind(
            dead.as_str().into(),
            DEAD_LETTER_EXCHANGE.into(),
            spec.name.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut args = quorum_args();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(spec.name.as_str().into()),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(20));
    channel
        .queue_declare(spec.name.as_str().into(), durable, args)
        .await?;
    for key in &spec.bindings {
        channel
            .queue_bind(
                spec.name.as_str().into(),
                EVENTS_EXCHANGE.into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the event could not be serialized: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("the broker did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("no queue is bound to receive the message")]
    Unroutable,
}

/// Publishes events with publisher confirms on one channel.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    bundle_max: usize,
}

/// How long a publish waits for the broker's confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

impl Publisher {
    /// Opens a confirm-mode channel and declares the exchanges. Each event is a message
    /// of its own unless [`Publisher::bundled`].
    pub async fn new(connection: &Connection) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        declare_exchanges(&channel).await?;
        Ok(Self {
            channel,
            bundle_max: 1,
        })
    }

    /// Publishes runs of consecutive events of one type as bundles of up to `max`
    /// events: one message, one routing and one delivery per queue for the run, where
    /// each event was all of that. The first event's trace context is the message's.
    pub fn bundled(mut self, max: usize) -> Self {
        self.bundle_max = max.max(1);
        self
    }

    /// Publishes events and waits until the broker has confirmed every one of them.
    /// `headers` carries each event's trace context.
    pub async fn publish_all(&self, events: &[(Event, FieldTable)]) -> Result<(), PublishError> {
        let mut confirms = Vec::with_capacity(events.len());
        for bundle in bundles(events, self.bundle_max) {
            let Some((first, headers)) = bundle.first() else {
                continue;
            };
            let (payload, headers) = if bundle.len() == 1 {
                (serde_json::to_vec(first)?, headers.clone())
            } else {
                let events: Vec<&Event> = bundle.iter().map(|(e, _)| e).collect();
                let mut headers = headers.clone();
                headers.insert(
                    BUNDLE_HEADER.into(),
                    AMQPValue::LongUInt(u32::try_from(bundle.len()).unwrap_or(u32::MAX)),
                );
                (serde_json::to_vec(&events)?, headers)
            };
            let confirm = self
                .channel
                .basic_publish(
                    EVENTS_EXCHANGE.into(),
                    first.event_type.as_str().into(),
                    BasicPublishOptions::default(),
                    &payload,
                    properties(first, headers),
                )
                .await?;
            confirms.push(confirm);
        }
        await_confirms(confirms).await
    }

    /// Publishes one event and waits for its confirm.
    pub async fn publish(&self, event: &Event, headers: FieldTable) -> Result<(), PublishError> {
        self.publish_all(&[(event.clone(), headers)]).await
    }

    /// Dead-letters `event` alone from `queue`, as RabbitMQ would a rejected message:
    /// to the dead-letter exchange with the queue's name as routing key, so it lands in
    /// `<queue>.dead`. Mandatory: a dead-letter queue that is not there is an error, not
    /// a message the broker confirms and drops.
    pub async fn dead_letter(
        &self,
        queue: &str,
        event: &Event,
        headers: FieldTable,
    ) -> Result<(), PublishError> {
        let confirm = self
            .channel
            .basic_publish(
                DEAD_LETTER_EXCHANGE.into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &serde_json::to_vec(event)?,
                properties(event, headers),
            )
            .await?;
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| PublishError::Timeout(CONFIRM_TIMEOUT))??;
        if confirmation.is_nack() {
            return Err(PublishError::Nacked);
        }
        if confirmation.take_message().is_some() {
            return Err(PublishError::Unroutable);
        }
        Ok(())
    }
}

async fn await_confirms(confirms: Vec<lapin::PublisherConfirm>) -> Result<(), PublishError> {
    for confirm in confirms {
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| PublishError::Timeout(CONFIRM_TIMEOUT))??;
        if confirmation.is_nack() {
            return Err(PublishError::Nacked);
        }
    }
    Ok(())
}

/// Exponential backoff with full jitter, capped: `attempt` 0 waits up to `base`.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(2_u32.saturating_pow(attempt.min(16)));
    let ceiling = exp.min(cap);
    let millis = u64::try_from(ceiling.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(rand::random_range(millis / 2..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_has_the_contract_shape() {
        let event = Event::new(
            "payment",
            types::PAYMENT_COMPLETED,
            &serde_json::json!({"x": 1}),
        )
        .unwrap();
        let value = serde_json::to_value(&event).unwrap();
        for key in ["id", "type", "version", "occurred_at", "source", "data"] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        assert_eq!(value["type"], "payment.completed");
        assert_eq!(value["version"], 1);
    }

    fn typed(t: &str) -> (Event, ()) {
        (Event::new("test", t, &serde_json::json!({})).unwrap(), ())
    }

    #[test]
    fn a_run_of_one_type_is_one_bundle_and_the_order_is_kept() {
        let events: Vec<(Event, ())> = ["a", "a", "b", "a", "a", "a"]
            .into_iter()
            .map(typed)
            .collect();
        let sizes: Vec<usize> = bundles(&events, 64).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [2, 1, 3]);
        let sizes: Vec<usize> = bundles(&events, 2).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [2, 1, 2, 1], "at most the bundle size");
        let flattened: Vec<Uuid> = bundles(&events, 2)
            .into_iter()
            .flatten()
            .map(|(e, _)| e.id)
            .collect();
        let given: Vec<Uuid> = events.iter().map(|(e, _)| e.id).collect();
        assert_eq!(flattened, given);
    }

    #[test]
    fn a_body_is_one_envelope_or_a_bundle_and_nothing_else() {
        let (one, ()) = typed("a");
        let (two, ()) = typed("a");
        assert_eq!(
            decode(&serde_json::to_vec(&one).unwrap()).unwrap(),
            std::slice::from_ref(&one)
        );
        let bundle = serde_json::to_vec(&[&one, &two]).unwrap();
        assert_eq!(decode(&bundle).unwrap(), [one, two]);
        assert!(matches!(decode(b" []"), Err(DecodeError::Empty)));
        assert!(decode(b"[{\"id\": 1}]").is_err());
        assert!(decode(b"not json").is_err());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        assert!(backoff(0, base, cap) <= base);
        assert!(backoff(3, base, cap) >= Duration::from_millis(400));
        for attempt in [10, 20, 1000] {
            let d = backoff(attempt, base, cap);
            assert!(d <= cap && d >= cap / 2, "{d:?}");
        }
    }
}
