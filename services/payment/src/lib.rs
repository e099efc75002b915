//! Service C, payment: idempotent payments applied exactly once through RabbitMQ.
//!
//! The model:
//! - `POST /api/v1/payments/{transfer,deposit,withdrawal}` needs an `Idempotency-Key`.
//!   Redis answers duplicates at the door ([`idempotency`]); the payments table's unique
//!   key is the ground truth. The request is checked against B at once (ownership,
//!   status, currency, funds, tier limits), then the payment is stored `PENDING` with a
//!   `payment.requested` event in one transaction, and the client gets 202 (or, with
//!   `Prefer: wait=N`, the terminal state if it comes in time).
//! - Payments above the AML threshold are stored `ON_HOLD` (`payment.on_hold`) until
//!   `aml.cleared` / `aml.flagged` (or a `compliance` release).
//! - The [`worker`] consumes `payment.requested` and asks B to apply the payment id as a
//!   transfer id, which B does at most once; the outcome and its event commit together
//!   and the message is ACKed after. See [`worker`] for why this is exactly once.
//! - A completed payment is reversed by two operators: one asks, another makes it
//!   ([`reversal`]).
//! - The [`sweeper`] republishes payments stuck in `PENDING` and settles expired ones
//!   through B's void, so every payment ends terminal and none is applied twice.
//!
//! One binary, three roles (`ROLE`): `api`, `worker` (consumers and sweeper) or `all`.

pub mod api;
pub mod idempotency;
pub mod model;
pub mod reversal;
pub mod settle;
pub mod sweeper;
pub mod waiters;
pub mod wallets;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use finflow_contracts::catalog::{self, ServiceInfo};
use finflow_platform::client::ServiceClient;
use finflow_platform::config::{ClientConfig, HttpUrl, Quiet, RedisConfig, Validate};
use finflow_platform::fx::FxConfig;
use finflow_platform::health::{self};
use finflow_platform::service::{Api, Service, Start};
use finflow_platform::{Amount, events};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

/// Service C's migrations (`migrations/payment`).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/payment");

/// Service C: what `finflow-payment` runs ([`Service`], below).
pub struct Payment;

/// What this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// The HTTP API and the outbox relay.
    Api,
    /// The consumers (payment requests; AML decisions drained), the sweeper and the relay; it
    /// still serves `/health`, `/ready` and `/metrics`.
    Worker,
    /// Everything in one process.
    All,
}

/// Service C's own settings, beside what every service is configured with.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub redis: RedisConfig,
    /// What this process runs.
    #[arg(long, env = "ROLE", value_enum, default_value_t = Role::All)]
    pub role: Role,
    /// Base URL of service B (its sidecar).
    #[arg(long, env = "WALLET_URL", value_parser = Quiet(HttpUrl::parse))]
    pub wallet_url: HttpUrl,
    /// A (for service tokens) and this service's credentials there.
    #[command(flatten)]
    pub client: ClientConfig,
    /// Payments worth more than this in the reference currency go ON_HOLD for an AML
    /// decision.
    #[arg(long, env = "AML_HOLD_THRESHOLD", default_value = "10000")]
    pub aml_hold_threshold: Amount,
    #[command(flatten)]
    pub fx: FxConfig,
    /// Consumers of the payment queue in this process (each with its own channel). Each
    /// sends what it holds (up to `AMQP_PREFETCH`) to B as one batch: a few consumers
    /// with full batches cost less than many with a payment or two each, and payments
    /// from the same wallets serialize at B whatever the number.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 2)]
    pub worker_concurrency: u16,
    /// A PENDING payment unchanged this long gets a new `payment.requested`, in seconds.
    #[arg(long, env = "SWEEP_REPUBLISH_AFTER_SECS", default_value_t = 30)]
    pub sweep_republish_after_secs: u64,
    /// A payment PENDING this long is settled (voided at B and FAILED), in seconds.
    #[arg(long, env = "SWEEP_FAIL_AFTER_SECS", default_value_t = 900)]
    pub sweep_fail_after_secs: u64,
    /// Seconds between sweeps; at least 1 (at 0 every replica swept without a pause,
    /// counting the whole table each time).
    #[arg(long, env = "SWEEP_INTERVAL_SECS", default_value = "5")]
    pub sweep_interval_secs: std::num::NonZeroU64,
    /// Longest `Prefer: wait=N` honoured, in seconds.
    #[arg(long, env = "MAX_PREFER_WAIT_SECS", default_value_t = 30)]
    pub max_prefer_wait_secs: u64,
    /// Requests that may wait (`Prefer: wait`) at once; more are answered at once.
    #[arg(long, env = "MAX_PREFER_WAITERS", default_value_t = 512)]
    pub max_prefer_waiters: usize,
}

