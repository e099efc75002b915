//! Service F, reporting: read models built from events, reports, and the dashboard.
//!
//! The model:
//! - One queue (`reporting.events`) receives every event F reads: users, KYC decisions,
//!   wallets, payments, AML decisions and B's `ledger.entry_posted`. [`projections`]
//!   fold them into F's own tables; F never reads another service's database. Each
//!   projection is an idempotent, order-tolerant upsert, so replays change nothing.
//! - [`reports`] answers from those tables: transactions for a period (JSON, or CSV),
//!   with the ledger totals per currency and kind that agree with B's ledger; users
//!   (sign-ups, KYC funnel, tier mix); compliance (AML decisions, on-hold volume); a
//!   summary; and a user's own statement, money sent and received (a received transfer
//!   is found through the wallets' owners). Reports need `ops` or `compliance`; the
//!   statement only a signed-in user.
//! - `/dashboard` is a page with its script embedded in the binary: no CDN, it works
//!   offline. It draws volume by day, payments by status, the KYC funnel and the event
//!   pipeline's state as SVG.
//! - `/health` shows every dependency: database, RabbitMQ, and the services whose events
//!   F depends on (the FinFlow seed: "Reporting shows ALL dependencies").

pub mod projections;
pub mod reports;

use clap::Args;
use finflow_platform::config::Validate;
use finflow_platform::health::{self};
use finflow_platform::service::{self, Api, Service, Start};
use sqlx::migrate::Migrator;
use utoipa::OpenApi;

/// The service's name in events, logs and traces.
pub const SERVICE: &str = "reporting";

/// Service F's migrations (`migrations/reporting`).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/reporting");

/// Service F's own settings, beside what every service is configured with.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Base URLs of the services F reports on, shown in `/health` (`name=url`, comma
    /// separated), e.g. `auth=http://127.0.0.1:8001,wallet=http://127.0.0.1:8002`.
    #[arg(long, env = "UPSTREAMS", default_value = "")]
    pub upstreams: String,
    /// The event queues whose depth and consumers the dashboard shows, comma separated;
    /// each one's dead-letter queue is shown beside it.
    #[arg(long, env = "WATCHED_QUEUES", default_value = DEFAULT_WATCHED_QUEUES)]
    pub watched_queues: String,
}

/// Every consumer queue of the platform (each service's `QueueSpec`).
pub const DEFAULT_WATCHED_QUEUES: &str = "auth.kyc-updates,payment.requests,\
payment.aml-decisions,kyc.payment-monitoring,notification.events,reporting.events";

/// How often queue depths are read from RabbitMQ.
const QUEUE_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// `WATCHED_QUEUES` with each queue's dead-letter queue after it.
pub fn watched_queues(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .flat_map(|q| {
            [
                q.to_owned(),
                format!("{q}{}", finflow_platform::events::DEAD_QUEUE_SUFFIX),
            ]
        })
        .collect()
}

/// `UPSTREAMS` into (name, url) pairs.
pub fn upstreams(raw: &str) -> Result<Vec<(String, String)>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, url) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not name=url"))?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("`{url}` is not an http(s) URL"));
            }
            Ok((name.trim().to_owned(), url.trim().to_owned()))
        })
        .collect()
}

impl Validate for Settings {
    fn validate(&self, errors: &mut Vec<String>) {
        if let Err(e) = upstreams(&self.upstreams) {
            errors.push(format!("UPSTREAMS: {e}"));
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "FinFlow reporting (F)",
        description = "Reports from read models, and the dashboard."
    ),
    paths(
        reports::transactions,
        reports::users,
        reports::compliance,
        reports::summary,
        reports::statement
    ),
    components(schemas(reports::ReportFormat))
)]
struct ApiDoc;

/// The whole configuration of service F.
pub type Config = service::Config<Settings>;

/// Service F.
pub struct Reporting;

impl Service for Reporting {
    const NAME: &'static str = SERVICE;
    const ABOUT: &'static str = "FinFlow service F: reporting";
    const MIGRATIONS: &'static Migrator = &MIGRATIONS;
    type Settings = Settings;

    /// Starts service F: its projections, the queue health it watches and the reports'
    /// API.
    async fn start(config: &Settings, start: &mut Start) -> anyhow::Result<Api> {
        start.consume(projections::queue(), projections::Projector);
        for (name, url) in upstreams(&config.upstreams).map_err(anyhow::Error::msg)? {
            start.optional(&name, health::Upstream::new(&url));
        }
        let queues = reports::QueueHealth::default();
        {
            let queues = queues.clone();
            start.spawn(finflow_platform::events::depth::watch(
                start.service.amqp.amqp_url.clone(),
                "reporting-queue-health".to_owned(),
                watched_queues(&config.watched_queues),
                QUEUE_SAMPLE_EVERY,
                start.stop_token(),
                move |round| queues.record(round),
            ));
        }
        let state = reports::AppState {
            pool: start.pool.clone(),
            queues,
        };
        Ok(Api::new(reports::router(state), ApiDoc::openapi()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn upstreams_parse_and_bad_urls_are_named() {
        assert_eq!(
            super::upstreams("auth=http://a:1, wallet=http://b:2").unwrap(),
            [
                ("auth".to_owned(), "http://a:1".to_owned()),
                ("wallet".to_owned(), "http://b:2".to_owned())
            ]
        );
        assert!(super::upstreams("auth").is_err());
        assert!(super::upstreams("auth=ftp://x").is_err());
        assert!(super::upstreams("").unwrap().is_empty());
    }
}
