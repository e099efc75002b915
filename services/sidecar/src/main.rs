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
    // The first event loop; `run` starts the others (`WORKER_THREADS`) on threads of
    // their own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if config.wait_live {
        let admin = config
            .admin
            .context("--wait-live needs ADMIN_ADDR, the admin port to ask")?;
        return runtime
            .block_on(finflow_sidecar::wait_live(admin, WAIT_LIVE_FOR))
            .map_err(|e| anyhow::anyhow!("the sidecar is {e}"));
    }
    runtime.block_on(serve(config))
}

/// How long `--wait-live` waits: as long as a sidecar may reasonably take to start.
const WAIT_LIVE_FOR: std::time::Duration = std::time::Duration::from_secs(60);

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
