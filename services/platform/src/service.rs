//! The shape every FinFlow service binary shares: configuration, start-up, background
//! tasks, serving and an orderly shutdown.
//!
//! A service is a type that implements [`Service`]: its name, its own settings, its
//! migrations and its `run`. Its binary's `main` is [`main`], which parses [`Config`]
//! (the common [`ServiceConfig`] and the service's settings). Its `run` opens its
//! database with [`ServiceConfig::database`], starts its relay and consumers on a
//! [`Background`], builds its router and hands everything to [`serve`], which drains on
//! shutdown and then stops the background tasks.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use clap::{Args, Parser};
use secrecy::SecretString;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{AmqpConfig, DatabaseConfig, HttpConfig, TelemetryConfig, Validate};
use crate::events::consumer::{self, ConsumerSpec, Handler};
use crate::events::outbox::Relay;
use crate::health::{self, Health, HealthBuilder};
use crate::http::ShutdownSignal;

/// What every service is configured with.
#[derive(Debug, Clone, Args)]
pub struct ServiceConfig {
    #[command(flatten)]
    pub http: HttpConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub amqp: AmqpConfig,
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
    /// Seconds `/ready` reports 503 before the server stops, so load balancers notice.
    #[arg(long, env = "SHUTDOWN_DRAIN_SECS", default_value_t = 0)]
    pub shutdown_drain_secs: u64,
}

impl Validate for ServiceConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        self.http.validate(errors);
        self.database.validate(errors);
        self.amqp.validate(errors);
        self.telemetry.validate(errors);
    }
}

/// A service's whole configuration: what every service is configured with, and the
/// service's own settings.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct Config<S: Args> {
    #[command(flatten)]
    pub service: ServiceConfig,
    #[command(flatten)]
    pub settings: S,
}

impl<S: Args + Validate> Validate for Config<S> {
    fn validate(&self, errors: &mut Vec<String>) {
        self.service.validate(errors);
        self.settings.validate(errors);
    }
}

/// One FinFlow service, as [`main`] and the test harness start it.
pub trait Service: 'static {
    /// Its name in events, logs and traces; its binary is `finflow-<NAME>`.
    const NAME: &'static str;
    /// What `--help` says it is.
    const ABOUT: &'static str;
    /// Its migrations, applied after the platform's.
    const MIGRATIONS: &'static Migrator;
    /// Its settings beyond [`ServiceConfig`].
    type Settings: Args + Validate + Clone + std::fmt::Debug + Send + Sync + 'static;
    /// Runs it on `listener` until `shutdown` resolves.
    fn run(
        config: Config<Self::Settings>,
        listener: TcpListener,
        shutdown: ShutdownSignal,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

impl ServiceConfig {
    /// Creates the database if asked, connects, and applies the platform's and the
    /// service's migrations.
    pub async fn database(&self, migrations: &Migrator) -> anyhow::Result<PgPool> {
        if self.database.database_create {
            crate::db::ensure_database(&self.database.database_url).await?;
        }
        let pool = crate::db::connect(
            &self.database.database_url,
            self.database.database_max_connections,
        )
        .await?;
        crate::db::migrate(&pool, Some(migrations)).await?;
        Ok(pool)
    }

    /// Health with the dependencies every service has (its database and RabbitMQ), and
    /// the schema its `migrations` and the platform's make.
    pub fn health(
        &self,
        service: &'static str,
        version: &'static str,
        pool: &PgPool,
        migrations: &Migrator,
    ) -> HealthBuilder {
        Health::builder(service, version)
            .schema(crate::db::SchemaReport::of(&[
                &crate::db::PLATFORM_MIGRATIONS,
                migrations,
            ]))
            .critical("database", health::Postgres(pool.clone()))
            .critical(
                "rabbitmq",
                health::RabbitMq::new(self.amqp.amqp_url.clone()),
            )
    }

    /// A consumer spec with this service's prefetch.
    pub fn consumer(&self, queue: crate::events::QueueSpec) -> ConsumerSpec {
        let mut spec = ConsumerSpec::new(queue);
        spec.prefetch = self.amqp.amqp_prefetch;
        spec
    }
}

/// The service's background tasks (outbox relay, consumers, sweepers), stopped together
/// after the server has drained.
pub struct Background {
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Default for Background {
    fn default() -> Self {
        Self::new()
    }
}

impl Background {
    pub fn new() -> Self {
        Self {
            stop: CancellationToken::new(),
            tasks: JoinSet::new(),
        }
    }

    /// The token tasks watch to stop.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs a task until shutdown; it must return once the stop token is cancelled.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Publishes the service's outbox.
    pub fn relay(&mut self, pool: &PgPool, amqp: &crate::config::AmqpConfig, service: &str) {
        let mut relay = Relay::new(pool.clone(), amqp.amqp_url.clone(), service);
        relay.bundle_max = usize::from(amqp.event_bundle_max);
        self.tasks.spawn(relay.run(self.stop.clone()));
    }

    /// Consumes a queue with `handler`.
    pub fn consume<H: Handler>(
        &mut self,
        pool: &PgPool,
        amqp_url: &SecretString,
        spec: ConsumerSpec,
        handler: H,
    ) {
        self.tasks.spawn(consumer::run(
            pool.clone(),
            amqp_url.clone(),
            spec,
            Arc::new(handler),
            self.stop.clone(),
        ));
    }

    async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Serves `api` with the platform routes until `shutdown`, drains, then stops `background`.
pub async fn serve(
    config: &ServiceConfig,
    listener: TcpListener,
    api: Router,
    health: Health,
    openapi: utoipa::openapi::OpenApi,
    background: Background,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = crate::http::router(api, health.clone(), openapi, config.http.max_body_bytes);
    let drain = Duration::from_secs(config.shutdown_drain_secs);
    tracing::info!(addr = %listener.local_addr()?, "listening");
    crate::http::serve(listener, app, async move {
        shutdown.await;
        health.stop_serving();
        tokio::time::sleep(drain).await;
    })
    .await?;
    background.shutdown().await;
    Ok(())
}

/// A service's `main`: parse and validate configuration (every error at once), set up
/// telemetry, bind, and run until SIGTERM or Ctrl-C.
pub fn main<S: Service>() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(start::<S>())
}

async fn start<S: Service>() -> anyhow::Result<()> {
    let config: Config<S::Settings> =
        crate::config::load_as(format!("finflow-{}", S::NAME), S::ABOUT);
    let _telemetry = crate::telemetry::init(S::NAME, &config.service.telemetry)
        .map_err(anyhow::Error::from_boxed)?;
    let listener = TcpListener::bind(config.service.http.listen).await?;
    S::run(config, listener, Box::pin(crate::http::shutdown_signal())).await
}
