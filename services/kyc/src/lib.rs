//! Service E, KYC/AML: identity documents, their review, and AML monitoring.
//!
//! The model:
//! - A user submits one document at a time ([`documents`]: passport, national id or
//!   driving licence; an https URL or an uploaded JPEG/PNG/PDF up to 2 MiB, checked by
//!   content). With `KYC_AUTO_APPROVE` (development default) a well-formed document is
//!   verified at once; otherwise a `compliance` reviewer approves or rejects it.
//! - Every decision (and a compliance officer's revocation of a verification) is sent
//!   to A before the client is answered, and again by the [`notices`] notifier until A
//!   has answered (A takes none from the bus); B asks A before it opens a wallet or
//!   moves a user's money, so the user needs no new login and a revoked user stops
//!   paying at once. `user.kyc_updated` tells D and F.
//! - [`aml`] watches C's payment events, raises alerts (amount threshold, velocity,
//!   structuring) and keeps a risk score per user; `compliance` clears or flags alerts,
//!   which emits `aml.cleared` / `aml.flagged` and releases or fails held payments.

pub mod aml;
pub mod api;
pub mod documents;
pub mod notices;
pub mod reason;

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use finflow_contracts::catalog::{self, ServiceInfo};
use finflow_platform::Amount;
use finflow_platform::client::ServiceClient;
use finflow_platform::config::{ClientConfig, HttpUrl, Quiet, Validate};
use finflow_platform::fx::FxConfig;
use finflow_platform::health;
use finflow_platform::service::{Api, Service, Start};
use sqlx::migrate::Migrator;

/// Service E's migrations (`migrations/kyc`).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/kyc");

/// Service E: what `finflow-kyc` runs ([`Service`], below).
pub struct Kyc;

/// Service E's own settings, beside what every service is configured with.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// A, which holds each user's KYC status, and this service's credentials there.
    #[command(flatten)]
    pub client: ClientConfig,
    /// Base URL of service C (its sidecar), told the decisions on the alerts that hold
    /// its payments.
    #[arg(long, env = "PAYMENT_URL", value_parser = Quiet(HttpUrl::parse))]
    pub payment_url: HttpUrl,
    /// Verify well-formed documents without a reviewer.
    #[arg(long, env = "KYC_AUTO_APPROVE", default_value_t = false)]
    pub kyc_auto_approve: bool,
    /// C's hold threshold, in the reference currency: structuring looks for payments
    /// worth just under it.
    #[arg(long, env = "AML_HOLD_THRESHOLD", default_value = "10000")]
    pub aml_hold_threshold: Amount,
    /// Velocity window, in seconds.
    #[arg(long, env = "AML_VELOCITY_WINDOW_SECS", default_value_t = 600)]
    pub aml_velocity_window_secs: u64,
    /// More payments than this in the window raise a velocity alert.
    #[arg(long, env = "AML_VELOCITY_MAX_COUNT", default_value_t = 20)]
    pub aml_velocity_max_count: i64,
    /// More than this sum (in the reference currency) in the window raises a velocity
    /// alert.
    #[arg(long, env = "AML_VELOCITY_MAX_AMOUNT", default_value = "50000")]
    pub aml_velocity_max_amount: Amount,
    /// This many payments just under the threshold within a day raise a structuring alert.
    #[arg(long, env = "AML_STRUCTURING_COUNT", default_value_t = 3)]
    pub aml_structuring_count: i64,
    #[command(flatten)]
    pub fx: FxConfig,
}

impl Validate for Settings {
    fn validate(&self, errors: &mut Vec<String>) {
        self.fx.validate(errors);
        for (name, value) in [
            ("AML_HOLD_THRESHOLD", &self.aml_hold_threshold),
            ("AML_VELOCITY_MAX_AMOUNT", &self.aml_velocity_max_amount),
        ] {
            if !value.is_positive() {
                errors.push(format!("{name} must be a positive amount"));
            }
        }
        if self.aml_velocity_window_secs == 0 {
            errors.push("AML_VELOCITY_WINDOW_SECS must be positive".to_owned());
        }
    }
}

impl Service for Kyc {
    const INFO: &'static ServiceInfo = &catalog::KYC;
    const MIGRATIONS: &'static Migrator = &MIGRATIONS;
    type Settings = Settings;

    /// Starts service E: the AML monitor on payments, and the KYC API.
    async fn start(config: &Settings, start: &mut Start) -> anyhow::Result<Api> {
        let rules = aml::Rules {
            rates: config.fx.rates().map_err(anyhow::Error::msg)?,
            hold_threshold: config.aml_hold_threshold,
            window: Duration::from_secs(config.aml_velocity_window_secs),
            max_count: config.aml_velocity_max_count,
            max_amount: config.aml_velocity_max_amount,
            structuring_count: config.aml_structuring_count,
        };
        start.relay();
        start.consume(aml::payments_queue(), aml::Monitor { rules });
        start.optional("auth", health::Upstream::new(&config.client.auth_url));
        start.optional("payment", health::Upstream::new(&config.payment_url));
        let http = ServiceClient::http_client();
        let tokens = config.client.tokens(Self::INFO.name, http.clone());
        let recipients = notices::Recipients {
            auth: ServiceClient::new(
                "auth",
                &config.client.auth_url,
                tokens.clone(),
                http.clone(),
            ),
            payment: ServiceClient::new("payment", &config.payment_url, tokens, http),
        };
        start.spawn(
            notices::Notifier {
                pool: start.pool.clone(),
                recipients: recipients.clone(),
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(5),
            }
            .run(start.stop_token()),
        );
        let state = api::AppState {
            recipients,
            pool: start.pool.clone(),
            settings: Arc::new(api::Settings {
                auto_approve: config.kyc_auto_approve,
            }),
        };
        Ok(Api::of(api::routes(), state))
    }
}

#[cfg(test)]
mod tests {
    use finflow_platform::config::LoadError;
    use finflow_platform::testing::{self, Loaded};

    use super::Kyc;

    fn load(extra: &[&str]) -> Loaded<Kyc> {
        let client = [
            "--auth-url=http://127.0.0.1:9",
            "--payment-url=http://127.0.0.1:9",
            "--service-client-secret=kyc-secret-for-tests",
        ];
        testing::load::<Kyc>(&[&client[..], extra].concat())
    }

    #[test]
    fn aml_amounts_are_parsed_once_and_must_be_positive() {
        let config = load(&["--aml-hold-threshold", "2500.50"]).unwrap();
        assert_eq!(config.settings.aml_hold_threshold.to_string(), "2500.5");
        let Err(LoadError::Clap(e)) = load(&["--aml-velocity-max-amount", "lots"]) else {
            panic!("a malformed amount was accepted");
        };
        assert!(e.to_string().contains("--aml-velocity-max-amount"), "{e}");
        let Err(LoadError::Invalid(errors)) = load(&["--aml-hold-threshold", "0"]) else {
            panic!("a zero threshold was accepted");
        };
        assert_eq!(errors, ["AML_HOLD_THRESHOLD must be a positive amount"]);
    }
}
