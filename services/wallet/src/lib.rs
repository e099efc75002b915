//! Service B, wallet: wallets, balances and the double-entry ledger.
//!
//! The model:
//! - A user opens one wallet per currency (one FinFlow has a reference rate for) once A
//!   says their KYC is verified (asked at the moment, not read from the token; money
//!   leaving or entering a user's wallet asks again, so a revoked user stops paying). Wallets start `pending`, are
//!   activated by their owner, and can be frozen and unfrozen by the owner or `ops`.
//!   Another user's wallet is 404, never 403.
//! - Balances change only through the [`ledger`]: `POST /internal/transfers` (service
//!   callers, C in practice) posts a journal entry with a debit and an equal credit in
//!   one database transaction, at most once per transfer id. Deposits and withdrawals
//!   move money against a per-currency system account, so the books always balance.
//! - Transfers and withdrawals respect per-tier limits per transaction and per day, per
//!   user across their wallets, valued in the reference currency ([`finflow_platform::fx`]).
//! - Events: `wallet.created`, `wallet.status_changed` and `ledger.entry_posted`, through
//!   the outbox.

pub mod api;
pub mod ledger;
pub mod limits;
pub mod users;

use std::sync::Arc;

use clap::Args;
use finflow_contracts::catalog::{self, ServiceInfo};
use finflow_platform::client::ServiceClient;
use finflow_platform::config::{ClientConfig, Validate};
use finflow_platform::fx::FxConfig;
use finflow_platform::health::{self};
use finflow_platform::service::{Api, Service, Start};
use sqlx::migrate::Migrator;

/// Service B's migrations (`migrations/wallet`).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/wallet");

/// Service B: what `finflow-wallet` runs ([`Service`], below).
pub struct Wallet;

/// Service B's own settings, beside what every service is configured with.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// A (for KYC and tier lookups) and this service's credentials there.
    #[command(flatten)]
    pub client: ClientConfig,
    /// Limits per tier, `tier=per_transaction/per_day`, per user across all their
    /// wallets, in the reference currency (`FX_REFERENCE_CURRENCY`).
    #[arg(
        long,
        env = "TIER_LIMITS",
        default_value = "bronze=1000/5000,silver=10000/50000,gold=100000/500000"
    )]
    pub tier_limits: limits::TierLimits,
    #[command(flatten)]
    pub fx: FxConfig,
}

impl Validate for Settings {
    fn validate(&self, errors: &mut Vec<String>) {
        self.fx.validate(errors);
    }
}

impl Service for Wallet {
    const INFO: &'static ServiceInfo = &catalog::WALLET;
    const MIGRATIONS: &'static Migrator = &MIGRATIONS;
    type Settings = Settings;

    /// Starts service B: its relay and the wallets' API.
    async fn start(config: &Settings, start: &mut Start) -> anyhow::Result<Api> {
        let http = ServiceClient::http_client();
        let tokens = config.client.tokens(Self::INFO.name, http.clone());
        let users = users::Users::new(ServiceClient::new(
            "auth",
            &config.client.auth_url,
            tokens,
            http,
        ));
        start.relay();
        start.optional("auth", health::Upstream::new(&config.client.auth_url));
        let rates = Arc::new(config.fx.rates().map_err(anyhow::Error::msg)?);
        let state = api::AppState {
            pool: start.pool.clone(),
            users,
            limits: Arc::new(config.tier_limits.clone()),
            rates: Arc::clone(&rates),
        };
        let mut served = Api::of(api::routes(), state);
        rates.document(&mut served.openapi);
        Ok(served)
    }
}

#[cfg(test)]
mod tests {
    use finflow_platform::config::LoadError;
    use finflow_platform::testing::{self, Loaded};

    use super::Wallet;

    fn load(tier_limits: &str) -> Loaded<Wallet> {
        testing::load::<Wallet>(&[
            "--auth-url=http://127.0.0.1:9",
            "--service-client-secret=wallet-secret-for-tests",
            "--tier-limits",
            tier_limits,
        ])
    }

    #[test]
    fn tier_limits_are_parsed_once_at_start() {
        let config = load("bronze=10/50,silver=100/500,gold=1000/5000").unwrap();
        assert_eq!(
            config.settings.tier_limits,
            "bronze=10/50,silver=100/500,gold=1000/5000"
                .parse()
                .unwrap()
        );
        let Err(LoadError::Clap(e)) = load("bronze=10/50") else {
            panic!("limits without silver and gold were accepted");
        };
        assert!(e.to_string().contains("bronze, silver and gold"), "{e}");
    }
}
