//! `finflow-bench`: figures, each with a baseline measured in the same run.
//!
//! - `edge`: requests/s and p50/p99 of `GET /api/v1/users/me` on service A directly
//!   (identity headers set by wrk, as a sidecar would), through its sidecar with a real
//!   JWT, and through an nginx hop (the baseline: a proxy that validates nothing, set up
//!   to forward the same headers), each path handing the app the same request.
//! - `payments`: completed transfers/s and accept p50/p99 through the gateway, against
//!   pgbench's TPC-B tps on the same PostgreSQL at the same concurrency; and what one
//!   payment costs (CPU per process on the path, commits and rollbacks per database,
//!   broker deliveries: [`finflow_e2e::cost`]) against the CPU of one TPC-B transaction
//!   (PostgreSQL's and pgbench's), the cost ratio.
//!
//! Both start an isolated platform with the launcher. wrk, nginx and pgbench come from
//! Debian packages; they are installed with apt-get when missing.

mod cpu;
mod edge;
mod instructions;
mod nginx;
mod payments;
mod pgo;
mod stats;
mod wrk;

use clap::{Parser, Subcommand};
use finflow_e2e::launcher::{Options, Platform};
use finflow_e2e::tools::ensure_tool;

use crate::edge::edge;
use crate::instructions::{callgrind_wrapper, instructions, sidecar_callgrind};
use crate::payments::payments;
use crate::pgo::pgo_train;

#[derive(Parser)]
#[command(about = "FinFlow benchmarks with same-run baselines")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
    /// Seconds each load runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent connections / clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Rounds of the edge benchmark (each measures every path once); 6 or more give
    /// the 95% interval of the sidecar's difference to nginx.
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// edge: another build of the sidecar, run beside the launcher's with the same
    /// settings and measured in the same rounds (the A/B of a change: figures of
    /// separate runs on a shared machine are not comparable).
    #[arg(long, value_name = "BINARY")]
    compare: Option<std::path::PathBuf>,
    /// edge: event loops of the measured sidecar and worker processes of nginx, the
    /// same number for both. Unset, each runs as it ships: the sidecar with its own
    /// default (`WORKER_THREADS` unset), and nginx twice, with its built-in default of
    /// one worker and with Debian's packaged `worker_processes auto` (one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// edge: load every path at the same time in each round, each by a wrk of its own
    /// on its share of `--concurrency` connections, instead of one path after another:
    /// on a shared machine whose speed drifts, paths measured at the same moments
    /// compare more closely.
    #[arg(long)]
    together: bool,
    /// The build of `finflow-sidecar` run as every sidecar and the gateway (and so
    /// measured): `dev/pgo-proxy`'s profile-guided build, which is how the proxy ships.
    /// Default: the launcher's own `proxy`-profile build.
    #[arg(long, value_name = "BINARY")]
    sidecar: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Bench {
    /// App directly vs through the sidecar (JWT) vs through nginx.
    Edge,
    /// User-space instructions per proxied request, sidecar (JWT) vs nginx, counted by
    /// callgrind: a figure that, unlike latency on a shared machine, repeats run to run.
    Instructions,
    /// Payments through the gateway vs pgbench TPC-B on the same PostgreSQL.
    Payments,
    /// The training load of `dev/pgo-proxy` for an instrumented proxy build (given by
    /// `--sidecar`): not a measurement.
    PgoTrain,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut options = Options::isolated();
    options.drop_databases = true;
    // Measured as shipped: optimized binaries (debug builds verify signatures 100x slower).
    options.release = true;
    // The sidecars' per-user rate limit would measure itself, not the path.
    for key in ["RATE_LIMIT_PER_SECOND", "RATE_LIMIT_BURST"] {
        options
            .env_overrides
            .push(("*-sidecar".to_owned(), key.to_owned(), "1000000".to_owned()));
    }
    options.proxy_binary.clone_from(&cli.sidecar);
    match cli.bench {
        // Asked for, the measured sidecar gets as many event loops as nginx gets workers.
        Bench::Edge => {
            if let Some(workers) = cli.workers {
                options.env_overrides.push((
                    "auth-sidecar".to_owned(),
                    "WORKER_THREADS".to_owned(),
                    workers.max(1).to_string(),
                ));
            }
        }
        Bench::Instructions => {
            ensure_tool("valgrind", "valgrind").await?;
            // valgrind runs one thread at a time anyway; one loop, like one nginx worker.
            options.env_overrides.push((
                "auth-sidecar".to_owned(),
                "WORKER_THREADS".to_owned(),
                "1".to_owned(),
            ));
            let out = sidecar_callgrind(&options.log_dir);
            options
                .wrappers
                .push(("auth-sidecar".to_owned(), callgrind_wrapper(&out)));
        }
        Bench::Payments | Bench::PgoTrain => {}
    }
    let mut platform = Platform::start(options).await?;
    let result = match cli.bench {
        Bench::Edge => {
            edge(
                &mut platform,
                cli.seconds,
                cli.concurrency,
                cli.rounds.max(1),
                cli.workers.map(|n| n.max(1)),
                cli.together,
                cli.compare.as_deref(),
            )
            .await
        }
        Bench::Instructions => instructions(&platform, cli.seconds).await,
        Bench::Payments => payments(&platform, cli.seconds, cli.concurrency).await,
        Bench::PgoTrain => pgo_train(&platform, cli.seconds).await,
    };
    platform.stop().await;
    result
}
