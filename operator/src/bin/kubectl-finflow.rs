//! `kubectl finflow`: the rollout from the command line.
//!
//! `status` prints the dependency tree with versions, colors and phases; `promote`,
//! `abort` and `rollback [--cascade]` write the request annotation the operator acts on;
//! `history` prints the revisions; `wait --for=healthy` polls until every FinService is
//! Ready at its spec's version. It talks to the cluster through kube's client
//! (`KUBECONFIG` or in-cluster); everything it decides is in `finflow_operator::plugin`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use finflow_operator::crd::FinService;
use finflow_operator::plugin::{self, Command};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};

#[derive(Parser)]
#[command(
    name = "kubectl-finflow",
    about = "Blue-green rollouts of FinFlow services"
)]
struct Cli {
    /// Namespace of the FinServices; defaults to the kubeconfig context's.
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The dependency graph as a tree with versions, colors and phases.
    Status,
    /// Promote a preview waiting for a manual promotion.
    Promote { name: String },
    /// Abort a rollout in preview.
    Abort { name: String },
    /// Roll a service back to its previous version.
    Rollback {
        name: String,
        /// Also roll back every dependent promoted after this service's version.
        #[arg(long)]
        cascade: bool,
    },
    /// The versions that went live.
    History { name: String },
    /// Wait until a condition holds for every FinService.
    Wait {
        #[arg(long = "for", value_enum)]
        for_: WaitFor,
        /// For example 90s, 5m, 1h.
        #[arg(long, default_value = "5m", value_parser = plugin::parse_timeout)]
        timeout: Duration,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum WaitFor {
    Healthy,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // kube's rustls client needs a process-wide crypto provider; ring, as everywhere.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default()
        .await
        .context("connecting to the cluster (KUBECONFIG)")?;
    let api: Api<FinService> = match &cli.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::default_namespaced(client),
    };
    match cli.command {
        Cmd::Status => {
            let list = api.list(&ListParams::default()).await?;
            print!("{}", plugin::render_tree(&list.items));
        }
        Cmd::Promote { name } => request(&api, &name, Command::Promote).await?,
        Cmd::Abort { name } => request(&api, &name, Command::Abort).await?,
        Cmd::Rollback { name, cascade } => {
            request(&api, &name, Command::Rollback { cascade }).await?;
        }
        Cmd::History { name } => print!("{}", plugin::render_history(&api.get(&name).await?)),
        Cmd::Wait {
            for_: WaitFor::Healthy,
            timeout,
        } => {
            let deadline = Instant::now() + timeout;
            loop {
                let list = api.list(&ListParams::default()).await?;
                let waiting = plugin::unhealthy(&list.items);
                if waiting.is_empty() {
                    println!("all {} FinServices are healthy", list.items.len());
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("timed out waiting for: {}", waiting.join(", "));
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    Ok(())
}

async fn request(api: &Api<FinService>, name: &str, command: Command) -> anyhow::Result<()> {
    // Fails with NotFound rather than creating a bare FinService from the apply.
    api.get(name).await?;
    let params = PatchParams::apply(plugin::FIELD_MANAGER).force();
    api.patch(
        name,
        &params,
        &Patch::Apply(plugin::request_patch(name, command)),
    )
    .await?;
    println!("{name}: {command:?} requested; the operator acts on its next reconcile");
    Ok(())
}
