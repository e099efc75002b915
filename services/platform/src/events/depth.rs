//! Queue depths as RabbitMQ reports them: what waits in a queue and who consumes it.
//!
//! Read with passive declares on a connection of its own, every few seconds, so a
//! dashboard or a gauge reads the latest figures without asking the broker per request.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// One queue's figures at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QueueDepth {
    pub queue: String,
    /// Messages ready for delivery (not counting those delivered and not yet ACKed).
    pub messages: u32,
    pub consumers: u32,
}

/// Samples `queues` every `every` until `stop`, handing each round to `sink`. A queue
/// that does not exist (yet) is left out of its round; the broker being unreachable
/// makes an empty round.
pub async fn watch(
    broker: super::Broker,
    connection_name: String,
    queues: Vec<String>,
    every: Duration,
    stop: CancellationToken,
    mut sink: impl FnMut(Vec<QueueDepth>) + Send,
) {
    let mut connection: Option<Connection> = None;
    let mut channel: Option<Channel> = None;
    loop {
        let mut round = Vec::with_capacity(queues.len());
        for queue in &queues {
            if connection.as_ref().is_none_or(|c| !c.status().connected()) {
                channel = None;
                connection = broker.connect(&connection_name).await.ok();
            }
            let Some(live) = connection.as_ref() else {
                break;
            };
            // A failed passive declare (no such queue) closes only the channel: open a
            // new one on the same connection rather than a second connection.
            if channel.as_ref().is_none_or(|ch| !ch.status().connected()) {
                channel = live.create_channel().await.ok();
            }
            let Some(channel) = channel.as_ref() else {
                break;
            };
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            match channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(q) => round.push(QueueDepth {
                    queue: queue.clone(),
                    messages: q.message_count(),
                    consumers: q.consumer_count(),
                }),
                Err(e) => tracing::debug!(%queue, error = %e, "queue not inspected"),
            }
        }
        sink(round);
        if !crate::service::tick(&stop, every).await {
            return;
        }
    }
}
