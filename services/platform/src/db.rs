//! PostgreSQL: pools, embedded migrations, and a fresh database per test.
//!
//! Every service database holds two sets of migrations: the platform's own
//! (`migrations/platform/`: the outbox and the consumer dedupe table, versions below
//! 1000) and the service's (`migrations/<service>/`, timestamp versions). Both run with
//! `ignore_missing`, so each set tolerates the other's rows in `_sqlx_migrations`.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
#[cfg(feature = "testing")]
use sqlx::PgConnection;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgPool};

/// The platform's own tables (outbox, processed events), present in every service database.
pub static PLATFORM_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/platform");

/// The line (on its own) that marks a migration the release before it cannot run
/// against: it drops or renames what that release still reads. Once a version carrying
/// it has gone live, rolling back to a release older than it runs that release against
/// a schema it cannot read (`migrations/README.md`).
pub const INCOMPATIBLE_MARKER: &str = "-- finflow: incompatible-with-previous";

pub use crate::health::{MigrationRef, SchemaReport};

impl SchemaReport {
    /// What `migrators` (the platform's and a service's sets) hold; `None` when empty.
    pub fn of(migrators: &[&Migrator]) -> Option<Self> {
        let mut migrations: Vec<_> = migrators
            .iter()
            .flat_map(|m| m.iter())
            .filter(|m| !m.migration_type.is_down_migration())
            .collect();
        migrations.sort_by_key(|m| m.version);
        let version = migrations.last()?.version;
        let incompatible = migrations
            .iter()
            .filter(|m| {
                m.sql
                    .as_str()
                    .lines()
                    .any(|l| l.trim() == INCOMPATIBLE_MARKER)
            })
            .map(|m| MigrationRef {
                version: m.version,
                description: m.description.to_string(),
            })
            .collect();
        Some(Self {
            version,
            incompatible,
        })
    }
}

/// How long a request waits for a pooled connection before the database counts as down.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a pool and proves the server answers, so a wrong URL fails at start, not at
/// the first request.
pub async fn connect(url: &SecretString, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.expose_secret().parse()?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options.application_name(&application_name()))
        .await
}

fn application_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "finflow".to_owned())
}

/// Applies the platform migrations, then the service's own.
pub async fn migrate(
    pool: &PgPool,
    service: Option<&Migrator>,
) -> Result<(), sqlx::migrate::MigrateError> {
    for migrator in std::iter::once(&PLATFORM_MIGRATIONS).chain(service) {
        let tolerant = Migrator {
            migrations: migrator.migrations.clone(),
            ignore_missing: true,
            ..Migrator::DEFAULT
        };
        tolerant.run(pool).await?;
    }
    Ok(())
}

/// Creates the database named in `url` if it does not exist (local runs: one server,
/// one database per service). Connects to the server's `postgres` database to do so.
pub async fn ensure_database(url: &SecretString) -> Result<(), sqlx::Error> {
    let options: PgConnectOptions = url.expose_secret().parse()?;
    let name = options
        .get_database()
        .ok_or_else(|| sqlx::Error::Configuration("the database URL names no database".into()))?
        .to_owned();
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE {}", quote_ident(&name));
        match sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await {
            Ok(_) => {}
            // Two services racing to create the same database: the loser is fine.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e),
        }
    }
    admin.close().await
}

/// Quotes an identifier for DDL, which cannot take bind parameters.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(feature = "testing")]
/// The server tests create their databases on: `FINFLOW_POSTGRES_URL`, else the
/// default local server. `dev/backing-services` exports the URL of whichever server it
/// found or started. (Not `DATABASE_URL`: that names one service's database.)
pub fn test_server_url() -> String {
    std::env::var("FINFLOW_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

#[cfg(feature = "testing")]
/// A freshly created and migrated database that is dropped when the value is dropped.
///
/// Each test gets its own, so tests run in parallel without seeing each other's rows.
pub struct TestDb {
    pub pool: PgPool,
    name: String,
    server: PgConnectOptions,
}

#[cfg(feature = "testing")]
impl TestDb {
    /// Creates `finflow_test_<uuid>` and applies the platform migrations and `service`'s.
    pub async fn new(service: Option<&Migrator>) -> Self {
        let server: PgConnectOptions = test_server_url()
            .parse()
            .expect("the test database URL is not a PostgreSQL URL");
        let name = format!("finflow_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = server
            .clone()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL server: {e}"));
        sqlx::query(AssertSqlSafe(format!(
            "CREATE DATABASE {}",
            quote_ident(&name)
        )))
        .execute(&mut admin)
        .await
        .expect("create the test database");
        admin.close().await.ok();
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(server.clone().database(&name))
            .await
            .expect("connect to the test database");
        migrate(&pool, service)
            .await
            .expect("migrate the test database");
        Self { pool, name, server }
    }

    /// Connection options for the test database, for code that opens its own connections.
    pub fn options(&self) -> PgConnectOptions {
        self.server.clone().database(&self.name)
    }

    /// The test database's URL, for a service under test that parses its own config.
    pub fn url(&self) -> String {
        self.options().to_url_lossy().to_string()
    }
}

#[cfg(feature = "testing")]
impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be awaited here; a short-lived
        // thread with its own runtime drops the database (FORCE ends the pool's sessions)
        // and is joined so nothing leaks.
        let server = self.server.clone();
        let name = std::mem::take(&mut self.name);
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let mut admin = PgConnection::connect_with(&server).await.ok()?;
                let sql = format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&name)
                );
                sqlx::query(AssertSqlSafe(sql))
                    .execute(&mut admin)
                    .await
                    .ok()?;
                admin.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: a test database was left behind");
        }
    }
}

/// The value `sql` selects (one row, one column), for a test's assertions; panics,
/// naming the query, when it fails.
#[cfg(feature = "testing")]
pub async fn scalar<'e, T>(db: impl sqlx::PgExecutor<'e>, sql: &'static str) -> T
where
    T: Send + Unpin + 'static,
    (T,): for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    sqlx::query_scalar(sql)
        .fetch_one(db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until `n` transactions or more of the test's database wait for a lock (a row's
/// or an advisory one): how a test knows the requests it started reached the lock it
/// holds before it lets them go.
#[cfg(feature = "testing")]
pub async fn until_waiting_for_locks(pool: &sqlx::PgPool, n: i64) {
    loop {
        let waiting: i64 = scalar(
            pool,
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await;
        if waiting >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// [`scalar`] with `arg` as `$1`.
#[cfg(feature = "testing")]
pub async fn scalar_of<'e, T, A>(db: impl sqlx::PgExecutor<'e>, sql: &'static str, arg: A) -> T
where
    T: Send + Unpin + 'static,
    (T,): for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    A: sqlx::Encode<'e, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'e,
{
    sqlx::query_scalar(sql)
        .bind(arg)
        .fetch_one(db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The column `sql` selects with `arg` as `$1`, row by row, for a test's assertions.
#[cfg(feature = "testing")]
pub async fn column_of<'e, T, A>(db: impl sqlx::PgExecutor<'e>, sql: &'static str, arg: A) -> Vec<T>
where
    T: Send + Unpin + 'static,
    (T,): for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    A: sqlx::Encode<'e, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'e,
{
    sqlx::query_scalar(sql)
        .bind(arg)
        .fetch_all(db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}