impl Validate for Settings {
    fn validate(&self, errors: &mut Vec<String>) {
        self.redis.validate(errors);
        self.fx.validate(errors);
        if !self.aml_hold_threshold.is_positive() {
            errors.push("AML_HOLD_THRESHOLD must be a positive amount".to_owned());
        }
        if self.sweep_fail_after_secs <= self.sweep_republish_after_secs {
            errors.push("SWEEP_FAIL_AFTER_SECS must exceed SWEEP_REPUBLISH_AFTER_SECS".to_owned());
        }
        if self.worker_concurrency == 0 {
            errors.push("WORKER_CONCURRENCY must be at least 1".to_owned());
        }
    }
}

impl Service for Payment {
    const INFO: &'static ServiceInfo = &catalog::PAYMENT;
    const MIGRATIONS: &'static Migrator = &MIGRATIONS;
    type Settings = Settings;

    /// Starts service C in its role: the worker's consumers, sweeper and queue depth
    /// gauge, and the payments' API.
    async fn start(config: &Settings, start: &mut Start) -> anyhow::Result<Api> {
        let redis = config.redis.connect().await?;
        let http = ServiceClient::http_client();
        let tokens = config.client.tokens(Self::INFO.name, http.clone());
        let wallets = wallets::Wallets::new(ServiceClient::new(
            "wallet",
            &config.wallet_url,
            tokens,
            http,
        ));

        start.relay();
        if config.role != Role::Api {
            for _ in 0..config.worker_concurrency {
                let worker = worker::PaymentWorker {
                    wallets: wallets.clone(),
                };
                // A client waiting for its payment (`Prefer: wait`) waits on this.
                start.consume_at_once(worker::requests_queue(), worker);
            }
            start.consume(worker::aml_queue(), worker::AmlDecisions);
            let sweeper = sweeper::Sweeper {
                pool: start.pool.clone(),
                wallets: wallets.clone(),
                republish_after: Duration::from_secs(config.sweep_republish_after_secs),
                fail_after: Duration::from_secs(config.sweep_fail_after_secs),
                interval: Duration::from_secs(config.sweep_interval_secs.get()),
            };
            start.spawn(sweeper.run(start.stop_token()));
            start.spawn(watch_queue_depth(start.broker(), start.stop_token()));
        }
        let rates = config.fx.rates().map_err(anyhow::Error::msg)?;
        start.critical("redis", health::Redis(redis.clone()));
        start.optional("wallet", health::Upstream::new(&config.wallet_url));
        // A worker serves no API, so its document lists no operation.
        let mut served = if config.role == Role::Worker {
            Api::new(axum::Router::new(), api::ApiDoc::openapi())
        } else {
            let waiters = waiters::Waiters::new(config.max_prefer_waiters);
            start.spawn(
                waiters
                    .clone()
                    .listen(start.pool.clone(), start.stop_token()),
            );
            let state = api::AppState {
                pool: start.pool.clone(),
                keys: idempotency::Keys::new(redis),
                wallets,
                settings: Arc::new(api::Settings {
                    aml_hold_threshold: config.aml_hold_threshold,
                    rates: rates.clone(),
                    max_wait: Duration::from_secs(config.max_prefer_wait_secs),
                    duplicate_wait: Duration::from_secs(5),
                }),
                waiters,
            };
            Api::of(api::routes(), state)
        };
        rates.document(&mut served.openapi);
        tracing::info!(role = ?config.role, "payment starting");
        Ok(served)
    }
}

/// Publishes the work queue's depth as `finflow_payment_queue_depth`: how many payments
/// wait for the worker, the figure that shows whether it keeps up.
async fn watch_queue_depth(broker: events::Broker, stop: CancellationToken) {
    events::depth::watch(
        broker,
        "payment-queue-depth".to_owned(),
        vec![worker::requests_queue().name],
        Duration::from_secs(5),
        stop,
        |round| {
            if let Some(depth) = round.first() {
                metrics::gauge!("finflow_payment_queue_depth").set(f64::from(depth.messages));
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use finflow_platform::config::LoadError;
    use finflow_platform::testing;

    #[test]
    fn a_sweep_interval_of_zero_is_refused_at_start() {
        let with_interval = |secs: &str| {
            testing::load::<super::Payment>(&[
                "--wallet-url=http://127.0.0.1:9",
                "--auth-url=http://127.0.0.1:9",
                "--service-client-secret=payment-secret-for-tests",
                "--redis-url=redis://127.0.0.1:9",
                &format!("--sweep-interval-secs={secs}"),
            ])
        };
        let config = with_interval("1").unwrap();
        assert_eq!(config.settings.sweep_interval_secs.get(), 1);
        let Err(LoadError::Clap(e)) = with_interval("0") else {
            panic!("SWEEP_INTERVAL_SECS=0 was accepted: every replica would sweep without a pause");
        };
        assert!(e.to_string().contains("sweep-interval-secs"), "{e}");
    }
}
