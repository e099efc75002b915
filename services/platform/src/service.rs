//! The shape every FinFlow service binary shares: configuration, start-up, background
//! tasks, serving and an orderly shutdown.
//!
//! A service is a type that implements [`Service`]: its name, its own settings, its
//! migrations and its `start`. Its binary's `main` is [`main`], which parses [`Config`]
//! (the common [`ServiceConfig`] and the service's settings) and calls [`run`]: that
//! opens and migrates the database, hands the service a [`Start`] on which it starts its
//! relay, consumers and other tasks and names its dependencies' health checks, serves
//! the [`Api`] it answers with, drains on shutdown and then stops the background tasks.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use clap::{Args, Parser};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;

use finflow_contracts::catalog::ServiceInfo;

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

/// One FinFlow service, as [`main`] and the test harness start it ([`run`]).
pub trait Service: 'static {
    /// Which of the catalog's services it is: its name in events, logs and traces (its
    /// binary is `finflow-<name>`), and what its `--help` and OpenAPI document say.
    const INFO: &'static ServiceInfo;
    /// Its migrations, applied after the platform's.
    const MIGRATIONS: &'static Migrator;
    /// Its settings beyond [`ServiceConfig`].
    type Settings: Args + Validate + Clone + std::fmt::Debug + Send + Sync + 'static;
    /// Starts its background tasks and health checks on `start` (its database is
    /// migrated by then) and answers the API it serves.
    fn start(
        settings: &Self::Settings,
        start: &mut Start,
    ) -> impl Future<Output = anyhow::Result<Api>> + Send;
}

/// A service's route table, `route_table!(ApiDoc: a; b, c; d)`: the
/// `utoipa_axum::router::OpenApiRouter` of its `ApiDoc` with one route a path, each
/// from its handlers' `#[utoipa::path]`s (handlers of one path separated by commas,
/// paths by semicolons), where the path is written, once, so the routes and the
/// OpenAPI document cannot differ. The calling crate depends on `utoipa`,
/// `utoipa-axum` and `axum`, as `utoipa_axum::routes!` needs.
#[macro_export]
macro_rules! route_table {
    ($doc:ty: $($($handler:path),+);+ $(;)?) => {
        ::utoipa_axum::router::OpenApiRouter::with_openapi(<$doc as ::utoipa::OpenApi>::openapi())
            $(.routes(::utoipa_axum::routes!($($handler),+)))+
    };
}

/// What a service serves: its routes and their OpenAPI document.
pub struct Api {
    pub router: Router,
    pub openapi: utoipa::openapi::OpenApi,
}

impl Api {
    pub fn new(router: Router, openapi: utoipa::openapi::OpenApi) -> Self {
        Self { router, openapi }
    }

    /// A service's route table given its state: the routes, and the document their
    /// handlers' `#[utoipa::path]`s make (where each path is written, once).
    pub fn of<S: Clone + Send + Sync + 'static>(routes: OpenApiRouter<S>, state: S) -> Self {
        let (router, openapi) = routes.with_state(state).split_for_parts();
        Self { router, openapi }
    }
}

/// What a service starts from: the common configuration and its migrated database; it
/// adds its background tasks and the health checks of its own dependencies.
pub struct Start {
    name: &'static str,
    /// The configuration every service has.
    pub service: ServiceConfig,
    /// The service's database, migrated.
    pub pool: PgPool,
    broker: crate::events::Broker,
    background: Background,
    health: HealthBuilder,
}

impl Start {
    /// The service's broker (`AMQP_URL`, `AMQP_CA_FILE`).
    pub fn broker(&self) -> crate::events::Broker {
        self.broker.clone()
    }

    /// Publishes the service's outbox.
    pub fn relay(&mut self) {
        let amqp = &self.service.amqp;
        let mut relay = Relay::new(self.pool.clone(), self.broker(), self.name);
        relay.bundle_max = usize::from(amqp.event_bundle_max);
        self.background
            .spawn(relay.run(self.background.stop_token()));
    }

    /// Consumes `queue` with `handler`, at the service's prefetch and batch linger.
    pub fn consume<H: Handler>(&mut self, queue: crate::events::QueueSpec, handler: H) {
        let spec = self.service.consumer(queue);
        self.consume_with(spec, handler);
    }

    /// Consumes `queue` with `handler` without lingering for a batch: for a queue a
    /// client may be waiting on.
    pub fn consume_at_once<H: Handler>(&mut self, queue: crate::events::QueueSpec, handler: H) {
        let mut spec = self.service.consumer(queue);
        spec.linger = Duration::ZERO;
        self.consume_with(spec, handler);
    }

