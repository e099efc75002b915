//! `finflow-stand NAMESPACE`: on a bare API server (etcd and kube-apiserver, no nodes),
//! plays the kubelet and the built-in controllers for one namespace until Ctrl-C, so the
//! operator can be watched deploying and rolling out there by hand (the cluster tests use
//! the same [`finflow_e2e::bare::Stand`]). Needs root and `ip` (iproute2).

use clap::Parser;
use finflow_e2e::bare::{self, Stand};

#[derive(Parser)]
#[command(name = "finflow-stand")]
struct Cli {
    /// The namespace to play the kubelet in (it may not exist yet).
    namespace: String,
    /// `SERVICE=VERSION=CODE`: every answer of that FinService's pods at that version
    /// carries CODE (for example `reporting=0.2.0=500` to fail its observation window).
    #[arg(long = "answer", value_parser = parse_answer)]
    answers: Vec<(String, String, u16)>,
}

fn parse_answer(s: &str) -> Result<(String, String, u16), String> {
    let mut parts = s.splitn(3, '=');
    match (
        parts.next(),
        parts.next(),
        parts.next().map(str::parse::<u16>),
    ) {
        (Some(service), Some(version), Some(Ok(code))) => {
            Ok((service.to_owned(), version.to_owned(), code))
        }
        _ => Err(format!("{s:?} is not SERVICE=VERSION=CODE")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await?;
    if !bare::is_bare(&client).await {
        anyhow::bail!("the cluster has nodes: it has a kubelet of its own");
    }
    let stand = Stand::start(&client, &cli.namespace).await?;
    for (service, version, code) in &cli.answers {
        stand.set_health(service, version, *code);
    }
    eprintln!(
        "playing the kubelet in namespace {} (pods served from network namespace {}); Ctrl-C stops",
        cli.namespace,
        stand.netns()
    );
    tokio::signal::ctrl_c().await?;
    stand.stop();
    Ok(())
}
