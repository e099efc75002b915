//! `finflow-sidecar`: parse configuration, build the runtime, start telemetry, bind, run.

use anyhow::Context;
use finflow_platform::http::shutdown_signal;
use finflow_sidecar::{Config, Mode, run};
use tokio::net::TcpListener;

// Every request allocates and frees header maps and buffers; mimalloc's thread-local
// free lists make that markedly cheaper than glibc's malloc (measured by finflow-bench).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config: Config = finflow_platform::config::load();
    let runtime = match config.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
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
