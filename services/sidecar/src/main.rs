//! `finflow-sidecar`: parse configuration, start telemetry, bind, run.

use anyhow::Context;
use finflow_platform::http::shutdown_signal;
use finflow_sidecar::{Config, Mode, run};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = finflow_platform::config::load();
    let service = match config.mode {
        Mode::Sidecar => "finflow-sidecar",
        Mode::Gateway => "finflow-gateway",
    };
    let _telemetry = finflow_platform::telemetry::init(service, &config.telemetry)
        .map_err(|e| anyhow::anyhow!("cannot start telemetry: {e}"))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot bind LISTEN_ADDR {}", config.listen))?;
    let admin = match config.admin {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind ADMIN_ADDR {addr}"))?,
        ),
        None => None,
    };
    tracing::info!(mode = ?config.mode, listen = %config.listen, admin = ?config.admin, "starting");
    run(config, listener, admin, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}
