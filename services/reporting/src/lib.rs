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
//!   F depends on, so the dashboard shows every dependency's state, not only its own.

pub mod projections;
pub mod reports;

use clap::Args;
use finflow_contracts::catalog::{self, ServiceInfo};
use finflow_platform::config::{HttpUrl, Quiet, Validate};
use finflow_platform::health::{self};
use finflow_platform::service::{Api, Service, Start};
use sqlx::migrate::Migrator;

/// Service F's migrations (`migrations/reporting`).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/reporting");

/// Service F: what `finflow-reporting` runs ([`Service`], below).
pub struct Reporting;

/// Service F's own settings, beside what every service is configured with.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Base URLs of the services F reports on, shown in `/health` (`name=url`, comma
    /// separated), e.g. `auth=http://127.0.0.1:8001,wallet=http://127.0.0.1:8002`.
    // One value (a qualified `Vec` is not clap's repeated argument): empty entries and
    // an empty variable are skipped rather than refused.
    #[arg(long, env = "UPSTREAMS", default_value = "", value_parser = Quiet(Upstream::list))]
    pub upstreams: ::std::vec::Vec<Upstream>,
    /// The event queues whose depth and consumers the dashboard shows, comma separated;
    /// each one's dead-letter queue is shown beside it.
    #[arg(long, env = "WATCHED_QUEUES", value_delimiter = ',', default_value = DEFAULT_WATCHED_QUEUES)]
    pub watched_queues: Vec<String>,
}

/// One `name=url` entry of `UPSTREAMS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub url: HttpUrl,
}

impl Upstream {
    /// A comma-separated list, empty entries skipped.
    pub fn list(entries: &str) -> Result<Vec<Self>, String> {
        finflow_platform::config::pairs(entries, "name=url", |name, url| {
            Ok(Self {
                name: name.to_owned(),
                url: HttpUrl::parse(url).map_err(|e| format!("the URL of {name} {e}"))?,
            })
        })
    }
}

/// Every consumer queue of the platform (each service's `QueueSpec`).
pub const DEFAULT_WATCHED_QUEUES: &str = "auth.kyc-updates,payment.requests,\
payment.aml-decisions,kyc.payment-monitoring,notification.events,reporting.events";

/// How often queue depths are read from RabbitMQ.
const QUEUE_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// `WATCHED_QUEUES` with each queue's dead-letter queue after it.
pub fn watched_queues(queues: &[String]) -> Vec<String> {
    queues
        .iter()
        .map(|q| q.trim())
        .filter(|q| !q.is_empty())
        .flat_map(|q| {
            [
                q.to_owned(),
                format!("{q}{}", finflow_platform::events::DEAD_QUEUE_SUFFIX),
            ]
        })
        .collect()
}

impl Validate for Settings {
    // Each entry is checked as it is parsed; nothing relates one setting to another.
    fn validate(&self, _errors: &mut Vec<String>) {}
}

impl Service for Reporting {
    const INFO: &'static ServiceInfo = &catalog::REPORTING;
    const MIGRATIONS: &'static Migrator = &MIGRATIONS;
    type Settings = Settings;

    /// Starts service F: its projections, the queue health it watches and the reports'
    /// API.
    async fn start(config: &Settings, start: &mut Start) -> anyhow::Result<Api> {
        start.consume(projections::queue(), projections::Projector);
        for upstream in &config.upstreams {
            start.optional(&upstream.name, health::Upstream::new(&upstream.url));
        }
        let queues = reports::QueueHealth::default();
        {
            let queues = queues.clone();
            start.spawn(finflow_platform::events::depth::watch(
                start.broker(),
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
        Ok(Api::of(reports::routes(), state))
    }
}

#[cfg(test)]
mod tests {
    use finflow_platform::config::{HttpUrl, LoadError};
    use finflow_platform::testing::{self, Loaded};

    use super::{Reporting, Upstream};

    fn load(extra: &[&str]) -> Loaded<Reporting> {
        testing::load::<Reporting>(extra)
    }

    #[test]
    fn upstreams_are_parsed_once_and_bad_urls_are_named() {
        let config = load(&["--upstreams=auth=http://a:1, wallet=http://b:2,"]).unwrap();
        assert_eq!(
            config.settings.upstreams,
            [
                Upstream {
                    name: "auth".into(),
                    url: HttpUrl::parse("http://a:1").unwrap()
                },
                Upstream {
                    name: "wallet".into(),
                    url: HttpUrl::parse("http://b:2").unwrap()
                }
            ]
        );
        assert!(load(&[]).unwrap().settings.upstreams.is_empty());
        assert!(
            load(&["--upstreams="])
                .unwrap()
                .settings
                .upstreams
                .is_empty()
        );
        for bad in [
            "--upstreams=auth",
            "--upstreams=auth=ftp://x",
            "--upstreams=auth=http://",
            "--upstreams=auth=http://user:pw@a:1",
        ] {
            let Err(LoadError::Clap(e)) = load(&[bad]) else {
                panic!("{bad} was accepted")
            };
            assert!(e.to_string().contains("UPSTREAMS"), "{e}");
            assert!(
                !e.to_string().contains("pw"),
                "a password is never repeated: {e}"
            );
        }
    }

    #[test]
    fn every_watched_queue_is_shown_with_its_dead_letters() {
        let config = load(&[]).unwrap();
        let shown = super::watched_queues(&config.settings.watched_queues);
        assert_eq!(shown.len(), 12);
        assert_eq!(shown[0], "auth.kyc-updates");
        assert!(shown[1].starts_with("auth.kyc-updates") && shown[1] != shown[0]);
    }
}
