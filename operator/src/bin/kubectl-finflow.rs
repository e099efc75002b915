//! `kubectl finflow`: the rollout from the command line.
//!
//! `status` prints the dependency tree with versions, colors and phases; `promote`,
//! `abort` and `rollback [--cascade] [--force]` write the request annotation the operator
//! acts on (`--force` crosses an applied incompatible migration, `status.schemaBarrier`);
//! `history` prints the revisions; `wait --for=healthy` polls until every FinService is
//! Ready at its spec's version. Like kubectl it takes `--kubeconfig` (else `KUBECONFIG`,
//! else `~/.kube/config`, else the pod's service account), `--context` (else the
//! current-context) and `-n/--namespace` (else the context's, else `default`);
//! everything it decides is in `finflow_operator::plugin`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use finflow_operator::crd::FinService;
use finflow_operator::plugin::{self, KubeconfigSource};
use finflow_operator::rollout::Request;
use kube::api::{ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

#[derive(Parser)]
#[command(
    name = "kubectl-finflow",
    about = "Blue-green rollouts of FinFlow services"
)]
struct Cli {
    /// Path to the kubeconfig file; else `KUBECONFIG`, else `~/.kube/config`.
    #[arg(long, global = true, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use; else its current-context.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace of the FinServices; else the context's, else `default`.
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
    Promote {
        name: String,
        /// Also let through a spec version older than an applied incompatible migration
        /// (the FinService's step is BlockedBySchema); recorded in an Event.
        #[arg(long)]
        force: bool,
    },
    /// Abort a rollout in preview.
    Abort { name: String },
    /// Roll a service back to its previous version.
    Rollback {
        name: String,
        /// Also roll back every dependent promoted after this service's version.
        #[arg(long)]
        cascade: bool,
        /// Roll back even to a release older than an applied incompatible migration
        /// (the FinService's step is BlockedBySchema); recorded in an Event.
        #[arg(long)]
        force: bool,
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
    let (client, namespace) = connect(&cli).await?;
    let api: Api<FinService> = Api::namespaced(client, &namespace);
    match cli.command {
        Cmd::Status => {
            let list = api.list(&ListParams::default()).await?;
            print!("{}", plugin::render_tree(&list.items));
        }
        Cmd::Promote { name, force } => request(&api, &name, Request::Promote { force }).await?,
        Cmd::Abort { name } => request(&api, &name, Request::Abort).await?,
        Cmd::Rollback {
            name,
            cascade,
            force,
        } => {
            request(&api, &name, Request::Rollback { cascade, force }).await?;
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

/// The client for the cluster the options name, and the namespace to work in.
async fn connect(cli: &Cli) -> anyhow::Result<(Client, String)> {
    let source = plugin::kubeconfig_source(
        cli.kubeconfig.as_deref(),
        std::env::var_os("KUBECONFIG").as_deref(),
        std::env::home_dir().as_deref(),
        Path::exists,
    );
    let (config, namespace) = match source {
        KubeconfigSource::Files(files) => {
            if files.is_empty() {
                bail!("none of the files KUBECONFIG lists exists");
            }
            let mut merged = Kubeconfig::default();
            for file in &files {
                let read = Kubeconfig::read_from(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                merged = merged.merge(read)?;
            }
            let target = plugin::target(&merged, cli.context.as_deref(), cli.namespace.as_deref())
                .map_err(anyhow::Error::msg)?;
            let options = KubeConfigOptions {
                context: Some(target.context.clone()),
                ..KubeConfigOptions::default()
            };
            let config = Config::from_custom_kubeconfig(merged, &options)
                .await
                .with_context(|| format!("loading context {}", target.context))?;
            (config, target.namespace)
        }
        KubeconfigSource::InCluster => {
            if let Some(context) = &cli.context {
                bail!(
                    "--context {context}: no kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config)"
                );
            }
            let config = Config::incluster().context(
                "no kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config) and not in a cluster",
            )?;
            let namespace = cli
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| config.default_namespace.clone());
            (config, namespace)
        }
    };
    Ok((Client::try_from(config)?, namespace))
}

async fn request(api: &Api<FinService>, name: &str, command: Request) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectls_connection_flags_go_before_or_after_the_command() {
        for args in [
            &[
                "kubectl-finflow",
                "--context",
                "prod",
                "-n",
                "pay",
                "--kubeconfig",
                "/k",
                "status",
            ][..],
            &[
                "kubectl-finflow",
                "status",
                "--context",
                "prod",
                "--namespace",
                "pay",
                "--kubeconfig",
                "/k",
            ],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.context.as_deref(), Some("prod"));
            assert_eq!(cli.namespace.as_deref(), Some("pay"));
            assert_eq!(cli.kubeconfig.as_deref(), Some(Path::new("/k")));
        }
    }
}
