//! The FinFlow platform kit: everything a service needs that is not its domain.
//!
//! A service crate holds handlers, domain types and SQL; it gets the rest from here:
//!
//! - [`config`]: clap-derived configuration pieces (HTTP, database, Redis, AMQP,
//!   telemetry), secrets as `SecretString`, every error reported at start.
//! - [`error`] and [`extract`]: one `ApiError` into the JSON envelope (`docs/architecture.md`),
//!   and `Json`/`Path`/`Query` extractors whose rejections are `400 VALIDATION_ERROR`.
//! - [`money`]: `Currency`, `Amount` and `Money` on `rust_decimal`, never a float;
//!   [`fx`]: their reference values, for limits and thresholds across currencies.
//! - [`db`]: pools, embedded migrations (`migrations/platform` plus the service's own),
//!   a fresh database per test.
//! - [`cache`]: the Redis connection manager.
//! - [`client`]: calls to other services with a cached service token.
//! - [`events`]: RabbitMQ topology, publisher confirms, the transactional outbox and its
//!   relay, the consumer runner with dedupe, retries and dead-lettering.
//! - [`email`]: `Email`, validated and normalized; [`text`]: trimmed text within a
//!   length, and the documented schema of a text newtype, stated beside its `parse`.
//! - [`identity`]: the caller as told by the sidecar's headers, and role checks.
//! - [`health`] and [`http`]: `/health`, `/ready`, `/metrics`, `/openapi.json`, request
//!   middleware, `serve` with graceful shutdown.
//! - [`service`]: what a service is ([`service::Service`]) and the shape of its binary:
//!   common config, start-up, background tasks, serving and shutdown.
//! - [`telemetry`]: logs, OpenTelemetry traces (exported when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set), `traceparent` through HTTP and AMQP.
//! - [`testing`]: an SMTP sink for tests and local runs, `TestService`, which starts a
//!   service as its binary does against a fresh database and vhost, and `load`, which
//!   parses a service's configuration as its `main` does.
//!
//! Features keep each binary to what it uses: `db` (sqlx), `events` (lapin; with `db`,
//! and the [`service`] runner), `cache` (redis), `testing` (the test harness: the SMTP
//! sink, a closed port, `db::TestDb`, `events::TestVhost`). All are on by default for
//! this crate's own tests; the services take `db`, `events` and `cache`, the sidecar
//! none, and every crate's tests add `testing`.

#[cfg(feature = "cache")]
pub mod cache;
pub mod client;
pub mod config;
#[cfg(feature = "db")]
pub mod db;
pub mod email;
pub mod error;
#[cfg(feature = "events")]
pub mod events;
pub mod extract;
pub mod fx;
pub mod health;
pub mod http;
pub mod identity;
pub use finflow_contracts::money;
pub mod openapi;
pub mod page;
#[cfg(feature = "events")]
pub mod service;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod text;

pub use email::Email;
pub use error::{ApiError, ApiResult, ErrorCode};
pub use extract::{Json, Path, Query};
pub use identity::{Identity, UserId};
pub use money::{Amount, Currency, Money};
