//! Service B, wallet: wallets, balances and the double-entry ledger.
//!
//! The model:
//! - A user opens one wallet per currency once A says their KYC is verified (asked at
//!   the moment of creation, not read from the token). Wallets start `pending`, are
//!   activated by their owner, and can be frozen and unfrozen by the owner or `ops`.
//!   Another user's wallet is 404, never 403.
//! - Balances change only through the [`ledger`]: `POST /internal/transfers` (service
//!   callers, C in practice) posts a journal entry with a debit and an equal credit in
//!   one database transaction, at most once per transfer id. Deposits and withdrawals
//!   move money against a per-currency system account, so the books always balance.
//! - Transfers and withdrawals respect per-tier limits per transaction and per day.
//! - Events: `wallet.created`, `wallet.status_changed` and `ledger.entry_posted`, through
//!   the outbox.

pub mod api;
pub mod ledger;
pub mod limits;
pub mod users;

use std::future::Future;
use std::sync::Arc;

use clap::Parser;
use finflow_platform::client::{ServiceClient, TokenSource};
use finflow_platform::config::Validate;
use finflow_platform::health::{self};
use finflow_platform::service::{self, Background, HasServiceConfig, ServiceConfig};
use secrecy::SecretString;
use tokio::net::TcpListener;
use utoipa::OpenApi;

/// The service's name in events, logs and traces.
pub const SERVICE: &str = "wallet";

/// Service B's migrations (`migrations/wallet`).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/wallet");

/// Configuration of service B.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "finflow-wallet",
    version,
    about = "FinFlow service B: wallets and the ledger"
)]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceConfig,
    /// Base URL of service A (its sidecar), for KYC and tier lookups and service tokens.
    #[arg(long, env = "AUTH_URL")]
    pub auth_url: String,
    /// This service's client id at A.
    #[arg(long, env = "SERVICE_CLIENT_ID", default_value = "wallet")]
    pub service_client_id: String,
    /// This service's client secret at A.
    #[arg(long, env = "SERVICE_CLIENT_SECRET", hide_env_values = true)]
    pub service_client_secret: SecretString,
    /// Limits per tier, `tier=per_transaction/per_day`, in units of the wallet's currency.
    #[arg(
        long,
        env = "TIER_LIMITS",
        default_value = "bronze=1000/5000,silver=10000/50000,gold=100000/500000"
    )]
    pub tier_limits: String,
}

impl HasServiceConfig for Config {
    fn service_config(&self) -> &ServiceConfig {
        &self.service
    }
}

impl Validate for Config {
    fn validate(&self, errors: &mut Vec<String>) {
        self.service.validate(errors);
        if !(self.auth_url.starts_with("http://") || self.auth_url.starts_with("https://")) {
            errors.push("AUTH_URL must be an http(s) URL".to_owned());
        }
        if let Err(e) = self.tier_limits.parse::<limits::TierLimits>() {
            errors.push(format!("TIER_LIMITS: {e}"));
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "FinFlow wallet (B)",
        description = "Wallets, balances and the double-entry ledger."
    ),
    paths(
        api::create_wallet,
        api::list_wallets,
        api::get_wallet,
        api::balance,
        api::activate,
        api::set_status,
        api::transactions,
        api::internal_wallet,
        api::transfer
    ),
    components(schemas(finflow_platform::Currency))
)]
struct ApiDoc;

/// Runs service B on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let base = &config.service;
    let pool = base.database(&MIGRATIONS).await?;
    let limits: limits::TierLimits = config.tier_limits.parse().map_err(anyhow::Error::msg)?;
    let http = ServiceClient::http_client();
    let tokens = TokenSource::new(
        &config.auth_url,
        &config.service_client_id,
        config.service_client_secret.clone(),
        http.clone(),
    );
    let users = users::Users::new(ServiceClient::new("auth", &config.auth_url, tokens, http));

    let mut background = Background::new();
    background.relay(&pool, &base.amqp.amqp_url, SERVICE);
    let health = base
        .health(SERVICE, env!("CARGO_PKG_VERSION"), &pool)
        .optional("auth", health::Upstream::new(&config.auth_url))
        .build();
    let state = api::AppState {
        pool,
        users,
        limits: Arc::new(limits),
    };
    service::serve(
        base,
        listener,
        api::router(state),
        health,
        ApiDoc::openapi(),
        background,
        shutdown,
    )
    .await
}