    fn consume_with<H: Handler>(&mut self, spec: ConsumerSpec, handler: H) {
        self.background.spawn(consumer::run(
            self.pool.clone(),
            self.broker(),
            spec,
            Arc::new(handler),
            self.background.stop_token(),
        ));
    }

    /// Runs a task until shutdown; it must return once [`Start::stop_token`] is
    /// cancelled, which happens after the server has drained.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.background.spawn(task);
    }

    /// The token background tasks watch to stop.
    pub fn stop_token(&self) -> CancellationToken {
        self.background.stop_token()
    }

    /// A dependency the service cannot work without, beside its database and broker.
    pub fn critical(&mut self, name: &str, check: impl health::Check) {
        self.health.add(name, true, check);
    }

    /// A dependency whose loss degrades the service without stopping it.
    pub fn optional(&mut self, name: &str, check: impl health::Check) {
        self.health.add(name, false, check);
    }
}

/// Runs `S` on `listener` until `shutdown` resolves: its database migrated, its
/// [`Service::start`], its API served with the platform routes, drained, and its
/// background tasks stopped.
pub async fn run<S: Service>(
    config: Config<S::Settings>,
    listener: TcpListener,
    shutdown: ShutdownSignal,
) -> anyhow::Result<()> {
    let Config { service, settings } = config;
    // The CA file is read before the database is touched: a bad one stops start-up first.
    let broker = service.amqp.broker().map_err(anyhow::Error::msg)?;
    let pool = service.database(S::MIGRATIONS).await?;
    // Every crate of the workspace has its version, so the kit's is the service's.
    let health = service.health(
        S::INFO.name,
        env!("CARGO_PKG_VERSION"),
        &pool,
        &broker,
        S::MIGRATIONS,
    );
    let mut start = Start {
        name: S::INFO.name,
        service,
        pool,
        broker,
        background: Background::new(),
        health,
    };
    let mut api = S::start(&settings, &mut start).await?;
    api.openapi.info.title = S::INFO.title.to_owned();
    api.openapi.info.description = Some(format!("{}.", S::INFO.about));
    let Start {
        service,
        background,
        health,
        ..
    } = start;
    serve(
        &service,
        listener,
        api.router,
        health.build(),
        api.openapi,
        background,
        shutdown,
    )
    .await
}

impl ServiceConfig {
    /// Creates the database if asked, connects, and applies the platform's and the
    /// service's migrations.
    async fn database(&self, migrations: &Migrator) -> anyhow::Result<PgPool> {
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
    fn health(
        &self,
        service: &'static str,
        version: &'static str,
        pool: &PgPool,
        broker: &crate::events::Broker,
        migrations: &Migrator,
    ) -> HealthBuilder {
        Health::builder(service, version)
            .schema(crate::db::SchemaReport::of(&[
                &crate::db::PLATFORM_MIGRATIONS,
                migrations,
            ]))
            .critical("database", health::Postgres(pool.clone()))
            .critical("rabbitmq", health::RabbitMq::new(broker.clone()))
    }

    /// A consumer spec with this service's prefetch.
    fn consumer(&self, queue: crate::events::QueueSpec) -> ConsumerSpec {
        let mut spec = ConsumerSpec::new(queue);
        spec.prefetch = self.amqp.amqp_prefetch;
        spec.linger = Duration::from_millis(self.amqp.amqp_batch_linger_ms);
        spec
    }
}

/// The service's background tasks (outbox relay, consumers, sweepers), stopped together
/// after the server has drained.
struct Background {
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Background {
    fn new() -> Self {
        Self {
            stop: CancellationToken::new(),
            tasks: JoinSet::new(),
        }
    }

    fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Serves `api` with the platform routes until `shutdown`, drains, then stops `background`.
async fn serve(
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
        crate::config::load_as(format!("finflow-{}", S::INFO.name), S::INFO.help());
    let _telemetry = crate::telemetry::init(S::INFO.name, &config.service.telemetry)
        .map_err(anyhow::Error::from_boxed)?;
    let listener = TcpListener::bind(config.service.http.listen).await?;
    run::<S>(config, listener, Box::pin(crate::http::shutdown_signal())).await
}

/// A background loop's wait between rounds: `interval`, or until `stop`; whether to go
/// on (`while tick(&stop, every).await { ... }`).
pub async fn tick(stop: &CancellationToken, interval: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(interval) => true,
    }
}
