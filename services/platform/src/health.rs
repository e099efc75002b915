//! `/health` and `/ready`: each dependency's status and latency, and an overall status.
//!
//! `/health` answers 200 when every *critical* dependency is up ("up", or "degraded"
//! when only non-critical ones are down) and 503 when a critical one is down ("down").
//! `/ready` answers 200 only while the process is serving and its critical
//! dependencies answer, and 503 from the moment shutdown starts, so Kubernetes takes
//! the pod out of its Service before connections are closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
#[cfg(feature = "events")]
use tokio::sync::Mutex;
use utoipa::ToSchema;

/// The schema a build expects, as its `/health` reports it: its newest embedded
/// migration, and the embedded ones marked [`INCOMPATIBLE_MARKER`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SchemaReport {
    /// The newest migration's version.
    pub version: i64,
    /// The migrations the release before each of them cannot run against, oldest first.
    pub incompatible: Vec<MigrationRef>,
}

/// A migration by version and description.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct MigrationRef {
    pub version: i64,
    pub description: String,
}

/// How long one dependency check may take before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// One dependency that `/health` reports on.
pub trait Check: Send + Sync + 'static {
    /// Probes the dependency; the error text is shown in `/health`, so it must not
    /// contain secrets.
    fn probe(&self) -> CheckFuture<'_>;
}

/// `SELECT 1` on the pool.
#[cfg(feature = "db")]
pub struct Postgres(pub sqlx::PgPool);

#[cfg(feature = "db")]
impl Check for Postgres {
    fn probe(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&self.0)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}

/// `PING` on the shared connection.
#[cfg(feature = "cache")]
pub struct Redis(pub redis::aio::ConnectionManager);

#[cfg(feature = "cache")]
impl Check for Redis {
    fn probe(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let mut conn = self.0.clone();
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}

/// A kept-open connection to RabbitMQ, reopened when it drops.
#[cfg(feature = "events")]
pub struct RabbitMq {
    broker: crate::events::Broker,
    connection: Mutex<Option<lapin::Connection>>,
}

#[cfg(feature = "events")]
impl RabbitMq {
    pub fn new(broker: impl Into<crate::events::Broker>) -> Self {
        Self {
            broker: broker.into(),
            connection: Mutex::new(None),
        }
    }
}

#[cfg(feature = "events")]
impl Check for RabbitMq {
    fn probe(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let mut slot = self.connection.lock().await;
            if let Some(conn) = slot.as_ref()
                && conn.status().connected()
            {
                return Ok(());
            }
            *slot = None;
            let conn = self
                .broker
                .connect("health")
                .await
                .map_err(|e| e.to_string())?;
            *slot = Some(conn);
            Ok(())
        })
    }
}

/// Another service's `/health` (an upstream a service calls).
pub struct Upstream {
    url: String,
    client: reqwest::Client,
}

impl Upstream {
    /// `base` is the service's base URL; `/health` is appended.
    pub fn new(base: &str) -> Self {
        Self {
            url: format!("{}/health", base.trim_end_matches('/')),
            client: crate::client::default_client(),
        }
    }
}

impl Check for Upstream {
    fn probe(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let response = self
                .client
                .get(&self.url)
                .send()
                .await
                .map_err(|e| format!("unreachable: {}", e.without_url()))?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(format!("answered {}", response.status()))
            }
        })
    }
}

struct Entry {
    name: String,
    critical: bool,
    check: Box<dyn Check>,
}

/// The dependency checks of one service and its serving state.
#[derive(Clone)]
pub struct Health {
    service: &'static str,
    version: &'static str,
    schema: Option<Arc<SchemaReport>>,
    checks: Arc<Vec<Entry>>,
    serving: Arc<AtomicBool>,
}

/// Status of one dependency or of the whole service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = HealthStatus)]
pub enum Status {
    Up,
    Degraded,
    Down,
}

/// One dependency's result.
#[derive(Debug, Serialize, ToSchema)]
pub struct DependencyReport {
    pub name: String,
    pub status: Status,
    pub critical: bool,
    /// Time the probe took, in milliseconds.
    pub latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The body of `/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthReport {
    pub service: String,
    pub version: String,
    pub status: Status,
    pub dependencies: Vec<DependencyReport>,
    /// The schema this build expects (its embedded migrations): what a rollback to it
    /// would run against; absent in processes without a database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<SchemaReport>,
}

/// Collects checks before the service starts.
pub struct HealthBuilder {
    service: &'static str,
    version: &'static str,
    schema: Option<SchemaReport>,
    checks: Vec<Entry>,
}

impl HealthBuilder {
    /// The schema the build expects, reported with every `/health`.
    #[must_use]
    pub fn schema(mut self, schema: Option<SchemaReport>) -> Self {
        self.schema = schema;
        self
    }

    /// A dependency the service cannot work without (its database, its broker).
    #[must_use]
    pub fn critical(mut self, name: &str, check: impl Check) -> Self {
        self.add(name, true, check);
        self
    }

    /// A dependency whose loss degrades the service without stopping it.
    #[must_use]
    pub fn optional(mut self, name: &str, check: impl Check) -> Self {
        self.add(name, false, check);
        self
    }

    pub(crate) fn add(&mut self, name: &str, critical: bool, check: impl Check) {
        self.checks.push(Entry {
            name: name.to_owned(),
            critical,
            check: Box::new(check),
        });
    }

    pub fn build(self) -> Health {
        Health {
            service: self.service,
            version: self.version,
            schema: self.schema.map(Arc::new),
            checks: Arc::new(self.checks),
            serving: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl Health {
    pub fn builder(service: &'static str, version: &'static str) -> HealthBuilder {
        HealthBuilder {
            service,
            version,
            schema: None,
            checks: Vec::new(),
        }
    }

    /// Marks the process as draining: `/ready` answers 503 from now on.
    pub fn stop_serving(&self) {
        self.serving.store(false, Ordering::SeqCst);
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// Probes every dependency concurrently, each with a timeout.
    pub async fn report(&self, only_critical: bool) -> HealthReport {
        let probes = self
            .checks
            .iter()
            .filter(|e| e.critical || !only_critical)
            .map(|entry| async move {
                let started = Instant::now();
                let result = tokio::time::timeout(CHECK_TIMEOUT, entry.check.probe())
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")));
                let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                metrics::gauge!("finflow_dependency_up", "dependency" => entry.name.clone())
                    .set(if result.is_ok() { 1 } else { 0 });
                DependencyReport {
                    name: entry.name.clone(),
                    status: if result.is_ok() {
                        Status::Up
                    } else {
                        Status::Down
                    },
                    critical: entry.critical,
                    latency_ms,
                    error: result.err(),
                }
            });
        let dependencies = futures_util::future::join_all(probes).await;
        let down = |critical: bool| {
            dependencies
                .iter()
                .any(|d| d.critical == critical && d.status == Status::Down)
        };
        let status = if down(true) {
            Status::Down
        } else if down(false) {
            Status::Degraded
        } else {
            Status::Up
        };
        HealthReport {
            service: self.service.to_owned(),
            version: self.version.to_owned(),
            status,
            dependencies,
            schema: self.schema.as_deref().cloned(),
        }
    }
}
